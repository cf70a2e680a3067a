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
    """`module_types.map(is_compute)`, deciding once per distinct type and looking the answer up by
    the type's code (a big run has millions of rows; `.map` over them took seconds)."""
    codes, types = pd.factorize(module_types)
    answer = np.array([is_compute(t) for t in types] + [is_compute(pd.NA)], dtype=bool)
    return pd.Series(answer[codes], index=module_types.index, name=module_types.name)  # code -1 (NA): last


def layer_rows(run: Run, kind: str) -> pd.DataFrame:
    """Rows of one kind (grad/activation/weight/update) on rank 0, or NotApplicable.

    Selected once per run and kind (several rules ask; on a 10M-row run each selection costs a
    second); the detectors only read the frame they get. A rule that reads a few columns masks
    them with `kind_mask` instead: cheaper than copying all columns of millions of rows."""
    mask = kind_mask(run, kind)
    if np.array_equal(mask, all_ranks_mask(run, kind)):  # every row of the kind is rank 0: the same frame
        return kind_rows(run, kind)
    return _cached(run, ("rank0", kind), lambda: run.layers[mask])


def kind_mask(run: Run, kind: str) -> np.ndarray:
    """`layer_rows(run, kind)` as a boolean mask over `run.layers` (NotApplicable the same way):
    the kind's rows, only rank 0's where rank 0 has some."""
    if run.layers.empty:
        raise NotApplicable("no layer statistics")

    def make() -> np.ndarray:
        mask = all_ranks_mask(run, kind)
        if "rank" in run.layers:
            rank0 = mask & (run.layers["rank"] == 0).to_numpy()
            if rank0.any():
                mask = rank0
        return mask

    mask = _cached(run, ("rank0 mask", kind), make)
    if not mask.any():
        raise NotApplicable(f"no {kind} statistics recorded")
    return mask


def all_ranks_mask(run: Run, kind: str) -> np.ndarray:
    """Mask of the kind's rows, every rank (a missing kind, NA, is no kind, as in pandas' masks)."""
    def make() -> np.ndarray:  # `(run.layers["kind"] == kind)`, NA False, compared by code (no string compares)
        codes, kinds = run.codes("layers", "kind")
        return codes == kinds.get_loc(kind) if kind in kinds else np.zeros(len(codes), dtype=bool)

    return _cached(run, ("mask", kind), make)


def kind_rows(run: Run, kind: str) -> pd.DataFrame:
    """`run.layers[run.layers["kind"] == kind]` (every rank), selected once per run and kind."""
    return _cached(run, ("all", kind), lambda: run.layers[all_ranks_mask(run, kind)])


def types_where(run: Run, keep: Any, na: bool) -> np.ndarray:
    """`keep(module_type)` for every row of `run.layers` (`na` where the type is missing), decided
    once per distinct type; the types are factorized once per run (`Run.codes`)."""
    codes, types = run.codes("layers", "module_type")
    return np.array([bool(keep(t)) for t in types] + [na], dtype=bool)[codes]  # code -1 (NA): last


def compute_rows(run: Run) -> np.ndarray:
    """`compute_mask(run.layers["module_type"])` as a numpy mask, computed once per run."""
    return _cached(run, ("compute",), lambda: types_where(run, is_compute, na=is_compute(pd.NA)))


def _cached(run: Run, key: tuple, make: Any) -> Any:
    """`make()`, computed once per run while `run.layers` is the same frame. On a 10M-row run each
    selection costs a second or so and several rules ask for the same one; callers only read it."""
    cache = run.__dict__.setdefault("_layer_rows_cache", {})
    hit = cache.get(key)
    if hit is None or hit[0] is not run.layers:
        hit = cache[key] = (run.layers, make())
    return hit[1]


def compute_grad_norms(run: Run) -> pd.DataFrame:
    """step x layer gradient norms (rank 0) of the compute layers that ran (order >= 0), layers
    with no value dropped: the gradient-flow table of vanishing/exploding gradients and of the
    deep-stack rule (computed once)."""
    def make() -> pd.DataFrame:
        rows = kind_mask(run, "grad") & compute_rows(run) & (run.layers["order"] >= 0).to_numpy()
        return pivot(run.layers, "norm", rows=rows, codes=layer_codes(run)).dropna(axis=1, how="all")

    return _cached(run, ("compute_grad_norms",), make)


