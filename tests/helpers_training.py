"""Tiny real training runs recorded with `trainscope.watch` (seconds each on CPU).

Shared by the rule tests: a few synthetic tasks, a few architectures (MLP, CNN, GRU, tiny
transformer), one training loop with knobs for the failure modes the rules must catch, and a
per-session cache of named scenarios (`scenario(name)`) so several tests reuse one run.
"""
from __future__ import annotations

import atexit
import math
import shutil
import tempfile
from dataclasses import dataclass, replace
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


def click_task(n: int = 1024, d: int = 128, seed: int = 0, n_val: int = 256) -> Data:
    """StreamRec-like click prediction: 128 standardized features, binary label as float (BCE)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + n_val, d, generator=g)
    w = torch.randn(d, generator=g) / d**0.5
    y = ((x @ w + 0.5 * torch.randn(n + n_val, generator=g)) > 0).float().unsqueeze(1)
    return Data(x[:n], y[:n], x[n:], y[n:], 2)


def docs_task(n: int = 1024, d: int = 200, classes: int = 10, seed: int = 0, n_val: int = 256) -> Data:
    """Document-classifier stand-in: sparse non-negative TF-IDF-like features with class topics."""
    g = torch.Generator().manual_seed(seed)
    topics = torch.rand(classes, d, generator=g) ** 4  # each class favours some 'words'
    y = torch.randint(0, classes, (n + n_val,), generator=g)
    counts = torch.poisson(topics[y] * 3.0, generator=g)
    x = torch.log1p(counts)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-6)  # l2-normalized tf-idf rows
    return Data(x[:n], y[:n], x[n:], y[n:], classes)


def digits_task(n_val: int = 297, raw: bool = False) -> Data:
    """sklearn's bundled 8x8 digits (1797 images, 10 classes) as (N, 1, 8, 8); standardized unless raw
    (raw pixels are 0..16)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32)
    if not raw:
        x = (x - x[:-n_val].mean()) / x[:-n_val].std()
    x = x.reshape(-1, 1, 8, 8)
    y = torch.tensor(y, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)
    x, y = x[perm], y[perm]
    return Data(x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:], 10)


def scaled(data: Data, scale: float, shift: float = 0.0) -> Data:
    """The same task with unnormalized inputs (x * scale + shift)."""
    return replace(data, x_train=data.x_train * scale + shift, x_val=data.x_val * scale + shift)


def mlp(d: int = 16, classes: int = 4, hidden: int = 64, depth: int = 2, act: type[nn.Module] = nn.ReLU,
        norm: type[nn.Module] | None = None, dropout: float = 0.0, out_act: nn.Module | None = None) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = d
    for _ in range(depth):
        layers.append(nn.Linear(width, hidden))
        if norm is not None:
            layers.append(norm(hidden))
        layers.append(act())
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = hidden
    layers.append(nn.Linear(width, classes))
    if out_act is not None:
        layers.append(out_act)
    return nn.Sequential(*layers)


def streamrec_mlp() -> nn.Sequential:
    """The StreamRec click-prediction MLP of case study 000: [128 -> 512 -> 256 -> 128 -> 64 -> 1]."""
    return nn.Sequential(
        nn.Linear(128, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
        nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 1),
    )


def init_weights(model: nn.Module, how: str, nonlinearity: str = "relu", std: float = 0.02,
                 bias: float = 0.0, skip_last: bool = False) -> nn.Module:
    """Re-initialize every Linear/Conv weight: he | xavier | normal(std); biases to `bias`.

    skip_last keeps PyTorch's default on the output layer: He there makes the logits large and the
    model confidently wrong at init (initial loss well above ln C).
    """
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    if skip_last:
        layers = layers[:-1]
    for m in layers:
        if how == "he":
            nn.init.kaiming_normal_(m.weight, nonlinearity=nonlinearity)
        elif how == "xavier":
            nn.init.xavier_uniform_(m.weight)
        elif how == "normal":
            nn.init.normal_(m.weight, std=std)
        else:
            raise ValueError(how)
        if m.bias is not None:
            nn.init.constant_(m.bias, bias)
    return model


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


