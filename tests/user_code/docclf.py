"""Case study 002's document classifier as a user would write it, for `trainscope check --model ... --data ...`.

    trainscope check --model tests/user_code/docclf.py:make_buggy --data tests/user_code/docclf.py:make_data
    trainscope check --model tests/user_code/docclf.py:make_fixed --data tests/user_code/docclf.py:make_data

Widths are the case study's 5000 -> 2048 -> ... -> 128 -> 50, scaled down (200 -> ... -> 64 -> 10).
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

WIDTHS = (200, 256, 256, 128, 128, 64)
CLASSES = 10


def make_buggy() -> nn.Module:
    """Bug 1 (softmax before CrossEntropyLoss) and bug 2 (a sigmoid stack with PyTorch's default init)."""
    torch.manual_seed(42)
    layers = []
    for a, b in zip(WIDTHS, WIDTHS[1:]):
        layers += [nn.Linear(a, b), nn.Sigmoid()]
    layers += [nn.Linear(WIDTHS[-1], CLASSES), nn.Softmax(dim=1)]
    return nn.Sequential(*layers)


def make_fixed() -> nn.Module:
    """ReLU + BatchNorm + dropout 0.3, He init, logits out."""
    torch.manual_seed(42)
    layers = []
    for a, b in zip(WIDTHS, WIDTHS[1:]):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU(), nn.Dropout(0.3)]
    layers.append(nn.Linear(WIDTHS[-1], CLASSES))
    model = nn.Sequential(*layers)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return model


def documents(n: int = 512, d: int = WIDTHS[0], classes: int = CLASSES, seed: int = 0):
    """Sparse non-negative TF-IDF-like rows (L2-normalized); each class favours some words."""
    g = torch.Generator().manual_seed(seed)
    topics = torch.rand(classes, d, generator=g) ** 4
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.log1p(torch.poisson(topics[y] * 3.0, generator=g))
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-6), y


def make_data() -> DataLoader:
    x, y = documents()
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))


def make_criterion() -> nn.Module:
    return nn.CrossEntropyLoss()


def make_adamw(params):
    """The case study's fixed optimizer (weight decay is switched off by the check)."""
    return torch.optim.AdamW(params, lr=3e-4, weight_decay=0.01)


def make_bad_data():
    """Constant labels and unscaled features: the data peek must flag both."""
    x, _ = documents(128)
    return [(x[i:i + 32] * 1000 + 50, torch.zeros(32, dtype=torch.long)) for i in range(0, 128, 32)]
