"""Port of a Cross Validated question ("How can a network with only ReLU nodes output negative
values?"). The accepted answer: the output of a ReLU unit is non-negative, full stop; a regression
network whose last layer is a ReLU can never predict a negative value, so the output layer must be
linear. Tiny scale: make_regression targets (about half negative) fitted by an MLP that ends in nn.ReLU;
the fix removes the final ReLU."""
import torch
from torch import nn

import trainscope
from _data import regression

CASE = {
    "id": "statsse_362588_relu_output_regression",
    "source": "https://stats.stackexchange.com/questions/362588/how-can-a-network-with-only-relu-nodes-output-negative-values — How can a network with only ReLU nodes output negative values?",
    "summary": "regression MLP ending in nn.ReLU against targets of both signs: every negative target is predicted as 0 and the loss stalls at their share",
    "labels": ["output-activation-mismatch"],
    "also_ok": ["underfitting", "loss-not-decreasing", "dead-relu", "collapsed-activations"],
    "fix": "a linear output layer (drop the final ReLU)",
}


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    xtr, ytr, xva, yva = regression(n=1000, d=8, n_val=250)
    ytr, yva = ytr.unsqueeze(1), yva.unsqueeze(1)
    layers = [nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)]
    if not fixed:
        layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    criterion = nn.MSELoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    with trainscope.watch(model, run_dir, optimizer=optimizer, criterion=criterion) as probe:
        for epoch in range(8):
            model.train()
            perm = torch.randperm(len(xtr), generator=g)
            for i in range(0, len(xtr), 50):
                idx = perm[i:i + 50]
                optimizer.zero_grad()
                loss = criterion(model(xtr[idx]), ytr[idx])
                loss.backward()
                optimizer.step()
                probe.log(epoch=epoch, train_loss=loss)
            model.eval()
            with torch.no_grad():
                probe.log(epoch=epoch, val_loss=criterion(model(xva), yva))
