"""Tiny real training runs recorded with `trainscope.watch` (seconds each on CPU).

Shared by the rule tests: a few synthetic tasks, a few architectures (MLP, CNN, GRU, tiny
transformer) and one training loop with knobs for the failure modes the rules must catch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import trainscope

torch.set_num_threads(1)  # tests share 2 cores


@dataclass
class Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int


def teacher_task(n: int = 1024, d: int = 16, classes: int = 4, label_noise: float = 0.0, seed: int = 0,
                 n_val: int = 512, shape: tuple[int, ...] | None = None) -> Data:
    """Labels from a fixed random 2-layer teacher: learnable, not trivially linear."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + n_val, d, generator=g)
    w1 = torch.randn(d, 32, generator=g) / d**0.5
    w2 = torch.randn(32, classes, generator=g) / 32**0.5
    y = (torch.tanh(x @ w1) @ w2).argmax(1)
    if label_noise:
        flip = torch.rand(n + n_val, generator=g) < label_noise
        y = torch.where(flip, torch.randint(0, classes, (n + n_val,), generator=g), y)
    if shape is not None:
        x = x.reshape(-1, *shape)
    return Data(x[:n], y[:n], x[n:], y[n:], classes)


def sequence_task(n: int = 1024, length: int = 12, seed: int = 0, n_val: int = 512) -> Data:
    """Is the sum of the first half of a sequence larger than the second half's? (needs memory)"""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + n_val, length, 1, generator=g)
    h = length // 2
    y = (x[:, :h, 0].sum(1) > x[:, h:, 0].sum(1)).long()
    return Data(x[:n], y[:n], x[n:], y[n:], 2)


def mlp(d: int = 16, classes: int = 4, hidden: int = 64, depth: int = 2, act: type[nn.Module] = nn.ReLU) -> nn.Module:
    layers: list[nn.Module] = []
    width = d
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), act()]
        width = hidden
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


def small_cnn(classes: int = 4) -> nn.Module:
    """Input (N, 1, 4, 4)."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 16, classes),
    )


class GRUClassifier(nn.Module):
    def __init__(self, hidden: int = 32, classes: int = 2) -> None:
        super().__init__()
        self.gru = nn.GRU(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1])


class TinyTransformer(nn.Module):
    def __init__(self, d_model: int = 32, classes: int = 2, length: int = 12) -> None:
        super().__init__()
        self.embed = nn.Linear(1, d_model)
        self.pos = nn.Parameter(torch.randn(1, length, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(d_model, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(x) + self.pos)
        return self.head(h.mean(1))


def train(
    run_dir: str | Path,
    model: nn.Module,
    data: Data,
    *,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 1e-3,
    optimizer: str = "adam",
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    validate: bool = True,
    criterion: nn.Module | None = None,
    scheduler: Callable[[torch.optim.Optimizer, int], object] | None = None,
    every: int = 10,
    seed: int = 0,
) -> "trainscope.store.run.Run":
    """Train for real, record with trainscope.watch, return the loaded run."""
    torch.manual_seed(seed)
    crit = criterion or nn.CrossEntropyLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    steps_per_epoch = max(1, len(data.x_train) // batch_size)
    sched = scheduler(opt, epochs * steps_per_epoch) if scheduler else None
    g = torch.Generator().manual_seed(seed)
    with trainscope.watch(model, run_dir, optimizer=opt, criterion=crit, scheduler=sched, every=every) as probe:
        for epoch in range(1, epochs + 1):
            model.train()
            perm = torch.randperm(len(data.x_train), generator=g)
            for i in range(steps_per_epoch):
                idx = perm[i * batch_size : (i + 1) * batch_size]
                opt.zero_grad()
                loss = crit(model(data.x_train[idx]), data.y_train[idx])
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                probe.log(epoch=epoch, train_loss=loss.detach())
            if validate:
                model.eval()
                with torch.no_grad():
                    out = model(data.x_val)
                    val_loss = crit(out, data.y_val).item()
                    val_acc = (out.argmax(1) == data.y_val).float().mean().item()
                probe.log(epoch=epoch, val_loss=val_loss, val_acc=val_acc)
    return trainscope.load_run(run_dir)
