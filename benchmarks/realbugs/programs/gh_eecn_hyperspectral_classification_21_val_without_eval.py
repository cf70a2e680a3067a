"""eecn/Hyperspectral-Classification#21: val() runs under torch.no_grad() but never calls net.eval()."""
import torch
from sklearn.datasets import make_classification
from torch import nn

import trainscope

CASE = {
    "id": "gh_eecn_hyperspectral_classification_21_val_without_eval",
    "source": "https://github.com/eecn/Hyperspectral-Classification/issues/21 — 在validation阶段为什么不使用"
              "model.eval() (why is model.eval() not used in validation)",
    "summary": "The toolbox's val(net, data_loader) computes validation accuracy under torch.no_grad() with the "
               "network still in train mode, although its models use dropout and BatchNorm; the maintainer "
               "agreed it must be added (是需要加上的).",
    "labels": ["train-mode-during-evaluation"],
    "also_ok": [],
    "fix": "net.eval() at the start of val() (and net.train() when training resumes)",
}


class SpectralNet(nn.Module):
    """A per-pixel spectral classifier (103 bands, 9 classes, as on Pavia University) with BN and dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(103, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.5),
                                      nn.Linear(128, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.5))
        self.classifier = nn.Linear(64, 9)

    def forward(self, x):
        return self.classifier(self.features(x))


def val(net, x_val, y_val, criterion, fixed):
    if fixed:
        net.eval()
    with torch.no_grad():
        out = net(x_val)
        return criterion(out, y_val).item(), (out.argmax(1) == y_val).float().mean().item()


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    x, y = make_classification(n_samples=2300, n_features=103, n_informative=20, n_classes=9,
                               n_clusters_per_class=1, class_sep=1.5, random_state=1)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    x = (x - x[:2000].mean(0)) / x[:2000].std(0)
    x_train, y_train, x_val, y_val = x[:2000], y[:2000], x[2000:], y[2000:]
    net = SpectralNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    probe = trainscope.watch(net, run_dir, optimizer=optimizer, criterion=criterion)
    g = torch.Generator().manual_seed(0)
    for epoch in range(8):
        net.train()
        perm = torch.randperm(len(x_train), generator=g)
        for i in range(0, len(perm), 100):
            idx = perm[i:i + 100]
            optimizer.zero_grad()
            loss = criterion(net(x_train[idx]), y_train[idx])
            loss.backward()
            optimizer.step()
            probe.log(epoch=epoch, train_loss=loss.detach())
        val_loss, val_acc = val(net, x_val, y_val, criterion, fixed)
        probe.log(epoch=epoch, val_loss=val_loss, val_acc=val_acc)
    probe.close()
