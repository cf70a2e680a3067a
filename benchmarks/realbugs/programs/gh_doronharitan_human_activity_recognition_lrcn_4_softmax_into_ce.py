"""doronharitan/human_activity_recognition_LRCN#4: the LRCN (a per-frame CNN feeding an LSTM, then a linear
classifier) ends in a Softmax and is trained with nn.CrossEntropyLoss, which applies log-softmax itself. The
author confirmed: removing the softmax layer made the model converge faster. Tiny scale: clips of 6 frames of
12x12 noise with one bright 3x3 square that moves in one of 4 directions (the action class); a 2-conv CNN per
frame, a 1-layer LSTM over the frame features, the last hidden state into Linear(4); Adam, lr=1e-3."""
import torch
from torch import nn

import trainscope

CASE = {
    "id": "gh_doronharitan_human_activity_recognition_lrcn_4_softmax_into_ce",
    "source": "https://github.com/doronharitan/human_activity_recognition_LRCN/issues/4 — Softmax and CrossEntropyLoss",
    "summary": "CNN+LSTM action classifier whose output goes through nn.Softmax before nn.CrossEntropyLoss: the "
               "loss is computed on probabilities, its gradient is small and training converges slowly",
    "labels": ["softmax-before-cross-entropy"],
    "also_ok": ["loss-not-decreasing", "underfitting", "slow-start", "initial-loss-mismatch"],
    "fix": "remove the softmax layer at the end of the model (CrossEntropyLoss takes the raw scores)",
}

DIRS = [(0, 1), (0, -1), (1, 0), (-1, 0)]


def clips(n: int, g: torch.Generator):
    x = 0.3 * torch.randn(n, 6, 1, 12, 12, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    for i in range(n):
        dr, dc = DIRS[int(y[i])]
        r, c = (int(v) for v in torch.randint(3, 6, (2,), generator=g))
        for t in range(6):
            rr, cc = r + dr * t, c + dc * t
            x[i, t, 0, rr:rr + 3, cc:cc + 3] += 1.0
    return x, y


class LRCN(nn.Module):
    def __init__(self, softmax_out: bool) -> None:
        super().__init__()
        self.cnn = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(3), nn.Flatten())
        self.lstm = nn.LSTM(16 * 9, 64, batch_first=True)
        self.fc = nn.Linear(64, 4)
        self.softmax = nn.Softmax(dim=1) if softmax_out else None

    def forward(self, x):
        b, t = x.shape[:2]
        feats = self.cnn(x.reshape(b * t, *x.shape[2:])).reshape(b, t, -1)
        out, _ = self.lstm(feats)
        out = self.fc(out[:, -1])
        return self.softmax(out) if self.softmax is not None else out


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x_train, y_train = clips(512, g)
    x_val, y_val = clips(128, g)
    model = LRCN(softmax_out=not fixed)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    probe = trainscope.watch(model, run_dir, optimizer=optimizer, criterion=criterion)
    for epoch in range(8):
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
    probe.close()
