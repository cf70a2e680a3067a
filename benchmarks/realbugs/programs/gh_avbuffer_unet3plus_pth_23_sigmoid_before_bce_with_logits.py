"""avBuffer/UNet3plus_pth#23: the network already applies a sigmoid and the loss applies another one."""
import torch
import torch.nn.functional as F
from torch import nn

import trainscope

CASE = {
    "id": "gh_avbuffer_unet3plus_pth_23_sigmoid_before_bce_with_logits",
    "source": "https://github.com/avBuffer/UNet3plus_pth/issues/23 — bug: bceloss not decrease",
    "summary": "unet3plus.py ends with return F.sigmoid(d1) while train.py's BCE criterion takes logits "
               "(BCEWithLogitsLoss), so the sigmoid is applied twice: the loss sees probabilities squeezed into "
               "(0.5, 0.73), its gradients shrink, and 'the loss may not decrease'.",
    "labels": ["output-activation-mismatch"],
    "also_ok": ["loss-not-decreasing", "underfitting", "slow-start", "saturated-activations", "lr-too-low",
                "initial-loss-mismatch"],
    "fix": "return d1 (the logits) from the network and keep BCEWithLogitsLoss, as the issue proposes",
}


class TinyUNet3Plus(nn.Module):
    def __init__(self, fixed: bool) -> None:
        super().__init__()
        self.e1 = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.e2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.d1 = nn.Sequential(nn.Conv2d(24, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1))
        self.fixed = fixed

    def forward(self, x):
        h1 = self.e1(x)
        h2 = F.interpolate(self.e2(h1), scale_factor=2, mode="bilinear", align_corners=False)  # full-scale skip
        d1 = self.d1(torch.cat([h1, h2], 1))
        return d1 if self.fixed else torch.sigmoid(d1)


def shapes(n: int, g: torch.Generator):
    x = torch.randn(n, 1, 16, 16, generator=g) * 0.6
    m = torch.zeros(n, 1, 16, 16)
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    for i in range(n):
        cy, cx = (torch.rand(2, generator=g) * 10 + 3).tolist()
        r = float(torch.rand(1, generator=g) * 3 + 2)
        m[i, 0] = (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r).float()
    return x + m, m


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x_train, y_train = shapes(256, g)
    x_val, y_val = shapes(64, g)
    model = TinyUNet3Plus(fixed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.BCEWithLogitsLoss()
    probe = trainscope.watch(model, run_dir, optimizer=optimizer, criterion=criterion)
    for epoch in range(6):
        model.train()
        perm = torch.randperm(256, generator=g)
        for i in range(0, 256, 16):
            idx = perm[i:i + 16]
            optimizer.zero_grad()
            loss = criterion(model(x_train[idx]), y_train[idx])
            loss.backward()
            optimizer.step()
            probe.log(epoch=epoch, train_loss=loss.detach())
        model.eval()
        with torch.no_grad():
            probe.log(epoch=epoch, val_loss=criterion(model(x_val), y_val).item())
    probe.close()
