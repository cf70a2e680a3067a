"""sktime/sktime#10931 (fixed by PR #10932): BaseDeepRegressorTorch yields targets of shape (batch,) while
FCNRegressorTorch, MLPRegressorTorch, SimpleRNNRegressorTorch and TapNetRegressorTorch end in Linear(..., 1)
and emit (batch, 1); in _run_epoch, self._criterion(y_pred, outputs) with MSELoss broadcasts to a (B, B)
all-pairs matrix ("a wrong training signal"). The fix squeezes the trailing singleton of y_pred before the
criterion. Tiny scale: FCNRegressorTorch's network (three Conv1d blocks with BatchNorm and ReLU, global average
pooling, Linear(1)) on synthetic 2-channel series of length 40 whose target is a weighted amplitude of a
sinusoid component; Adam, MSELoss, batch 16, sktime's default of shuffled batches."""
import torch
from torch import nn

import trainscope

CASE = {
    "id": "gh_sktime_sktime_10931_regressor_output_broadcast",
    "source": "https://github.com/sktime/sktime/issues/10931 — [BUG] BaseDeepRegressorTorch mishandles (batch, 1) network output in loss and predict",
    "summary": "time-series FCN regressor: MSELoss(y_pred of shape (B, 1), y of shape (B,)) broadcasts to (B, B); "
               "the loss averages B^2 pairs and the model regresses to the batch mean",
    "labels": ["loss-shape-mismatch"],
    "also_ok": ["loss-not-decreasing", "underfitting", "slow-start"],
    "fix": "squeeze the trailing singleton dimension of y_pred before calling the criterion",
}


def series(n: int, g: torch.Generator):
    t = torch.linspace(0, 6.28, 40)
    amp = torch.rand(n, generator=g) * 2
    freq = 1 + torch.randint(0, 3, (n,), generator=g).float()
    x = torch.stack([amp[:, None] * torch.sin(freq[:, None] * t), torch.cos(freq[:, None] * t)], 1)
    x = x + 0.2 * torch.randn(n, 2, 40, generator=g)
    y = 1.5 * amp - 0.5 * freq
    return x, (y - y.mean()) / y.std()


class FCNNetwork(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        def block(i, o, k):
            return nn.Sequential(nn.Conv1d(i, o, k, padding=k // 2), nn.BatchNorm1d(o), nn.ReLU())
        self.blocks = nn.Sequential(block(2, 32, 7), block(32, 64, 5), block(64, 32, 3))
        self.fc = nn.Linear(32, 1)

    def forward(self, x):
        return self.fc(self.blocks(x).mean(-1))


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x_train, y_train = series(480, g)
    x_val, y_val = series(120, g)
    network = FCNNetwork()
    criterion = nn.MSELoss()
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    probe = trainscope.watch(network, run_dir, optimizer=optimizer, criterion=criterion)
    for epoch in range(10):
        network.train()
        perm = torch.randperm(len(x_train), generator=g)
        for i in range(0, len(perm), 16):
            idx = perm[i:i + 16]
            optimizer.zero_grad()
            y_pred = network(x_train[idx])
            if fixed and y_pred.ndim == 2 and y_pred.shape[1] == 1:
                y_pred = y_pred.squeeze(-1)
            loss = criterion(y_pred, y_train[idx])
            loss.backward()
            optimizer.step()
            probe.log(epoch=epoch, train_loss=loss.item())
        network.eval()
        with torch.no_grad():
            pred = network(x_val).squeeze(-1)
            probe.log(epoch=epoch, val_loss=((pred - y_val) ** 2).mean().item())
    probe.close()