def layer_codes(run: Run) -> tuple[np.ndarray, Any]:
    """`pd.factorize(run.layers["layer"])`, once per run (for `pivot`'s `codes`; `Run.codes`)."""
    return run.codes("layers", "layer")


def pivot(df: pd.DataFrame, stat: str, rows: pd.Series | np.ndarray | None = None,
          codes: tuple[np.ndarray, Any] | None = None) -> pd.DataFrame:
    """step x layer table of one statistic (the mean of duplicates), layers in forward order.

    The same table as `df.pivot_table(index="step", columns="layer", values=stat, aggfunc="mean")`
    (steps ascending, all-NaN rows and columns dropped), built with numpy: pivot_table's groupby
    was the slowest part of diagnosing a big run. `rows` (a boolean mask of df's rows) gives the
    table of `df[rows]` without copying the whole frame: only the four columns read are masked.
    `codes`: `pd.factorize(df["layer"])` when the caller has it (`layer_codes`): the layer names are
    then neither masked nor factorized again (a layer without rows has no column either way)."""
    if codes is not None and len(df) > _BLOCK and df[stat].dtype == np.float64 and df["order"].dtype.kind == "i" \
            and df["step"].dtype.kind == "i" and _ascending(df["step"].to_numpy()):
        return _pivot_blocks(df, stat, rows, codes)
    order, step, vals = df["order"].to_numpy(), df["step"].to_numpy(), df[stat]
    li, layers = codes if codes is not None else (None, None)
    if rows is not None:
        rows = np.asarray(rows, dtype=bool)
        order, step, vals = order[rows], step[rows], vals[rows]
        li = li[rows] if li is not None else None
    vals = vals.to_numpy(dtype=np.float64, na_value=np.nan)
    if li is None:
        li, layers = pd.factorize(df["layer"][rows] if rows is not None else df["layer"], sort=False)
    # forward order: each layer's smallest `order`, ties by name (groupby's sorted keys, then a stable sort)
    first = np.full(len(layers), order.max() if len(order) else 0, dtype=order.dtype)  # minimum.at's fast path
    np.minimum.at(first, li[li >= 0], order[li >= 0])
    names = np.asarray(layers, dtype=object)
    forward = sorted(range(len(layers)), key=lambda i: (first[i], names[i]))
    if len(step) and bool(np.all(step[1:] >= step[:-1])):  # the reader's (step, rank) order: no sort needed
        new_step = np.concatenate([[True], step[1:] != step[:-1]])
        steps, si = step[new_step], np.cumsum(new_step) - 1
    else:
        steps, si = np.unique(step, return_inverse=True)
    ok = ~np.isnan(vals) & (li >= 0)
    n_l = len(layers)
    cell = si[ok] * n_l + li[ok]
    cnt = np.bincount(cell, minlength=len(steps) * n_l).reshape(len(steps), n_l)
    with np.errstate(invalid="ignore", divide="ignore"):
        # sum finite values with bincount; +-inf separately so that inf - inf stays NaN like pandas' mean
        v = vals[ok]
        fin = np.isfinite(v)
        total = np.bincount(cell[fin], weights=v[fin], minlength=len(steps) * n_l).reshape(len(steps), n_l)
        for sign in (1.0, -1.0) if not fin.all() else ():
            hit = np.bincount(cell[v == sign * np.inf], minlength=len(steps) * n_l).reshape(len(steps), n_l) > 0
            total = np.where(hit, total + sign * np.inf, total)
        mean = np.where(cnt > 0, total / np.maximum(cnt, 1), np.nan)
    keep_rows, keep_cols = cnt.any(axis=1), cnt.any(axis=0)
    table = pd.DataFrame(mean[keep_rows][:, keep_cols], index=pd.Index(steps[keep_rows], name="step"),
                         columns=pd.Index(np.asarray(layers)[keep_cols], name="layer"))
    return table[[names[i] for i in forward if keep_cols[i]]]


