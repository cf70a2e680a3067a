"""Port of the Stack Overflow question "Why does a binary Keras CNN always predict 1?". A binary
classifier (two Conv1D + BatchNorm + LeakyReLU + Dropout blocks, Dense(64), then Dense(1) with a softmax
activation) trained with binary cross-entropy predicts class 1 for every test window. The accepted
answer: softmax normalizes over the output units, so over a single unit it is always exactly 1; use a
sigmoid for one output unit. Rewritten in PyTorch at tiny scale: windows of 10 steps x 4 standardized
features from synthetic random walks with a drift (about 69% positives; the question had 608/970),
label = the window trends up overall. The fix replaces the Softmax(dim=1) by a Sigmoid."""
import torch
from torch import nn

import trainscope

CASE = {
    "id": "so_45378493_softmax_single_output",
    "source": "https://stackoverflow.com/questions/45378493/why-does-a-binary-keras-cnn-always-predict-1 — Why does a binary Keras CNN always predict 1?",
    "summary": "binary CNN ending in Dense(1) + softmax with BCE: the output is exactly 1.0 for every input, every gradient is zero and all predictions are class 1",
    "labels": ["output-activation-mismatch"],
    "also_ok": ["zero-gradients", "parameters-not-updated", "loss-not-decreasing", "underfitting",
                "initial-loss-mismatch", "collapsed-activations", "vanishing-gradients"],
    "fix": "a sigmoid instead of a softmax on the single output unit",
}


def make_windows(n: int, g: torch.Generator):
    drift = 0.5 * torch.randn(n, 1, 4, generator=g).sign()         # each feature trends up or down
    series = (torch.randn(n, 10, 4, generator=g) + drift).cumsum(1)
    x = series
    y = (drift.sum((1, 2)) >= 0).float()  # the window trends up overall (~69% positives)
    x = (x - x.mean((1, 2), keepdim=True)) / (x.std((1, 2), keepdim=True) + 1e-6)
    return x.transpose(1, 2).contiguous(), y.unsqueeze(1)   # (N, 4 channels, 10 steps)


def run(run_dir: str, fixed: bool) -> None:
    g = torch.Generator().manual_seed(0)
    xtr, ytr = make_windows(1500, g)
    xva, yva = make_windows(400, g)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(4, 16, 4, padding="same"), nn.BatchNorm1d(16), nn.LeakyReLU(), nn.Dropout(0.2),
        nn.Conv1d(16, 8, 4, padding="same"), nn.BatchNorm1d(8), nn.LeakyReLU(), nn.Dropout(0.2),
        nn.Flatten(), nn.Linear(8 * 10, 64), nn.BatchNorm1d(64), nn.LeakyReLU(),
        nn.Linear(64, 1), nn.Sigmoid() if fixed else nn.Softmax(dim=1),
    )
    criterion = nn.BCELoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.9, patience=30,
                                                         min_lr=1e-6)
    with trainscope.watch(model, run_dir, optimizer=optimizer, criterion=criterion) as probe:
        for epoch in range(6):
            model.train()
            perm = torch.randperm(len(xtr), generator=g)
            for i in range(0, len(xtr), 128):
                idx = perm[i:i + 128]
                optimizer.zero_grad()
                loss = criterion(model(xtr[idx]), ytr[idx])
                loss.backward()
                optimizer.step()
                probe.log(epoch=epoch, train_loss=loss)
            model.eval()
            with torch.no_grad():
                out = model(xva)
                val_acc = ((out > 0.5).float() == yva).float().mean().item()
                probe.log(epoch=epoch, val_loss=criterion(out, yva), val_acc=val_acc)
            plateau.step(val_acc)
