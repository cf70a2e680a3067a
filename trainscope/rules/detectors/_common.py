"""Small helpers shared by the gradient, activation, init, LR and loop detectors.

Pure functions over the run's frames: select the rows a rule needs (or say why it cannot run),
format numbers for messages, and read the optimizer and loss facts several rules quote.
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from trainscope.numbers import fmt, sig1  # noqa: F401 (re-exported for the detectors)
from trainscope.rules.registry import NotApplicable
from trainscope.rules.signals import lr_value
from trainscope.store.run import Run

# Layers whose weights are not a "compute" weight: their gradient/update scale says nothing about
# depth-wise gradient flow (norm affine params sit near 1, embedding rows are updated sparsely).
NORM_PREFIXES = ("BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm", "LocalResponseNorm", "RMSNorm",
                 "SyncBatchNorm")
NON_COMPUTE = NORM_PREFIXES + ("Embedding", "EmbeddingBag")
LOSS_NAMES = ("train_loss", "loss", "train/loss", "training_loss", "train_loss_step")


def layer_name(name: Any) -> str:
    """A layer as a message names it: 'layer 3' for nn.Sequential's numeric names, the module path
    otherwise, 'the model' for the root module."""
    n = str(name)
    if n == "":
        return "the model"
    return f"layer {n}" if n.isdigit() else n


def is_norm(module_type: str) -> bool:
    return str(module_type).startswith(NORM_PREFIXES)


def is_compute(module_type: str) -> bool:
    return not str(module_type).startswith(NON_COMPUTE)


def compute_mask(module_types: pd.Series) -> pd.Series:
    """`module_types.map(is_compute)`, deciding once per distinct type (a big run has millions of rows)."""
    return module_types.map({t: is_compute(t) for t in pd.unique(module_types)}).astype(bool)


def layer_rows(run: Run, kind: str) -> pd.DataFrame:
    """Rows of one kind (grad/activation/weight/update) on rank 0, or NotApplicable.

    Selected once per run and kind (several rules ask; on a 10M-row run each selection costs
    seconds); the detectors only read the frame they get."""
    df = run.layers
    if df.empty:
        raise NotApplicable("no layer statistics")
    cache = run.__dict__.setdefault("_layer_rows_cache", {})
    hit = cache.get(kind)
    if hit is not None and hit[0] is df:
        sel = hit[1]
    else:
        sel = df[df["kind"] == kind]
        if "rank" in sel and (sel["rank"] == 0).any():
            sel = sel[sel["rank"] == 0]
        cache[kind] = (df, sel)
    if sel.empty:
        raise NotApplicable(f"no {kind} statistics recorded")
    return sel


def pivot(df: pd.DataFrame, stat: str) -> pd.DataFrame:
    """step x layer table of one statistic (the mean of duplicates), layers in forward order.

    The same table as `df.pivot_table(index="step", columns="layer", values=stat, aggfunc="mean")`
    (steps ascending, all-NaN rows and columns dropped), built with numpy: pivot_table's groupby
    was the slowest part of diagnosing a big run."""
    order = df.groupby("layer")["order"].min().sort_values(kind="stable")
    steps, si = np.unique(df["step"].to_numpy(), return_inverse=True)
    li, layers = pd.factorize(df["layer"], sort=False)
    vals = df[stat].to_numpy(dtype=np.float64, na_value=np.nan)
    ok = ~np.isnan(vals) & (li >= 0)
    n_l = len(layers)
    cell = si[ok] * n_l + li[ok]
    cnt = np.bincount(cell, minlength=len(steps) * n_l).reshape(len(steps), n_l)
    with np.errstate(invalid="ignore", divide="ignore"):
        # sum finite values with bincount; +-inf separately so that inf - inf stays NaN like pandas' mean
        v = vals[ok]
        fin = np.isfinite(v)
        total = np.bincount(cell[fin], weights=v[fin], minlength=len(steps) * n_l).reshape(len(steps), n_l)
        for sign in (1.0, -1.0):
            hit = np.bincount(cell[v == sign * np.inf], minlength=len(steps) * n_l).reshape(len(steps), n_l) > 0
            total = np.where(hit, total + sign * np.inf, total)
        mean = np.where(cnt > 0, total / np.maximum(cnt, 1), np.nan)
    keep_rows, keep_cols = cnt.any(axis=1), cnt.any(axis=0)
    table = pd.DataFrame(mean[keep_rows][:, keep_cols], index=pd.Index(steps[keep_rows], name="step"),
                         columns=pd.Index(np.asarray(layers)[keep_cols], name="layer"))
    return table[[c for c in order.index if c in table.columns]]


def step_span(index: Any) -> tuple[int, int]:
    steps = [int(s) for s in index]
    return (min(steps), max(steps))


def longest_run(mask: np.ndarray) -> tuple[int, int]:
    """(start, length) of the longest run of True values."""
    best, best_start, cur, start = 0, 0, 0, 0
    for i, m in enumerate(mask):
        if m:
            if cur == 0:
                start = i
            cur += 1
            if cur > best:
                best, best_start = cur, start
        else:
            cur = 0
    return best_start, best


def train_loss(run: Run) -> pd.Series:
    """The training loss by step (first of the usual names that exists), NaN-free order kept."""
    names = set(run.scalar_names())
    for name in LOSS_NAMES:
        if name in names:
            return run.scalar(name)
    return pd.Series(dtype=float)


def optimizer_meta(run: Run) -> dict[str, Any]:
    return run.meta.get("optimizer") or {}


current_lr = lr_value  # one definition of the run's learning rate, shared with the loss rules


def detail(row: pd.Series) -> dict[str, Any]:
    """An event's JSON detail as a dict ({} when empty or malformed)."""
    raw = row.get("detail")
    if raw is None or (isinstance(raw, float) and math.isnan(raw)) or raw == "":
        return {}
    try:
        out = json.loads(raw)
    except (TypeError, ValueError):
        return {}
    return out if isinstance(out, dict) else {}


def events(run: Run, kind: str) -> pd.DataFrame:
    ev = run.events
    if ev.empty:
        return ev
    ev = ev[ev["kind"] == kind]
    if "rank" in ev and (ev["rank"] == 0).any():
        ev = ev[ev["rank"] == 0]
    return ev.sort_values("step", kind="stable")


def modules(run: Run) -> list[dict[str, Any]]:
    """meta.model.modules, in forward order where known (registration order otherwise)."""
    mods = list((run.meta.get("model") or {}).get("modules") or [])
    keyed = [(m.get("order", -1) if (m.get("order", -1) or -1) >= 0 else 10**9 + i, i, m) for i, m in enumerate(mods)]
    return [m for _, _, m in sorted(keyed, key=lambda t: (t[0], t[1]))]