_BLOCK = 1 << 18  # rows per block of `_pivot_blocks`


def _ascending(step: np.ndarray) -> bool:
    """`bool(np.all(step[1:] >= step[:-1]))`, a block at a time (small temporaries)."""
    for lo in range(0, len(step) - 1, _BLOCK):
        s = step[lo:lo + _BLOCK + 1]
        if not np.all(s[1:] >= s[:-1]):
            return False
    return True


def _pivot_blocks(df: pd.DataFrame, stat: str, rows: pd.Series | np.ndarray | None,
                  codes: tuple[np.ndarray, Any]) -> pd.DataFrame:
    """`pivot` of a frame in step order (the reader's), a block of rows at a time, each block ending
    where a step ends: every (step, layer) cell lies in one block, its sum is added in the same row
    order, so the table is bit for bit `pivot`'s; the temporaries are a block's, not millions of
    rows' (fresh memory is what a 10M-row run pays for)."""
    order_all, step_all, vals_all = df["order"].to_numpy(), df["step"].to_numpy(), df[stat].to_numpy()
    li_all, layers = codes
    n_l, n = len(layers), len(df)
    rows_all = None if rows is None else np.asarray(rows, dtype=bool)
    first = None  # each layer's smallest `order` (a layer without values has no column: its `first` never counts)
    parts_steps, parts_mean = [], []
    keep_cols = np.zeros(n_l, dtype=bool)
    lo = 0
    while lo < n:
        hi = min(n, lo + _BLOCK)
        if hi < n:  # end the block where its last step ends
            hi = int(np.searchsorted(step_all, step_all[hi - 1], side="right"))
        m = slice(lo, hi) if rows_all is None else rows_all[lo:hi]
        order, step, vals, li = (a[lo:hi][m] if rows_all is not None else a[lo:hi]
                                 for a in (order_all, step_all, vals_all, li_all))
        lo = hi
        if not len(step):
            continue
        if first is None:
            first = np.full(n_l, np.iinfo(order.dtype).max, dtype=order.dtype)
        np.minimum.at(first, li[li >= 0], order[li >= 0])
        new_step = np.concatenate([[True], step[1:] != step[:-1]])
        steps, si = step[new_step], np.cumsum(new_step) - 1
        ok = ~np.isnan(vals) & (li >= 0)
        cell = si[ok] * n_l + li[ok]
        size = len(steps) * n_l
        cnt = np.bincount(cell, minlength=size).reshape(len(steps), n_l)
        with np.errstate(invalid="ignore", divide="ignore"):
            v = vals[ok]
            fin = np.isfinite(v)
            total = np.bincount(cell[fin], weights=v[fin], minlength=size).reshape(len(steps), n_l)
            for sign in (1.0, -1.0) if not fin.all() else ():
                hit = np.bincount(cell[v == sign * np.inf], minlength=size).reshape(len(steps), n_l) > 0
                total = np.where(hit, total + sign * np.inf, total)
            mean = np.where(cnt > 0, total / np.maximum(cnt, 1), np.nan)
        keep = cnt.any(axis=1)
        keep_cols |= cnt.any(axis=0)
        parts_steps.append(steps[keep])
        parts_mean.append(mean[keep])
    if first is None:  # no rows: `pivot`'s empty table
        first = np.zeros(n_l, dtype=order_all.dtype)
    names = np.asarray(layers, dtype=object)
    forward = sorted(range(n_l), key=lambda i: (first[i], names[i]))
    cols = np.array([i for i in forward if keep_cols[i]], dtype=np.intp)
    steps = np.concatenate(parts_steps) if parts_steps else np.zeros(0, dtype=step_all.dtype)
    mean = np.concatenate([m[:, cols] for m in parts_mean]) if parts_mean else np.zeros((0, 0))
    return pd.DataFrame(mean, index=pd.Index(steps, name="step"),
                        columns=pd.Index(np.asarray(layers)[cols], name="layer"))


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