def make_optimizer(params: list[nn.Parameter], optimizer: str, lr: float, momentum: float,
                   weight_decay: float) -> torch.optim.Optimizer:
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(optimizer)


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
    scheduler_per: str = "batch",
    every: int = 10,
    seed: int = 0,
    zero_grad: bool = True,
    train_mode: bool = True,
    accumulate: int = 1,
    clip: float | None = None,
    max_steps: int | None = None,
    drop_last: bool = True,
    grad_norm_every: int = 1,
    log_every_step: bool = True,
    log_epoch: bool = True,
    shuffle: bool = True,
    eval_for_validation: bool = True,
) -> "trainscope.store.run.Run":
    """Train for real, record with trainscope.watch, return the loaded run.

    Knobs for loop bugs: zero_grad=False (never reset .grad), train_mode=False (model.eval() in the
    loop, as in the document-classifier case study), scheduler_per="epoch"|"batch" (where
    scheduler.step() is called), accumulate=k (proper gradient accumulation over k micro-batches).
    Recording: grad_norm_every=1 records the global gradient norm at every step (the probe's default
    samples every 10th: too few for runs of a hundred steps); log_every_step=False logs only the
    epoch's mean training loss; log_epoch=False never tells the probe the epoch (as many loops do);
    shuffle=False feeds batches in dataset order; eval_for_validation=False validates in train mode.
    """
    torch.manual_seed(seed)
    crit = criterion or nn.CrossEntropyLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, optimizer, lr, momentum, weight_decay)
    n_batches = len(data.x_train) / batch_size
    steps_per_epoch = max(1, int(n_batches) if drop_last else math.ceil(n_batches))
    opt_steps_per_epoch = max(1, steps_per_epoch // accumulate)
    sched = scheduler(opt, epochs * opt_steps_per_epoch) if scheduler else None
    g = torch.Generator().manual_seed(seed)
    done = 0
    with trainscope.watch(model, run_dir, optimizer=opt, criterion=crit, scheduler=sched, every=every,
                          grad_norm_every=grad_norm_every) as probe:
        for epoch in range(1, epochs + 1):
            model.train() if train_mode else model.eval()
            perm = torch.randperm(len(data.x_train), generator=g) if shuffle else torch.arange(len(data.x_train))
            losses: list[torch.Tensor] = []
            for i in range(steps_per_epoch):
                idx = perm[i * batch_size : (i + 1) * batch_size]
                if zero_grad and i % accumulate == 0:
                    opt.zero_grad()
                loss = crit(model(data.x_train[idx]), data.y_train[idx])
                (loss / accumulate).backward()
                if (i + 1) % accumulate:
                    continue
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                opt.step()
                if sched is not None and scheduler_per == "batch":
                    sched.step()
                losses.append(loss.detach())
                if log_every_step:
                    probe.log(epoch=epoch if log_epoch else None, train_loss=loss.detach())
                done += 1
                if max_steps is not None and done >= max_steps:
                    break
            if not log_every_step and losses:
                probe.log(epoch=epoch if log_epoch else None, train_loss=torch.stack(losses).mean())
            if sched is not None and scheduler_per == "epoch":
                sched.step()
            if validate:
                if eval_for_validation:
                    model.eval()
                with torch.no_grad():
                    out = model(data.x_val)
                    val_loss = crit(out, data.y_val).item()
                    if out.dim() == 2 and out.shape[1] > 1:
                        val_acc = (out.argmax(1) == data.y_val).float().mean().item()
                    else:
                        val_acc = ((out > 0).float() == data.y_val).float().mean().item()
                probe.log(epoch=epoch if log_epoch else None, val_loss=val_loss, val_acc=val_acc)
            if max_steps is not None and done >= max_steps:
                break
    return trainscope.load_run(run_dir)


# ---------------------------------------------------------------------------------------------
# Named scenarios, trained once per test session.

_ROOT: Path | None = None
_CACHE: dict[str, "trainscope.store.run.Run"] = {}


def _root() -> Path:
    global _ROOT
    if _ROOT is None:
        _ROOT = Path(tempfile.mkdtemp(prefix="trainscope-runs-"))
        atexit.register(shutil.rmtree, _ROOT, True)
    return _ROOT


def _seq(d: int = 16, classes: int = 4) -> Data:
    return teacher_task(n=512, d=d, classes=classes, n_val=256)


def _he(model: nn.Module) -> nn.Module:
    return init_weights(model, "he", skip_last=True)


def outlier_regression_task(n: int = 512, d: int = 16, frac: float = 0.02, scale: float = 30.0) -> Data:
    """Regression y = sum of 4 features, where `frac` of the training inputs are `scale`x too large
    (a unit mix-up): MSE gradients of batches that hold one are hundreds of times larger."""
    data = teacher_task(n=n, d=d, n_val=128)
    g = torch.Generator().manual_seed(1)
    x = data.x_train.clone()
    x[torch.rand(len(x), generator=g) < frac] *= scale
    return Data(x, data.x_train[:, :4].sum(1, keepdim=True), data.x_val, data.x_val[:, :4].sum(1, keepdim=True), 1)


def _dead_bias_mlp() -> nn.Module:
    m = mlp(hidden=64, depth=2)
    _he(m)
    with torch.no_grad():
        m[2].bias.fill_(-6.0)  # the second hidden layer starts (and stays) switched off
    return m


def _nan_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Hand-written cross-entropy: log(softmax) underflows to log(0) = -inf once logits grow."""
    p = torch.softmax(out, dim=1)
    return -(torch.log(p[torch.arange(len(y)), y])).mean()


class NaiveCE(nn.Module):
    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _nan_loss(out, y)


def _biased_head() -> nn.Module:
    m = _he(mlp(hidden=64, depth=2))
    with torch.no_grad():
        m[-1].bias.copy_(torch.tensor([12.0, 0.0, 0.0, 0.0]))  # confidently class 0 at init
    return m


class LSTMTagger(nn.Module):
    """Token ids -> embedding -> LSTM -> class: integer inputs, recurrent weights."""

    def __init__(self, vocab: int = 50, hidden: int = 32, classes: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 16)
        self.lstm = nn.LSTM(16, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(x))
        return self.head(out[:, -1])


def token_task(n: int = 512, length: int = 10, vocab: int = 50, seed: int = 0, n_val: int = 128) -> Data:
    """Does token 7 occur in the sequence?"""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (n + n_val, length), generator=g)
    y = (x == 7).any(1).long()
    return Data(x[:n], y[:n], x[n:], y[n:], 2)


class ResidualMLP(nn.Module):
    """Pre-norm residual blocks (default init): the chain argument of init does not apply."""

    def __init__(self, d: int = 16, width: int = 64, blocks: int = 4, classes: int = 4) -> None:
        super().__init__()
        self.inp = nn.Linear(d, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
            for _ in range(blocks)
        )
        self.out = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for b in self.blocks:
            h = h + b(h)
        return self.out(h)


def bn_cnn(classes: int = 10) -> nn.Module:
    """Conv-BN-ReLU-pool x2 on (N, 1, 8, 8), PyTorch default init."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, classes),
    )


