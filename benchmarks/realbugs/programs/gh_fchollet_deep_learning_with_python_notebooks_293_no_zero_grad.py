"""fchollet/deep-learning-with-python-notebooks#293: chapter 7's PyTorch CustomModel.train_step never zeroes grads."""
import torch
from sklearn.datasets import load_digits
from torch import nn

import trainscope

CASE = {
    "id": "gh_fchollet_deep_learning_with_python_notebooks_293_no_zero_grad",
    "source": "https://github.com/fchollet/deep-learning-with-python-notebooks/issues/293 — chapter 7 torch "
              "implementation of CustomModel forgets to zero_grad",
    "summary": "The book's PyTorch-backend custom train_step (a 512-unit dense classifier with dropout 0.5, "
               "RMSprop, 3 epochs on MNIST) calls loss.backward() and applies the gradients but never resets "
               "them, so every step applies the sum of all gradients so far: 'the results are terrible'.",
    "labels": ["missing-zero-grad"],
    "also_ok": ["divergence", "oscillation", "loss-not-decreasing", "lr-too-high", "unstable-gradients",
                "exploding-gradients", "underfitting", "nan-or-inf"],
    "fix": "call self.zero_grad() (model.zero_grad()) at the start of train_step",
}


class CustomModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(64, 512)
        self.dropout = nn.Dropout(0.5)
        self.out = nn.Linear(512, 10)

    def forward(self, x):
        return self.out(self.dropout(torch.relu(self.dense(x))))

    def train_step(self, inputs, targets, optimizer, loss_fn, zero_grad):
        if zero_grad:
            self.zero_grad()
        predictions = self(inputs)
        loss = loss_fn(predictions, targets)
        loss.backward()
        with torch.no_grad():
            optimizer.step()
        return loss


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)  # the book scales MNIST pixels to [0, 1]
    y = torch.tensor(y)
    x_train, y_train, x_val, y_val = x[:1500], y[:1500], x[1500:], y[1500:]
    model = CustomModel()
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    probe = trainscope.watch(model, run_dir, optimizer=optimizer)
    g = torch.Generator().manual_seed(0)
    for epoch in range(3):
        model.train()
        perm = torch.randperm(len(x_train), generator=g)
        for i in range(0, len(perm), 32):
            idx = perm[i:i + 32]
            loss = model.train_step(x_train[idx], y_train[idx], optimizer, loss_fn, zero_grad=fixed)
            probe.log(epoch=epoch, train_loss=loss.detach())
        model.eval()
        with torch.no_grad():
            out = model(x_val)
            probe.log(epoch=epoch, val_loss=loss_fn(out, y_val).item(),
                      val_acc=(out.argmax(1) == y_val).float().mean().item())
    probe.close()
