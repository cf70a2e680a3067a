"""eiriniar/gleason_CNN#1: "when I try to train the network it gets 99.50% of accuracy and all classes are
gleason 3." The author: "there was indeed a bug in the data augmentation script that effectively disabled it.
As a result the network would immediately overfit. This has been fixed now." The repository fine-tunes a CNN on
small sets of prostate-tissue patches with flips, rotations and colour jitter. Tiny scale: 4 classes of 16x16
synthetic "tissue" patches (class = density and size of gland-like blobs at random positions, so flips and
rotations preserve the class), only 64 training patches, a 3-conv CNN with global pooling and a dense head,
Adam(1e-3), 40 epochs. The bug: the augmentation step returns the batch unchanged; the fix applies random
flips, 90-degree rotations, shifts and brightness jitter to every training batch."""
import torch
from torch import nn

import trainscope

CASE = {
    "id": "gh_eiriniar_gleason_cnn_1_augmentation_disabled_overfits",
    "source": "https://github.com/eiriniar/gleason_CNN/issues/1 — error in the training step",
    "summary": "CNN on a small patch data set whose augmentation is silently disabled: training accuracy "
               "reaches ~100% within a few epochs while validation loss turns around and climbs",
    "labels": ["overfitting"],
    "also_ok": ["no-early-stopping"],
    "fix": "make the augmentation actually apply (random flips, rotations, shifts, brightness) to training batches",
}

S = 16


def patches(n: int, g: torch.Generator):
    yy, xx = torch.meshgrid(torch.arange(float(S)), torch.arange(float(S)), indexing="ij")
    y = torch.arange(n) % 4
    x = 0.35 * torch.randn(n, 1, S, S, generator=g)
    for i in range(n):
        k = int(y[i])
        count, rad = [(2, 3.0), (5, 2.0), (9, 1.4), (14, 0.9)][k]
        for _ in range(count):
            r, c = (float(v) for v in torch.rand(2, generator=g) * S)
            x[i, 0] += torch.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * rad ** 2))
    perm = torch.randperm(n, generator=g)
    return x[perm], y[perm]


def augment(x, g: torch.Generator, enabled: bool):
    if not enabled:
        return x  # the bug: the augmentation generator hands back the batch untouched
    out = x.clone()
    for i in range(len(out)):
        im = out[i]
        if float(torch.rand(1, generator=g)) < 0.5:
            im = im.flip(-1)
        im = torch.rot90(im, int(torch.randint(0, 4, (1,), generator=g)), dims=(-2, -1))
        dr, dc = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
        im = torch.roll(im, shifts=(dr, dc), dims=(-2, -1))
        out[i] = im * (0.8 + 0.4 * float(torch.rand(1, generator=g)))
    return out


class PatchCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(64 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 4))

    def forward(self, x):
        return self.head(self.features(x))


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x_train, y_train = patches(64, g)
    x_val, y_val = patches(256, g)
    model = PatchCNN()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    probe = trainscope.watch(model, run_dir, optimizer=optimizer, criterion=criterion)
    for epoch in range(40):
        model.train()
        perm = torch.randperm(len(x_train), generator=g)
        correct = 0
        for i in range(0, len(perm), 16):
            idx = perm[i:i + 16]
            xb = augment(x_train[idx], g, enabled=fixed)
            optimizer.zero_grad()
            out = model(xb)
            loss = criterion(out, y_train[idx])
            loss.backward()
            optimizer.step()
            correct += (out.argmax(1) == y_train[idx]).sum().item()
            probe.log(epoch=epoch, train_loss=loss.item())
        model.eval()
        with torch.no_grad():
            out = model(x_val)
            probe.log(epoch=epoch, train_acc=correct / len(x_train), val_loss=criterion(out, y_val).item(),
                      val_acc=(out.argmax(1) == y_val).float().mean().item())
    probe.close()
