"""Port of a PyTorch-forums thread ("When should I use nn.ModuleList and when should I use
nn.Sequential?"). A reply shows a module with a variable number of 1x1 conv layers kept in a plain
Python list (self.layers = [] ... append): they are not registered, so model.parameters() omits them, the
optimizer never sees them and they never train; nn.ModuleList registers them. Tiny scale: a small CNN on
sklearn's 8x8 digits whose hidden conv stack sits in a list; only the registered classifier head trains."""
import torch
from torch import nn

import trainscope
from _data import digits

CASE = {
    "id": "forum_5463_layers_in_python_list",
    "source": "https://discuss.pytorch.org/t/when-should-i-use-nn-modulelist-and-when-should-i-use-nn-sequential/5463 — When should I use nn.ModuleList and when should I use nn.Sequential?",
    "summary": "conv layers stored in a plain Python list: not registered, not in model.parameters(), never optimized",
    "labels": ["parameters-not-updated"],
    "also_ok": ["underfitting", "loss-not-decreasing", "slow-start"],
    "fix": "self.layers = nn.ModuleList(...) instead of a Python list",
}


class Net(nn.Module):
    def __init__(self, fixed: bool, n_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(1, 16, 3, padding=1)] + [nn.Conv2d(16, 16, 1) for _ in range(n_layers - 1)]
        self.layers = nn.ModuleList(layers) if fixed else layers
        self.head = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.head(x.flatten(1))


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    xtr, ytr, xva, yva = digits(flat=False)
    model = Net(fixed)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    with trainscope.watch(model, run_dir, optimizer=optimizer, criterion=criterion) as probe:
        for epoch in range(5):
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