def _sched_onecycle(opt: torch.optim.Optimizer, total: int) -> object:
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=total)


def _sched_step5(opt: torch.optim.Optimizer, total: int) -> object:
    return torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.1)  # meant for epochs


def _sched_cosine_epochs(epochs: int) -> Callable[[torch.optim.Optimizer, int], object]:
    return lambda opt, total: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)


SCENARIOS: dict[str, Callable[[Path], "trainscope.store.run.Run"]] = {
    # ---- healthy runs of several architectures: no rule of theirs may fire
    "healthy-mlp": lambda p: train(p, _he(mlp(depth=3)), _seq(), epochs=6, every=5),
    "healthy-mlp-default-init": lambda p: train(p, mlp(depth=2), _seq(), epochs=6, every=5),
    "healthy-mlp-bn-dropout": lambda p: train(p, _he(mlp(depth=3, norm=nn.BatchNorm1d, dropout=0.2)), _seq(),
                                              epochs=6, every=5, optimizer="adamw", weight_decay=1e-2),
    "healthy-cnn": lambda p: train(p, small_cnn(), teacher_task(n=512, n_val=256, shape=(1, 4, 4)), epochs=6,
                                   every=5),
    "healthy-gru": lambda p: train(p, GRUClassifier(), sequence_task(n=512, n_val=256), epochs=6, every=5,
                                   lr=3e-3, clip=1.0),
    "healthy-transformer": lambda p: train(p, TinyTransformer(), sequence_task(n=1024, n_val=256), epochs=4,
                                           every=5, optimizer="adamw", lr=3e-3, weight_decay=1e-2),
    "healthy-sgd-onecycle": lambda p: train(p, _he(mlp(depth=3)), _seq(), epochs=6, every=5, optimizer="sgd",
                                            momentum=0.9, lr=3e-3, scheduler=_sched_onecycle),
    "healthy-sgd-cosine-epochs": lambda p: train(p, _he(mlp(depth=3)), _seq(), epochs=6, every=5, optimizer="sgd",
                                                 momentum=0.9, lr=0.05, scheduler=_sched_cosine_epochs(6),
                                                 scheduler_per="epoch"),
    "healthy-accumulation": lambda p: train(p, _he(mlp(depth=3)), _seq(), epochs=6, every=5, batch_size=16,
                                            accumulate=4),
    "healthy-bce-logits": lambda p: train(p, _he(streamrec_mlp()), click_task(n=512), epochs=4, every=5,
                                          criterion=nn.BCEWithLogitsLoss()),
    "healthy-lstm-tokens": lambda p: train(p, LSTMTagger(), token_task(), epochs=5, every=5, lr=3e-3, clip=1.0),
    "healthy-residual-mlp": lambda p: train(p, ResidualMLP(), teacher_task(n=1024, n_val=256), epochs=4, every=5,
                                            optimizer="adamw", weight_decay=1e-2),
    "healthy-bn-cnn": lambda p: train(p, bn_cnn(), digits_task(), epochs=3, every=5, optimizer="sgd", lr=0.05,
                                      momentum=0.9,
                                      scheduler=lambda o, t: torch.optim.lr_scheduler.StepLR(o, step_size=2),
                                      scheduler_per="epoch"),
    "healthy-tanh-xavier": lambda p: train(p, init_weights(mlp(depth=4, act=nn.Tanh), "xavier", skip_last=True),
                                           _seq(), epochs=5, every=5),
    "healthy-sigmoid-bce": lambda p: train(p, _he(streamrec_mlp()).append(nn.Sigmoid()), click_task(n=512),
                                           epochs=4, every=5, criterion=nn.BCELoss()),
    "healthy-plain-sgd": lambda p: train(p, _he(mlp(depth=2)), _seq(), epochs=6, every=5, optimizer="sgd", lr=0.05),
    "healthy-cosine-per-batch": lambda p: train(
        p, _he(mlp(depth=2)), _seq(), epochs=6, every=5, optimizer="sgd", lr=0.1, momentum=0.9,
        scheduler=lambda o, t: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=t)),
    "healthy-bn-tail-batch": lambda p: train(p, _he(mlp(depth=2, norm=nn.BatchNorm1d)),
                                             teacher_task(n=515, n_val=128), epochs=3, batch_size=64, every=5,
                                             drop_last=False),
    "healthy-regression": lambda p: train(p, _he(mlp(depth=2, classes=1)),
                                          outlier_regression_task(frac=0.0), epochs=4, every=5,
                                          criterion=nn.MSELoss()),
    # ---- gradients
    "deep-sigmoid": lambda p: train(p, mlp(hidden=64, depth=6, act=nn.Sigmoid), _seq(), epochs=4, every=5,
                                    optimizer="sgd", lr=0.05),
    "sgd-lr-2": lambda p: train(p, _he(mlp(depth=3)), _seq(), epochs=2, every=5, optimizer="sgd", lr=2.0),
    "outlier-regression": lambda p: train(p, _he(mlp(depth=2, classes=1)), outlier_regression_task(), epochs=4,
                                          batch_size=16, every=5, criterion=nn.MSELoss(), validate=False),
    "dead-relu-bias": lambda p: train(p, _dead_bias_mlp(), _seq(), epochs=5, every=5),
    "nan-loss": lambda p: train(p, _he(mlp(depth=2)), _seq(), epochs=3, every=5, optimizer="sgd", lr=20.0,
                                criterion=NaiveCE()),
    # ---- activations
    "saturated-tanh": lambda p: train(p, mlp(depth=3, act=nn.Tanh), scaled(_seq(), 30.0), epochs=4, every=5,
                                      optimizer="sgd", lr=1e-2),
    "collapsed-tiny-init": lambda p: train(p, init_weights(mlp(hidden=64, depth=5), "normal", std=1e-3), _seq(),
                                           epochs=3, every=5, optimizer="sgd", lr=1e-2),
    # ---- initialization (StreamRec)
    "streamrec-default": lambda p: train(p, streamrec_mlp(), click_task(n=512), epochs=3, every=5,
                                         criterion=nn.BCEWithLogitsLoss()),
    "mlp3-default-init": lambda p: train(p, mlp(depth=3), _seq(), epochs=3, every=5),
    "streamrec-xavier": lambda p: train(p, init_weights(streamrec_mlp(), "xavier"), click_task(n=512), epochs=3,
                                        every=5, criterion=nn.BCEWithLogitsLoss()),
    # ---- learning rate
    "lr-high-adam": lambda p: train(p, _he(mlp(depth=3)), _seq(), epochs=4, every=5, lr=0.5),
    "lr-low-sgd": lambda p: train(p, _he(mlp(depth=3)), _seq(), epochs=4, every=5, optimizer="sgd", lr=1e-5),
    # ---- loop and wiring bugs
    "softmax-ce": lambda p: train(p, _he(mlp(depth=2, out_act=nn.Softmax(dim=1))), _seq(), epochs=3, every=5),
    "sigmoid-bcelogits": lambda p: train(p, _he(streamrec_mlp()).append(nn.Sigmoid()), click_task(n=512), epochs=2,
                                         every=5, criterion=nn.BCEWithLogitsLoss()),
    "logsoftmax-ce": lambda p: train(p, _he(mlp(depth=2, out_act=nn.LogSoftmax(dim=1))), _seq(), epochs=2, every=5),
    "softmax-nll": lambda p: train(p, _he(mlp(depth=2, out_act=nn.Softmax(dim=1))), _seq(), epochs=2, every=5,
                                   criterion=nn.NLLLoss()),
    "logsoftmax-nll": lambda p: train(p, _he(mlp(depth=2, out_act=nn.LogSoftmax(dim=1))), _seq(), epochs=3,
                                      every=5, criterion=nn.NLLLoss()),
    "eval-mode": lambda p: train(p, _he(mlp(depth=2, dropout=0.3)), _seq(), epochs=3, every=5, train_mode=False),
    "no-zero-grad": lambda p: train(p, _he(mlp(depth=2)), _seq(), epochs=3, every=5, optimizer="sgd", lr=1e-2,
                                    zero_grad=False),
    "adam-weight-decay": lambda p: train(p, _he(mlp(depth=2)), _seq(), epochs=2, every=5, weight_decay=1e-4),
    "onecycle-per-epoch": lambda p: train(p, _he(mlp(depth=3)), _seq(), epochs=6, every=5, optimizer="sgd",
                                          momentum=0.9, scheduler=_sched_onecycle, scheduler_per="epoch"),
    "steplr-per-batch": lambda p: train(p, _he(mlp(depth=3)), _seq(), epochs=4, every=5, optimizer="sgd",
                                        momentum=0.9, lr=0.05, scheduler=_sched_step5),
    "bn-batch-4": lambda p: train(p, _he(mlp(depth=2, norm=nn.BatchNorm1d)), _seq(), epochs=1, batch_size=4,
                                  every=10),
    "dropout-then-bn": lambda p: train(p, _he(nn.Sequential(nn.Linear(16, 64), nn.Dropout(0.3), nn.BatchNorm1d(64),
                                                            nn.ReLU(), nn.Linear(64, 4))), _seq(), epochs=3, every=5),
    "biased-head": lambda p: train(p, _biased_head(), _seq(), epochs=3, every=5),
    "raw-scale-inputs": lambda p: train(p, _he(mlp(depth=2)), scaled(_seq(), 80.0, 120.0), epochs=3, every=5),
    # ---- the same bugs on other architectures (labelled runs for the confusion table)
    "cnn-no-zero-grad": lambda p: train(p, small_cnn(), teacher_task(n=512, n_val=128, shape=(1, 4, 4)), epochs=3,
                                        every=5, optimizer="sgd", lr=1e-2, zero_grad=False),
    "bn-cnn-eval-mode": lambda p: train(p, bn_cnn(), digits_task(), epochs=1, every=5, train_mode=False,
                                        max_steps=40),
    "cnn-softmax-ce": lambda p: train(p, nn.Sequential(small_cnn(), nn.Softmax(dim=1)),
                                      teacher_task(n=512, n_val=128, shape=(1, 4, 4)), epochs=3, every=5),
    "transformer-lr-low": lambda p: train(p, TinyTransformer(), sequence_task(n=256, n_val=64), epochs=4, every=5,
                                          lr=1e-7),
    "cnn-lr-high": lambda p: train(p, small_cnn(), teacher_task(n=512, n_val=128, shape=(1, 4, 4)), epochs=3,
                                   every=5, lr=1.0),
    "gru-adam-wd": lambda p: train(p, GRUClassifier(), sequence_task(n=256, n_val=64), epochs=3, every=5, lr=3e-3,
                                   weight_decay=1e-3, clip=1.0),
    "mlp-raw-digits": lambda p: train(p, nn.Sequential(nn.Flatten(), _he(mlp(d=64, classes=10, depth=2))),
                                      digits_task(raw=True), epochs=2, every=5),
    "lstm-onecycle-per-epoch": lambda p: train(p, LSTMTagger(), token_task(), epochs=5, every=5, optimizer="sgd",
                                               momentum=0.9, scheduler=_sched_onecycle, scheduler_per="epoch"),
    "bn-cnn-batch-2": lambda p: train(p, bn_cnn(), digits_task(), epochs=1, batch_size=2, every=10, max_steps=60),
    "mse-sgd-lr-high": lambda p: train(p, _he(mlp(depth=3, classes=1)), outlier_regression_task(frac=0.0), epochs=2,
                                       every=5, optimizer="sgd", lr=0.2, criterion=nn.MSELoss(), validate=False),
    "sigmoid-big-init": lambda p: train(p, init_weights(mlp(depth=3, act=nn.Sigmoid), "normal", std=2.0,
                                                        skip_last=True), _seq(), epochs=3, every=5),
    "deep-tanh-tiny-init": lambda p: train(p, init_weights(mlp(depth=6, act=nn.Tanh), "normal", std=0.01), _seq(),
                                           epochs=3, every=5, optimizer="sgd", lr=0.05),
}


