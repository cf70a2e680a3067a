"""ivadomed/ivadomed#55 (merged): "Scheduler was incorrectly stepped in the batch loop instead of in the epoch
loop (mistake in #51), causing the LR to be updated after each batch instead of after each epoch." The
ivadomed training script of that time builds CosineAnnealingLR(optimizer, num_epochs) next to
Adam(lr=initial_lr) for its 2-D segmentation U-Net; stepped per batch, the cosine (sized in epochs) reaches 0
after num_epochs batches and then cycles up and down every 2*num_epochs batches for the rest of training.
Tiny scale: a 2-level U-Net on 16x16 synthetic images (a bright blob to segment), Dice + BCE replaced by BCE
with logits, Adam(1e-3), num_epochs=10, 16 batches per epoch. The scheduler is not passed to watch()."""
import torch
from torch import nn

import trainscope

CASE = {
    "id": "gh_ivadomed_ivadomed_55_cosine_scheduler_stepped_per_batch",
    "source": "https://github.com/ivadomed/ivadomed/pull/55 — Fix scheduler updating",
    "summary": "CosineAnnealingLR(T_max=num_epochs) stepped after every batch: the LR reaches zero after 10 "
               "batches and then oscillates between 0 and its peak with a 20-batch period instead of decaying "
               "once over the 10 epochs",
    "labels": ["scheduler-step-cadence"],
    "also_ok": ["oscillation", "lr-too-low", "slow-start", "underfitting"],
    "fix": "call scheduler.step() once per epoch, outside the batch loop",
}


def blobs(n: int, g: torch.Generator):
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    x = 0.4 * torch.randn(n, 1, 16, 16, generator=g)
    m = torch.zeros(n, 1, 16, 16)
    for i in range(n):
        r, c = (float(v) for v in torch.randint(4, 12, (2,), generator=g))
        rad = 2.0 + 2.0 * float(torch.rand(1, generator=g))
        m[i, 0] = (((yy - r) ** 2 + (xx - c) ** 2) <= rad ** 2).float()
    return x + m, m


class UNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.down1 = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.down2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.out = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 1, 1))

    def forward(self, x):
        d1 = self.down1(x)
        return self.out(torch.cat([self.up(self.down2(d1)), d1], 1))


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x_train, y_train = blobs(256, g)
    x_val, y_val = blobs(64, g)
    num_epochs, initial_lr = 10, 1e-3
    model = UNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=initial_lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, num_epochs)
    loss_fn = nn.BCEWithLogitsLoss()
    probe = trainscope.watch(model, run_dir, optimizer=optimizer, criterion=loss_fn)
    for epoch in range(num_epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=g)
        for i in range(0, len(perm), 16):
            idx = perm[i:i + 16]
            optimizer.zero_grad()
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            loss.backward()
            optimizer.step()
            if not fixed:
                scheduler.step()
            probe.log(epoch=epoch, train_loss=loss.item(), lr=optimizer.param_groups[0]["lr"])
        if fixed:
            scheduler.step()
        model.eval()
        with torch.no_grad():
            probe.log(epoch=epoch, val_loss=loss_fn(model(x_val), y_val).item())
    probe.close()
