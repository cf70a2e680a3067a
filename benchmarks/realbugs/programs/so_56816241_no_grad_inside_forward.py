"""Port of the Stack Overflow question "Difference between 'detach()' and 'with torch.nograd()' in
PyTorch?". The answers: both take tensors out of the autograd graph; everything computed under
torch.no_grad() (or from x.detach() / x.data) has requires_grad=False, so no gradient flows back through
it. The asker wrapped the feature extractor of the forward pass in torch.no_grad() to save memory, which
silently freezes it. Tiny scale: a 2-block MLP on sklearn's digits whose first block runs under
torch.no_grad() inside forward(); only the head learns. The fix removes the no_grad block."""
import torch
from torch import nn

import trainscope
from _data import digits

CASE = {
    "id": "so_56816241_no_grad_inside_forward",
    "source": "https://stackoverflow.com/questions/56816241/difference-between-detach-and-with-torch-nograd-in-pytorch — Difference between 'detach()' and 'with torch.nograd()' in PyTorch?",
    "summary": "the feature block of forward() runs under torch.no_grad(): its parameters never receive a gradient and never change",
    "labels": ["parameters-not-updated"],
    "also_ok": ["underfitting", "slow-start", "loss-not-decreasing"],
    "fix": "compute the features with autograd enabled (no torch.no_grad() / detach() inside forward)",
}


class Net(nn.Module):
    def __init__(self, fixed: bool):
        super().__init__()
        self.fixed = fixed
        self.features = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        if self.fixed:
            h = self.features(x)
        else:
            with torch.no_grad():  # "saves memory"
                h = self.features(x)
        return self.head(h)


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    xtr, ytr, xva, yva = digits()
    model = Net(fixed)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    with trainscope.watch(model, run_dir, optimizer=optimizer, criterion=criterion) as probe:
        for epoch in range(6):
            model.train()
            perm = torch.randperm(len(xtr), generator=g)
            for i in range(0, len(xtr) - 63, 64):
                idx = perm[i:i + 64]
                optimizer.zero_grad()
                loss = criterion(model(xtr[idx]), ytr[idx])
                loss.backward()
                optimizer.step()
                probe.log(epoch=epoch, train_loss=loss)
            model.eval()
            with torch.no_grad():
                out = model(xva)
                probe.log(epoch=epoch, val_loss=criterion(out, yva), val_acc=(out.argmax(1) == yva).float().mean())
