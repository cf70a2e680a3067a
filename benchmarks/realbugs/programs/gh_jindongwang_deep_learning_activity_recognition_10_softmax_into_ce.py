"""jindongwang/Deep-learning-activity-recognition#10: the network's forward ends in F.softmax and its output
goes into nn.CrossEntropyLoss, which applies log_softmax itself."""
import math

import torch
import torch.nn.functional as F
from torch import nn

import trainscope

CASE = {
    "id": "gh_jindongwang_deep_learning_activity_recognition_10_softmax_into_ce",
    "source": "https://github.com/jindongwang/Deep-learning-activity-recognition/issues/10 — Bug in code",
    "summary": "The PyTorch HAR CNN (UCI-HAR: 9 inertial channels x 128 samples, 6 activities) returns "
               "F.softmax(self.fc(x), dim=1) and is trained with nn.CrossEntropyLoss(); the maintainer: 'It is "
               "true that I shouldn't use F.softmax before nn.CrossEntropyLoss! I'll update the code.'",
    "labels": ["softmax-before-cross-entropy"],
    "also_ok": ["slow-start", "underfitting", "loss-not-decreasing", "initial-loss-mismatch", "saturated-activations"],
    "fix": "return the raw scores self.fc(x) and let CrossEntropyLoss apply the (log-)softmax",
}


class HARNet(nn.Module):
    def __init__(self, fixed: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv1d(9, 32, 9), nn.ReLU(), nn.MaxPool1d(2))
        self.conv2 = nn.Sequential(nn.Conv1d(32, 64, 9), nn.ReLU(), nn.MaxPool1d(2))
        self.fc1 = nn.Sequential(nn.Linear(64 * 26, 256), nn.ReLU())
        self.fc2 = nn.Linear(256, 6)
        self.fixed = fixed

    def forward(self, x):
        x = self.conv2(self.conv1(x)).flatten(1)
        out = self.fc2(self.fc1(x))
        return out if self.fixed else F.softmax(out, dim=1)


def windows(n: int, g: torch.Generator):
    """Six 'activities': each drives the 9 body-sensor channels with its own frequency and amplitude pattern."""
    y = torch.randint(0, 6, (n,), generator=g)
    t = torch.arange(128) / 50.0  # 50 Hz, 2.56 s windows
    freq = torch.tensor([0.5, 1.0, 1.8, 2.5, 0.2, 3.2])[y][:, None, None]
    amp = 2 * torch.rand(6, 9, 1, generator=torch.Generator().manual_seed(6))[y] + 0.2  # per-activity sensor pattern
    phase = torch.rand(n, 9, 1, generator=g) * 2 * math.pi
    x = amp * torch.sin(2 * math.pi * freq * t + phase) + 0.1 * torch.randn(n, 9, 128, generator=g)
    return x, y


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x_train, y_train = windows(960, g)
    x_test, y_test = windows(300, g)
    model = HARNet(fixed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    probe = trainscope.watch(model, run_dir, optimizer=optimizer, criterion=criterion)
    for epoch in range(4):
        model.train()
        perm = torch.randperm(960, generator=g)
        for i in range(0, 960, 64):
            idx = perm[i:i + 64]
            optimizer.zero_grad()
            loss = criterion(model(x_train[idx]), y_train[idx])
            loss.backward()
            optimizer.step()
            probe.log(epoch=epoch, train_loss=loss.detach())
        model.eval()
        with torch.no_grad():
            out = model(x_test)
            probe.log(epoch=epoch, val_loss=criterion(out, y_test).item(), val_acc=(out.argmax(1) == y_test).float().mean().item())
    probe.close()
