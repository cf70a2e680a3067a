"""Robust curve helpers for detectors: pure functions over pandas Series (index = step).

Minibatch losses are noisy, logs have NaN gaps and thousands of points, and a loss can be any
scale (BCE ~0.7, CE ~ln C, MSE anything). So: smooth with rolling medians whose windows are a
fraction of the run, compare levels relatively, and never trust a single point.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from trainscope.store.run import Run

TRAIN_LOSS_NAMES = ("train_loss", "loss", "train/loss", "training_loss", "train_loss_step", "train_loss_epoch")
VAL_LOSS_NAMES = ("val_loss", "validation_loss", "val/loss", "valid_loss", "eval_loss", "val_loss_epoch")
TRAIN_ACC_NAMES = ("train_acc", "acc", "accuracy", "train_accuracy", "train/acc")
VAL_ACC_NAMES = ("val_acc", "val_accuracy", "validation_accuracy", "val/acc", "eval_accuracy")
VALIDATION_PREFIXES = ("val_", "val/", "valid", "validation", "eval_", "eval/")


def is_validation_name(name: str) -> bool:
    return str(name).lower().startswith(VALIDATION_PREFIXES)


def has_validation(run: Run) -> bool:
    return any(is_validation_name(n) for n in run.scalar_names())


def first_series(run: Run, names: tuple[str, ...]) -> pd.Series | None:
    """The first of `names` the run logged with at least one value (NaN/Inf kept)."""
    present = set(run.scalar_names())
    for name in names:
        if name in present:
            s = run.scalar(name).astype(float)
            if len(s):
                return s
    return None


def finite(s: pd.Series) -> pd.Series:
    return s[np.isfinite(s.to_numpy(dtype=float))]


def window(n: int, frac: float = 0.05, lo: int = 3, hi: int = 501) -> int:
    """An odd window length of about `frac` of `n` points, clamped to [lo, hi]."""
    w = int(round(n * frac))
    w = max(lo, min(hi, w))
    return w if w % 2 else w + 1


def rolling_median(s: pd.Series, w: int) -> pd.Series:
    """Centered rolling median; edges use the points available."""
    return s.rolling(w, center=True, min_periods=1).median()


def smooth(s: pd.Series, frac: float = 0.05) -> pd.Series:
    """Robust smoothing of a noisy curve: rolling median (kills spikes) then a light rolling mean."""
    s = finite(s)
    if len(s) < 5:
        return s
    w = window(len(s), frac)
    return rolling_median(s, w).rolling(max(1, w // 2) | 1, center=True, min_periods=1).mean()


def head_level(s: pd.Series, frac: float = 0.05, lo: int = 1) -> float:
    """Robust initial level: median of the first `frac` of finite points."""
    s = finite(s)
    k = max(lo, int(round(len(s) * frac)))
    return float(np.median(s.to_numpy()[:k]))


def tail_level(s: pd.Series, frac: float = 0.05, lo: int = 1) -> float:
    s = finite(s)
    k = max(lo, int(round(len(s) * frac)))
    return float(np.median(s.to_numpy()[-k:]))


def block_medians(s: pd.Series, size: int) -> pd.Series:
    """Median of consecutive blocks of `size` points, indexed by the block's last step."""
    v = s.to_numpy(dtype=float)
    n = len(v) // size
    if n == 0:
        return pd.Series(dtype=float)
    idx = s.index.to_numpy()[size - 1 : n * size : size]
    return pd.Series(np.median(v[: n * size].reshape(n, size), axis=1), index=idx)


def rel(a: float, b: float, eps: float = 1e-12) -> float:
    """(a - b) / |b|: relative change from b to a."""
    return (a - b) / max(abs(b), eps)


@dataclass(frozen=True)
class EvalCurve:
    """Validation points with the training loss over the same stretch of training.

    labels: the epoch as logged (or 1..n when epochs are unknown); steps: the step of each point;
    val: validation loss; train: mean training loss since the previous validation point (NaN if none).
    """

    labels: np.ndarray
    steps: np.ndarray
    val: np.ndarray
    train: np.ndarray
    per_epoch: bool

    def __len__(self) -> int:
        return len(self.val)

    def label(self, i: int) -> int | float:
        x = self.labels[i]
        return int(x) if float(x).is_integer() else float(x)


def eval_curve(run: Run, val_names: tuple[str, ...] = VAL_LOSS_NAMES) -> EvalCurve | None:
    """Validation loss per evaluation, aligned with the training loss; None without validation loss."""
    df = run.scalars
    for name in val_names:
        rows = df[df["name"] == name]
        if "rank" in rows and (rows["rank"] == 0).any():
            rows = rows[rows["rank"] == 0]
        rows = rows[np.isfinite(rows["value"].to_numpy(dtype=float))]
        if rows.empty:
            continue
        rows = rows.drop_duplicates("step", keep="last").sort_values("step")
        steps = rows["step"].to_numpy()
        val = rows["value"].to_numpy(dtype=float)
        epochs = rows["epoch"].to_numpy(dtype=float) if "epoch" in rows else np.full(len(rows), np.nan)
        per_epoch = bool(np.isfinite(epochs).all())
        labels = epochs if per_epoch else np.arange(1, len(rows) + 1, dtype=float)
        train = np.full(len(rows), np.nan)
        t = first_series(run, TRAIN_LOSS_NAMES)
        if t is not None:
            t = finite(t)
            tsteps, tvals = t.index.to_numpy(), t.to_numpy()
            prev = -np.inf
            for i, s in enumerate(steps):
                m = (tsteps > prev) & (tsteps <= s)
                if m.any():
                    train[i] = float(np.mean(tvals[m]))
                prev = s
        return EvalCurve(labels, steps, val, train, per_epoch)
    return None


def n_epochs(run: Run) -> int | None:
    """Number of distinct epochs seen in the scalars (None if epochs were never logged)."""
    e = run.scalars["epoch"].to_numpy(dtype=float) if "epoch" in run.scalars else np.array([])
    e = e[np.isfinite(e)]
    # fractional epochs (Hugging Face logs 0.1, 0.2, ...) count the epochs they fall in
    return int(len(np.unique(np.ceil(e)))) if len(e) else None


def lr_value(run: Run) -> float | None:
    """The run's learning rate as fixes quote it: the PEAK, never the first warmup value.

    The largest finite value of the recorded LR traces (lr/<group>, lr, learning_rate), or the
    largest `max_lr` / `initial_lr` of the optimizer's param groups (meta) when that is larger (a
    OneCycle run cut short never reaches max_lr), else the optimizer's `lr` from meta."""
    best = None
    df = run.scalars
    if not df.empty:
        rows = df[df["name"].astype(str).str.match(r"^(lr/\d+|lr|learning_rate)$")]
        vals = rows["value"].to_numpy(dtype=float)
        vals = vals[np.isfinite(vals) & (vals > 0)]
        if len(vals):
            best = float(vals.max())
    opt = run.meta.get("optimizer") or {}
    for g in opt.get("param_groups") or []:
        if not isinstance(g, dict):
            continue
        for key in ("max_lr", "initial_lr"):
            v = _pos(g.get(key))
            if v is not None and (best is None or v > best):
                best = v
    if best is not None:
        return best
    lr = _pos((opt.get("defaults") or {}).get("lr"))
    if lr is None and opt.get("param_groups"):
        g0 = opt["param_groups"][0]
        lr = _pos(g0.get("lr")) if isinstance(g0, dict) else None
    return lr


def _pos(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if np.isfinite(v) and v > 0 else None
