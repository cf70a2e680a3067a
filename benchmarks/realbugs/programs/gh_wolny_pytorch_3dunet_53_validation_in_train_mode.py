"""wolny/pytorch-3dunet#53: the validation pass runs without model.eval(), with dropout in the network."""
import torch
from torch import nn

import trainscope

CASE = {
    "id": "gh_wolny_pytorch_3dunet_53_validation_in_train_mode",
    "source": "https://github.com/wolny/pytorch-3dunet/issues/53 — Need to set the model to 'eval' mode when "
              "assessing the validation data",
    "summary": "The trainer's validation forward passes run under torch.no_grad() but with the model still in "
               "train mode; with a dropout layer after the bottleneck (as the reporter added) the validation "
               "loss is computed with dropout active and is noisy and pessimistic.",
    "labels": ["train-mode-during-evaluation"],
    "also_ok": [],
    "fix": "self.model.eval() before the validation loop and self.model.train() after it",
}


class TinyUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU())
        self.down = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU())
        self.drop = nn.Dropout2d(0.5)  # the reporter's dropout after the bottleneck
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.dec = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 1, 1))

    def forward(self, x):
        e = self.enc(x)
        b = self.drop(self.down(e))
        return self.dec(torch.cat([self.up(b), e], 1))


def blobs(n: int, g: torch.Generator):
    """Noisy images with one bright square each; the target is the square's mask."""
    x = torch.randn(n, 1, 16, 16, generator=g) * 0.5
    m = torch.zeros(n, 1, 16, 16)
    for i in range(n):
        r, c = torch.randint(0, 10, (2,), generator=g).tolist()
        s = int(torch.randint(3, 7, (1,), generator=g))
        m[i, 0, r:r + s, c:c + s] = 1.0
    return x + 1.5 * m, m


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x_train, y_train = blobs(256, g)
    x_val, y_val = blobs(64, g)
    model = TinyUNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    probe = trainscope.watch(model, run_dir, optimizer=opt, criterion=loss_fn)
    for epoch in range(6):
        model.train()
        perm = torch.randperm(len(x_train), generator=g)
        for i in range(0, len(perm), 16):
            idx = perm[i:i + 16]
            opt.zero_grad()
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            loss.backward()
            opt.step()
            probe.log(epoch=epoch, train_loss=loss.detach())
        if fixed:
            model.eval()
        with torch.no_grad():
            val_loss = sum(loss_fn(model(x_val[i:i + 16]), y_val[i:i + 16]).item() for i in range(0, 64, 16)) / 4
        probe.log(epoch=epoch, val_loss=val_loss)
        if fixed:
            model.train()
    probe.close()