HEALTHY = tuple(n for n in SCENARIOS if n.startswith("healthy-"))

# What is truly wrong in each scenario, for the gradient/activation/init/LR/loop rules (TS2-TS6):
# checked by hand against the run's own numbers, not copied from the detectors' output. Symptoms
# that are really there count (the first layer of a net with a dead layer does get no gradient).
LABELS: dict[str, set[str]] = {
    **{n: set() for n in HEALTHY},
    "healthy-bn-tail-batch": {"batchnorm-small-batch"},  # the 3-sample last batch (info, drop_last)
    "deep-sigmoid": {"poor-initialization", "vanishing-gradients", "no-normalization-deep-stack"},
    "sgd-lr-2": {"lr-too-high", "exploding-gradients", "nan-or-inf"},
    "outlier-regression": {"unstable-gradients"},
    "dead-relu-bias": {"dead-relu", "vanishing-gradients", "collapsed-activations"},
    "nan-loss": {"nan-or-inf", "lr-too-high"},
    "saturated-tanh": {"saturated-activations", "unnormalized-inputs"},
    "collapsed-tiny-init": {"poor-initialization", "collapsed-activations", "vanishing-gradients", "dead-relu",
                            "no-normalization-deep-stack"},
    "streamrec-default": {"poor-initialization"},
    "streamrec-xavier": {"poor-initialization"},
    "mlp3-default-init": {"poor-initialization"},  # 3 hidden layers at 1/6 of He: info, not a warning
    "lr-high-adam": {"lr-too-high", "dead-relu", "unstable-gradients", "vanishing-gradients"},
    "lr-low-sgd": {"lr-too-low"},
    "softmax-ce": {"softmax-before-cross-entropy"},
    "sigmoid-bcelogits": {"output-activation-mismatch"},
    "logsoftmax-ce": {"output-activation-mismatch"},
    "softmax-nll": {"output-activation-mismatch", "initial-loss-mismatch"},  # NLL of probabilities: L0 < 0
    "logsoftmax-nll": set(),
    "eval-mode": {"eval-mode-during-training"},
    "no-zero-grad": {"missing-zero-grad"},
    "adam-weight-decay": {"adam-l2-weight-decay"},
    "onecycle-per-epoch": {"scheduler-step-cadence"},
    "steplr-per-batch": {"scheduler-step-cadence"},
    "bn-batch-4": {"batchnorm-small-batch"},
    "dropout-then-bn": {"dropout-before-batchnorm"},
    "biased-head": {"initial-loss-mismatch"},
    "raw-scale-inputs": {"unnormalized-inputs", "initial-loss-mismatch"},
    "cnn-no-zero-grad": {"missing-zero-grad"},
    "bn-cnn-eval-mode": {"eval-mode-during-training"},
    "cnn-softmax-ce": {"softmax-before-cross-entropy"},
    "transformer-lr-low": {"lr-too-low"},
    # Adam at lr 1 kills the ReLU after conv2 (100% dead: std 0, no gradient below it) and makes the
    # grad norm jump
    "cnn-lr-high": {"lr-too-high", "dead-relu", "collapsed-activations", "vanishing-gradients",
                    "unstable-gradients"},
    "gru-adam-wd": {"adam-l2-weight-decay"},
    "mlp-raw-digits": {"unnormalized-inputs", "initial-loss-mismatch"},
    "lstm-onecycle-per-epoch": {"scheduler-step-cadence"},
    "bn-cnn-batch-2": {"batchnorm-small-batch"},
    "deep-tanh-tiny-init": {"poor-initialization", "vanishing-gradients", "collapsed-activations",
                            "no-normalization-deep-stack"},
    # MSE + SGD 0.2: grad norm 15 -> 529 -> 1.6e5 -> 3e11 -> NaN in four steps
    "mse-sgd-lr-high": {"lr-too-high", "exploding-gradients", "nan-or-inf"},
    "sigmoid-big-init": {"poor-initialization", "saturated-activations"},
}


