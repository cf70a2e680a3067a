"""Port of the Stack Overflow question "Why do we need to call zero_grad() in PyTorch?". The accepted
answer: PyTorch accumulates gradients on every backward(), so a loop that never calls
optimizer.zero_grad() steps along the running sum of all past gradients; its example is a linear model
y = x W + b (4 inputs, 3 outputs) trained with Adam, one sample at a time. Ported at tiny scale on a
synthetic 4 -> 3 regression, in mini-batches of 8; the buggy loop omits zero_grad()."""
import torch
from torch import nn

import trainscope

CASE = {
    "id": "so_48001598_missing_zero_grad",
    "source": "https://stackoverflow.com/questions/48001598/why-do-we-need-to-call-zero-grad-in-pytorch — Why do we need to call zero_grad() in PyTorch?",
    "summary": "linear 4->3 regression trained with Adam; the loop never resets the gradients, so each step uses the sum of all past gradients",
    "labels": ["missing-zero-grad"],
    "also_ok": ["loss-not-decreasing", "divergence", "oscillation", "lr-too-high", "exploding-gradients",
                "unstable-gradients", "underfitting"],
    "fix": "call optimizer.zero_grad() before each backward pass",
    "fixed_ok": ["no-validation"],  # the question's loop has no validation, fixed or not
}


def run(run_dir: str, fixed: bool) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(800, 4, generator=g)
    w_true = torch.randn(4, 3, generator=g)
    y = x @ w_true + 0.1 * torch.randn(800, 3, generator=g)
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    probe = trainscope.watch(model, run_dir, optimizer=optimizer)
    for epoch in range(4):
        perm = torch.randperm(800, generator=g)
        for i in range(0, 800, 8):
            idx = perm[i:i + 8]
            if fixed:
                optimizer.zero_grad()
            loss = ((model(x[idx]) - y[idx]) ** 2).mean()
            loss.backward()
            optimizer.step()
            probe.log(epoch=epoch, train_loss=loss)
    probe.close()
