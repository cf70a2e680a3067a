"""nttcslab/byol-a#7 (labelled bug by the author): NetworkCommonMixIn.set_trainable(trainable) only touches
parameters that already require grad ("for p in self.parameters(): if p.requires_grad: p.requires_grad =
trainable"), so once set_trainable(False) has frozen the encoder, set_trainable(True) cannot make it trainable
again: "Model parameters cannot be trainable once they become requires_grad=False ... `if p.requires_grad` has
to be removed." Tiny scale: the AudioNTT2020 encoder shape (3 conv blocks with BatchNorm, ReLU, max-pool; an
fc stack; max+mean pooling over time) on synthetic 1x16x16 log-mel patches of 4 sound classes, a linear head;
stage 1 (2 epochs) is a linear evaluation with set_trainable(False); stage 2 (6 epochs) fine-tunes after
set_trainable(True) with Adam over all model parameters. In the buggy version the encoder never moves."""
import torch
from torch import nn

import trainscope

CASE = {
    "id": "gh_nttcslab_byol_a_7_set_trainable_cannot_unfreeze",
    "source": "https://github.com/nttcslab/byol-a/issues/7 — Model parameters cannot be trainable once they become requires_grad=False",
    "summary": "linear evaluation freezes the encoder with set_trainable(False); the fine-tuning stage calls "
               "set_trainable(True), which skips every parameter that does not require grad, so all encoder "
               "weights stay frozen while the optimizer holds them",
    "labels": ["parameters-not-updated"],
    "also_ok": ["underfitting", "loss-not-decreasing", "slow-start"],
    "fix": "set requires_grad on every parameter (remove the `if p.requires_grad` test)",
}


class AudioEncoder(nn.Module):
    def __init__(self, fixed: bool, n_mels: int = 16, d: int = 64) -> None:
        super().__init__()
        def block(i, o):
            return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*block(1, 16), *block(16, 16))
        self.fc = nn.Sequential(nn.Linear(16 * (n_mels // 4), d), nn.ReLU(), nn.Dropout(0.3), nn.Linear(d, d), nn.ReLU())
        self.fixed = fixed

    def set_trainable(self, trainable: bool = False) -> None:
        for p in self.parameters():
            if self.fixed or p.requires_grad:
                p.requires_grad = trainable

    def forward(self, x):
        x = self.features(x)                      # (batch, ch, mel, time)
        x = x.permute(0, 3, 2, 1)                 # (batch, time, mel, ch)
        b, t, m, c = x.shape
        x = self.fc(x.reshape(b, t, m * c))
        return x.max(dim=1).values + x.mean(dim=1)


class Classifier(nn.Module):
    def __init__(self, fixed: bool) -> None:
        super().__init__()
        self.encoder = AudioEncoder(fixed)
        self.head = nn.Linear(64, 4)

    def forward(self, x):
        return self.head(self.encoder(x))


def patches(n: int, g: torch.Generator):
    """Class k: energy in mel band 4k..4k+3 with a class-specific temporal rhythm, plus noise."""
    y = torch.randint(0, 4, (n,), generator=g)
    x = 0.5 * torch.randn(n, 1, 16, 16, generator=g)
    t = torch.arange(16.0)
    for i in range(n):
        k = int(y[i])
        x[i, 0, 4 * k:4 * k + 4] += 0.6 * (1 + torch.sin(t * (0.4 + 0.5 * k)))
    return x, y


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x_train, y_train = patches(640, g)
    x_val, y_val = patches(160, g)
    model = Classifier(fixed)
    criterion = nn.CrossEntropyLoss()
    probe = trainscope.watch(model, run_dir, criterion=criterion)

    def train(optimizer, epochs, first_epoch):
        for epoch in range(first_epoch, first_epoch + epochs):
            model.train()
            perm = torch.randperm(len(x_train), generator=g)
            for i in range(0, len(perm), 32):
                idx = perm[i:i + 32]
                optimizer.zero_grad()
                loss = criterion(model(x_train[idx]), y_train[idx])
                loss.backward()
                optimizer.step()
                probe.log(epoch=epoch, train_loss=loss.item())
            model.eval()
            with torch.no_grad():
                out = model(x_val)
                probe.log(epoch=epoch, val_loss=criterion(out, y_val).item(),
                          val_acc=(out.argmax(1) == y_val).float().mean().item())

    model.encoder.set_trainable(False)                               # linear evaluation
    train(torch.optim.Adam(model.head.parameters(), lr=1e-3), 2, 0)
    model.encoder.set_trainable(True)                                # fine-tuning
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train(optimizer, 6, 2)
    probe.close()
