"""Lornatang/SRGAN-PyTorch#1: StepLR(step_size=epochs // 2, gamma=0.1) is stepped at every training step."""
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

import trainscope

CASE = {
    "id": "gh_lornatang_srgan_pytorch_1_steplr_stepped_per_batch",
    "source": "https://github.com/Lornatang/SRGAN-PyTorch/issues/1 — Learning rate scheduler is working incorrect",
    "summary": "The scheduler is built with step_size=epochs // 2 and gamma=0.1, i.e. meant to decay once half-way "
               "through training, but scheduler.step() is called after every batch, so 'the learning rate is "
               "quickly becoming zero after a few training steps' and the generator stops learning.",
    "labels": ["scheduler-step-cadence"],
    "also_ok": ["lr-too-low", "loss-not-decreasing", "underfitting", "slow-start"],
    "fix": "call scheduler.step() once per epoch, after the epoch's batches (the reporter's fix, adopted by the author)",
}


class Generator(nn.Module):
    """A tiny SRResNet-style generator: 4x4 -> 8x8 with a residual block and a PixelShuffle upsampler."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.PReLU())
        self.res = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.PReLU(), nn.Conv2d(16, 16, 3, padding=1))
        self.up = nn.Sequential(nn.Conv2d(16, 64, 3, padding=1), nn.PixelShuffle(2), nn.PReLU())
        self.tail = nn.Conv2d(16, 1, 3, padding=1)

    def forward(self, x):
        h = self.head(x)
        return self.tail(self.up(h + self.res(h)))


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    hr = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8)
    lr_img = F.avg_pool2d(hr, 2)  # (N, 1, 4, 4)
    train_hr, train_lr, val_hr, val_lr = hr[:1500], lr_img[:1500], hr[1500:], lr_img[1500:]
    netG = Generator()
    epochs = 8
    optimizerG = torch.optim.Adam(netG.parameters(), lr=1e-3)
    schedulerG = torch.optim.lr_scheduler.StepLR(optimizerG, step_size=epochs // 2, gamma=0.1)
    mse = nn.MSELoss()
    probe = trainscope.watch(netG, run_dir, optimizer=optimizerG, criterion=mse)
    g = torch.Generator().manual_seed(0)
    for epoch in range(epochs):
        netG.train()
        perm = torch.randperm(1500, generator=g)
        for i in range(0, 1500, 50):
            idx = perm[i:i + 50]
            optimizerG.zero_grad()
            loss = mse(netG(train_lr[idx]), train_hr[idx])
            loss.backward()
            optimizerG.step()
            if not fixed:
                schedulerG.step()
            probe.log(epoch=epoch, train_loss=loss.detach())
        if fixed:
            schedulerG.step()
        netG.eval()
        with torch.no_grad():
            probe.log(epoch=epoch, val_loss=mse(netG(val_lr), val_hr).item())
    probe.close()
