"""manzilzaheer/DeepSets#1: in PopStats, the DataIterator yields targets y of shape (128,) while the DeepSet
regressor ends in Linear(10, 1) and returns (128, 1); nn.MSELoss(y_pred, y) broadcasts them to a (128, 128)
matrix, "which leads to the wrong MSE-loss ... the model approximates the average statistic across the indices
instead of the corresponding statistic for each index" (before/after plots in the PR). The PR reshapes y to
(128, 1). Tiny scale: the PopStats DeepSet (per-point MLP 2-50-100-50 with ELU, sum over the set, regressor
50-30-30-10-1), sets of 64 points from a 2-D Gaussian with correlation rho, target = the mutual information
-0.5*log(1 - rho^2) (a DeepSets population statistic), Adam(1e-3) + ReduceLROnPlateau on the best MSE."""
import torch
from torch import nn

import trainscope

CASE = {
    "id": "gh_manzilzaheer_deepsets_1_popstats_target_broadcast",
    "source": "https://github.com/manzilzaheer/DeepSets/pull/1 — fixed broadcasting issue between y and y_pred in PopStats",
    "summary": "MSELoss between predictions (B, 1) and targets (B,) broadcasts to (B, B): every prediction is "
               "pulled towards every target of the batch and the model learns the batch mean",
    "labels": ["loss-shape-mismatch"],
    "also_ok": ["loss-not-decreasing", "underfitting", "slow-start"],
    "fix": "give the targets the predictions' shape (B, 1) before the loss",
}


def sets(n: int, g: torch.Generator, points: int = 64):
    rho = 1.8 * torch.rand(n, generator=g) - 0.9
    z = torch.randn(n, points, 2, generator=g)
    x = torch.stack([z[..., 0], rho[:, None] * z[..., 0] + (1 - rho[:, None] ** 2).sqrt() * z[..., 1]], -1)
    y = -0.5 * torch.log(1 - rho ** 2)
    return x, y


class DeepSet(nn.Module):
    def __init__(self, in_features: int = 2, set_features: int = 50) -> None:
        super().__init__()
        self.feature_extractor = nn.Sequential(nn.Linear(in_features, 50), nn.ELU(), nn.Linear(50, 100), nn.ELU(),
                                               nn.Linear(100, set_features))
        self.regressor = nn.Sequential(nn.Linear(set_features, 30), nn.ELU(), nn.Linear(30, 30), nn.ELU(),
                                       nn.Linear(30, 10), nn.ELU(), nn.Linear(10, 1))

    def forward(self, x):
        return self.regressor(self.feature_extractor(x).sum(dim=1))


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x_train, y_train = sets(2048, g)
    x_val, y_val = sets(256, g)
    if fixed:
        y_train, y_val = y_train.view(-1, 1), y_val.view(-1, 1)
    model = DeepSet()
    l2 = nn.MSELoss()
    optim = torch.optim.Adam(model.parameters(), lr=0.001)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optim, factor=0.5, patience=50)
    best_mse = 1.0e6
    probe = trainscope.watch(model, run_dir, optimizer=optim, criterion=l2)
    for epoch in range(12):
        perm = torch.randperm(len(x_train), generator=g)
        for i in range(0, len(perm), 128):
            idx = perm[i:i + 128]
            optim.zero_grad()
            loss = l2(model(x_train[idx]), y_train[idx])
            loss.backward()
            optim.step()
            probe.log(epoch=epoch, train_loss=loss.item())
        with torch.no_grad():
            pred = model(x_val)
            test_mse = ((pred.view(-1) - y_val.view(-1)) ** 2).mean().item()  # the per-index error, for reading
            best_mse = min(best_mse, l2(pred, y_val).item())
        scheduler.step(best_mse)
        probe.log(epoch=epoch, val_loss=l2(pred, y_val).item(), val_mse_per_index=test_mse)
    probe.close()
