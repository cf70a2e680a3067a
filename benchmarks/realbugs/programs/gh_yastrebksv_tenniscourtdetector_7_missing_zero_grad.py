"""yastrebksv/TennisCourtDetector#7: base_trainer.train() runs out = model(x); loss = criterion(sigmoid(out),
heatmaps); loss.backward(); optimizer.step() and never calls optimizer.zero_grad(), so every step uses the sum
of all gradients since the start. The author confirmed and fixed it. Tiny scale: a small conv
encoder-decoder predicting one heatmap per keypoint (4 "court corners" on 24x24 synthetic images with
bright lines), MSELoss on sigmoid(out) against Gaussian heatmaps, Adam lr=1e-3 (the repo's Adam), batch 8."""
import torch
import torch.nn.functional as F
from torch import nn

import trainscope

CASE = {
    "id": "gh_yastrebksv_tenniscourtdetector_7_missing_zero_grad",
    "source": "https://github.com/yastrebksv/TennisCourtDetector/issues/7 — Why there is no \"optimizer.zero_grad()\" in base_trainer.py?",
    "summary": "keypoint-heatmap network trained with Adam + MSE on sigmoid outputs; the loop never resets the "
               "gradients, so each step follows the running sum of every past gradient",
    "labels": ["missing-zero-grad"],
    "also_ok": ["loss-not-decreasing", "divergence", "oscillation", "lr-too-high", "exploding-gradients",
                "unstable-gradients", "underfitting"],
    "fix": "call optimizer.zero_grad() before each backward pass",
}

S = 24


def courts(n: int, g: torch.Generator):
    """An axis-aligned rectangle outline (court lines) with jittered corners; target = 4 corner heatmaps."""
    yy, xx = torch.meshgrid(torch.arange(S, dtype=torch.float32), torch.arange(S, dtype=torch.float32), indexing="ij")
    x = 0.2 * torch.randn(n, 1, S, S, generator=g)
    hm = torch.zeros(n, 4, S, S)
    for i in range(n):
        r0, c0 = (int(v) for v in torch.randint(2, 8, (2,), generator=g))
        r1, c1 = (int(v) for v in torch.randint(16, 22, (2,), generator=g))
        x[i, 0, r0, c0:c1 + 1] += 1.0
        x[i, 0, r1, c0:c1 + 1] += 1.0
        x[i, 0, r0:r1 + 1, c0] += 1.0
        x[i, 0, r0:r1 + 1, c1] += 1.0
        for k, (r, c) in enumerate([(r0, c0), (r0, c1), (r1, c0), (r1, c1)]):
            hm[i, k] = torch.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * 1.5 ** 2))
    return x, hm


class CourtNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(16),
                                 nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(32))
        self.dec = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(32, 16, 3, padding=1), nn.ReLU(),
                                 nn.BatchNorm2d(16), nn.Conv2d(16, 4, 3, padding=1))

    def forward(self, x):
        return self.dec(self.enc(x))


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x_train, hm_train = courts(256, g)
    x_val, hm_val = courts(64, g)
    model = CourtNet()
    criterion = nn.MSELoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    probe = trainscope.watch(model, run_dir, optimizer=optimizer, criterion=criterion)
    for epoch in range(6):
        model.train()
        perm = torch.randperm(len(x_train), generator=g)
        for i in range(0, len(perm), 8):
            idx = perm[i:i + 8]
            if fixed:
                optimizer.zero_grad()
            out = model(x_train[idx])
            loss = criterion(F.sigmoid(out), hm_train[idx])
            loss.backward()
            optimizer.step()
            probe.log(epoch=epoch, train_loss=loss.item())
        model.eval()
        with torch.no_grad():
            probe.log(epoch=epoch, val_loss=criterion(F.sigmoid(model(x_val)), hm_val).item())
    probe.close()