def scenario(name: str) -> "trainscope.store.run.Run":
    """The recorded run of a named scenario, trained on first use and cached for the session."""
    if name not in _CACHE:
        torch.manual_seed(0)  # the model is built before train() seeds: make its init independent of test order
        _CACHE[name] = SCENARIOS[name](_root() / name)
    return _CACHE[name]


_FINDINGS: dict[tuple, dict] = {}


def findings(run: "trainscope.store.run.Run", select: list[str] | None = None,
             settings: dict | None = None) -> dict:
    """{rule name: first finding} from the engine (a crashed detector fails the test).

    Diagnoses of cached scenarios are cached too (keyed by run directory and selection)."""
    from trainscope.rules.engine import diagnose_report

    key = (str(run.path), tuple(select or ()))
    cacheable = settings is None and _CACHE.get(Path(run.path).name) is run
    if cacheable and key in _FINDINGS:
        return dict(_FINDINGS[key])
    report = diagnose_report(run, select=select, settings=settings)
    assert not report.crashed, [(c.name, c.error) for c in report.crashed]
    out: dict = {}
    for f in report.findings:
        out.setdefault(f.name, f)
    if cacheable:
        _FINDINGS[key] = dict(out)
    return out


def confusion_table(families: tuple[str, ...] = ("TS2", "TS3", "TS4", "TS5", "TS6")) -> str:
    """Per rule over the labelled scenarios: detected / missed / false alarms (a text table).

    cd tests && python -c "import helpers_training as h; print(h.confusion_table())"
    """
    from trainscope.rules.catalogue import load_catalogue

    rules = [r for r in load_catalogue().values() if r.code.startswith(families)]
    counts = {r.name: [0, 0, 0] for r in rules}
    for name, truth in LABELS.items():
        found = set(findings(scenario(name), select=list(families)))
        for rule in counts:
            if rule in truth and rule in found:
                counts[rule][0] += 1
            elif rule in truth:
                counts[rule][1] += 1
            elif rule in found:
                counts[rule][2] += 1
    lines = [f"{len(LABELS)} labelled runs ({sum(1 for t in LABELS.values() if not t)} with no fault of these families)",
             f"{'rule':32s} {'code':6s} {'detected':>8s} {'missed':>6s} {'false alarms':>12s}"]
    for r in rules:
        d, m, fa = counts[r.name]
        lines.append(f"{r.name:32s} {r.code:6s} {d:8d} {m:6d} {fa:12d}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# nanoGPT-style loop (issue 8): hand-written warmup + cosine (param_group['lr'] set by the loop, no
# scheduler given to the probe), AdamW, clip_grad_norm_(1.0), a tiny causal transformer LM.

class _Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        mask = torch.triu(torch.ones(t, t, dtype=torch.bool), 1)
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    def __init__(self, vocab: int = 32, d: int = 32, length: int = 16, n_layer: int = 2) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(length, d)
        self.blocks = nn.Sequential(*[_Block(d) for _ in range(n_layer)])
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        return self.head(self.ln(self.blocks(x)))


def nanogpt_train(run_dir: str | Path, lr: float = 3e-3, iters: int = 80, warmup: int = 20,
                  clip: float | None = 1.0, every: int = 5) -> "trainscope.store.run.Run":
    """nanoGPT's loop in miniature: get_lr(it) written into each param group, F.cross_entropy,
    zero_grad(set_to_none), clip, step. The data is a noisy periodic token stream (learnable)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    base = (torch.arange(4000) % 7 + (torch.arange(4000) // 7 % 3) * 7) % 32
    data = torch.where(torch.rand(4000, generator=g) < 0.1, torch.randint(0, 32, (4000,), generator=g), base)
    model = TinyGPT()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)

    def get_lr(it: int) -> float:
        if it < warmup:
            return lr * (it + 1) / (warmup + 1)
        r = (it - warmup) / max(1, iters - warmup)
        return lr * 0.1 + 0.5 * (1 + math.cos(math.pi * r)) * lr * 0.9

    with trainscope.watch(model, run_dir, optimizer=opt, every=every) as probe:
        for it in range(iters):
            for pg in opt.param_groups:
                pg["lr"] = get_lr(it)
            ix = torch.randint(0, 4000 - 17, (16,), generator=g)
            x = torch.stack([data[i:i + 16] for i in ix])
            y = torch.stack([data[i + 1:i + 17] for i in ix])
            loss = nn.functional.cross_entropy(model(x).view(-1, 32), y.view(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            probe.log(train_loss=loss.detach())
    return trainscope.load_run(run_dir)


def detail_of(run: "trainscope.store.run.Run", kind: str) -> dict:
    """The JSON detail of the first event of `kind` ({} when none)."""
    import json

    ev = run.events[run.events["kind"] == kind]
    return json.loads(ev.iloc[0]["detail"] or "{}") if len(ev) else {}
