"""IBM/aihwkit#446: the first examples (a single layer fit to two samples) never reset the gradients."""
import torch
from torch import nn

import trainscope

CASE = {
    "id": "gh_ibm_aihwkit_446_missing_zero_grad",
    "source": "https://github.com/IBM/aihwkit/issues/446 — Missing zero_grad() call",
    "summary": "examples/01_simple_layer.py fits one 4->2 linear layer to two samples with SGD(lr=0.1) and MSE, "
               "but the loop calls loss.backward(); opt.step() without ever zeroing the gradients: the loss "
               "falls, then climbs back (1.03 -> 0.06 -> 0.87 in the issue's 10 iterations).",
    "labels": ["missing-zero-grad"],
    "also_ok": ["divergence", "oscillation", "loss-not-decreasing", "lr-too-high", "no-validation",
                "exploding-gradients", "unstable-gradients"],
    "fix": "call opt.zero_grad() once per iteration (the issue: 'simply adding opt.zero_grad() ... should be sufficient')",
    "fixed_ok": ["no-validation"],  # the example never validates, before or after the fix
}


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    x = torch.tensor([[0.1, 0.2, 0.4, 0.3], [0.2, 0.1, 0.1, 0.3]])
    y = torch.tensor([[1.0, 0.5], [0.7, 0.3]])
    model = nn.Linear(4, 2)  # the example uses aihwkit's AnalogLinear(4, 2); a digital layer shows the same bug
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.MSELoss()
    probe = trainscope.watch(model, run_dir, optimizer=opt, criterion=loss_fn)
    for epoch in range(100):
        if fixed:
            opt.zero_grad()
        pred = model(x)
        loss = loss_fn(pred, y)
        loss.backward()
        opt.step()
        probe.log(epoch=epoch, train_loss=loss)
    probe.close()
