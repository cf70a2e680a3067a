"""Read what the report plots out of a `Run`: loss series, per-layer matrices, finding marks.

Pure pandas/numpy over the stored frames; nothing here draws. Kept apart from `figures.py` so
the selection rules (which scalar is a validation loss, which evidence key is a step) are easy
to read and test.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from trainscope.rules.finding import Finding, Severity
from trainscope.store import schema
from trainscope.store.run import Run

LAYER_STAT_NAMES = schema.LAYER_STATS

# Probe-written scalars that are not metrics of the user's model.
PROBE_PREFIXES = schema.PROBE_PREFIXES + (schema.GRAD_NORM_CLIPPED,)
VAL_RE = re.compile(r"(^|[/_.\-\s])(val|valid|validation|test|eval|dev)([/_.\-\s]|$)|^(val|valid|test|eval)", re.I)


def is_loss(name: str) -> bool:
    return "loss" in name.lower() and not name.startswith(PROBE_PREFIXES)


def is_validation(name: str) -> bool:
    return bool(VAL_RE.search(name))


def ranks_of(df: pd.DataFrame) -> list[int]:
    if "rank" not in df or df.empty:
        return [0]
    return sorted(int(r) for r in pd.unique(df["rank"].dropna()))


def main_rank(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of the lowest rank (rank 0 in a DDP run): one curve per quantity by default."""
    ranks = ranks_of(df)
    if len(ranks) <= 1:
        return df
    return df[df["rank"] == ranks[0]]


@dataclass(frozen=True)
class Series:
    name: str
    step: np.ndarray
    value: np.ndarray
    epoch: np.ndarray  # NaN where unknown


def scalar_series(run: Run, name: str, rank: int | None = None) -> Series:
    df = run.scalars
    df = df[df["name"] == name]
    if rank is None:
        df = main_rank(df)
    else:
        df = df[df["rank"] == rank]
    df = df.sort_values("step", kind="stable").drop_duplicates("step", keep="last")
    epoch = df["epoch"].to_numpy(dtype=np.float64, na_value=np.nan) if "epoch" in df else np.full(len(df), np.nan)
    return Series(
        name,
        df["step"].to_numpy(dtype=np.float64),
        df["value"].to_numpy(dtype=np.float64, na_value=np.nan),
        epoch,
    )


def differing_rank_scalars(run: Run, rtol: float = 1e-6) -> list[str]:
    """Scalar names whose values differ between ranks (the per-rank curves worth showing)."""
    df = run.scalars
    if len(ranks_of(df)) <= 1:
        return []
    out = []
    for name, g in df.groupby("name", sort=True):
        if name.startswith(PROBE_PREFIXES) or g["rank"].nunique() <= 1:
            continue
        wide = g.pivot_table(index="step", columns="rank", values="value", aggfunc="last")
        spread = (wide.max(axis=1) - wide.min(axis=1)).abs()
        scale = wide.abs().max(axis=1).clip(lower=1e-12)
        if bool(((spread / scale) > rtol).any()):
            out.append(str(name))
    return out


def smooth(value: np.ndarray) -> np.ndarray:
    """EMA over about 2% of the run, at least 5 points (bias corrected); NaN where the raw is not finite."""
    s = pd.Series(np.where(np.isfinite(value), value, np.nan))
    span = max(5.0, len(s) / 50.0)
    out = s.ewm(span=span, ignore_na=True).mean().to_numpy(copy=True)
    out[~np.isfinite(value)] = np.nan
    return out


def per_epoch_mean(series: Series) -> tuple[np.ndarray, np.ndarray]:
    """(epoch, mean of finite values in that epoch; NaN if none were finite)."""
    ok = np.isfinite(series.epoch)
    if not ok.any():
        return np.empty(0), np.empty(0)
    df = pd.DataFrame({"epoch": series.epoch[ok], "v": series.value[ok]})
    df["f"] = np.where(np.isfinite(df["v"]), df["v"], np.nan)
    g = df.groupby("epoch", sort=True)
    mean = g["f"].mean()
    has_bad = g["v"].apply(lambda v: (~np.isfinite(v)).any())
    vals = np.where(mean.isna() & has_bad, np.nan, mean.to_numpy())
    return mean.index.to_numpy(dtype=np.float64), vals


@dataclass(frozen=True)
class LayerMatrix:
    """One stat of one kind as [layers (input -> output), recorded steps]."""

    layers: list[str]
    module_types: list[str]
    steps: np.ndarray
    values: np.ndarray  # NaN: not recorded (or stat does not apply)
    bad: np.ndarray  # the tensor held NaN/Inf at that step

    @property
    def empty(self) -> bool:
        return not self.layers or not np.isfinite(self.values).any() and not self.bad.any()

    def latest(self) -> np.ndarray:
        """Last finite value per layer (NaN if none)."""
        out = np.full(len(self.layers), np.nan)
        for i, row in enumerate(self.values):
            idx = np.flatnonzero(np.isfinite(row))
            if len(idx):
                out[i] = row[idx[-1]]
        return out


# Units of these can die (output 0 for every input); LeakyReLU/GELU/ELU cannot, and a Linear's
# negative outputs are not "dead". Same family as the dead-relu rule.
DYING_TYPES = ("ReLU", "ReLU6")

# Stats that exist only for some layers (NaN elsewhere by design, see schema.LAYER_STATS).
CONDITIONAL_STATS = ("frac_dead", "frac_saturated", "ratio")


@dataclass(frozen=True)
class _KindRows:
    code: np.ndarray  # layer code of each row (index into _LayerIndex.names)
    step: np.ndarray
    stats: dict[str, np.ndarray]  # float64 columns


@dataclass(frozen=True)
class _LayerIndex:
    """The layers frame (main rank) as numpy arrays per kind: string filtering of millions of rows
    (pyarrow-backed) dominated the render time of big runs, so it is done once per frame."""

    names: list[str]
    types: np.ndarray  # module type per layer code (object array)
    rank_key: np.ndarray  # sort key per layer code: forward order, then first appearance
    kinds: dict[str, _KindRows]


_INDEX_CACHE: list[tuple[pd.DataFrame, _LayerIndex]] = []  # one entry: the frame being rendered


def _layer_index(run: Run) -> _LayerIndex:
    frame = run.layers
    if _INDEX_CACHE and _INDEX_CACHE[0][0] is frame:
        return _INDEX_CACHE[0][1]
    df = main_rank(frame)
    codes, uniques = pd.factorize(df["layer"], sort=False)  # codes follow first appearance
    names = [str(u) for u in uniques]
    n = len(names)
    first_row = np.full(n, len(df), dtype=np.int64)
    np.minimum.at(first_row, codes, np.arange(len(df)))
    types = (df["module_type"].to_numpy(dtype=object, na_value="")[first_row] if n and "module_type" in df
             else np.array([""] * n, dtype=object))
    order = df["order"].to_numpy(dtype=np.int64, na_value=-1) if "order" in df else np.full(len(df), -1)
    big = np.int64(1 << 30)
    o = np.full(n, big, dtype=np.int64)
    ok = order >= 0
    np.minimum.at(o, codes[ok], order[ok])
    rank_key = o * (1 << 20) + np.arange(n)  # order first, first appearance breaks ties
    kind_codes, kind_names = pd.factorize(df["kind"], sort=False)
    step = df["step"].to_numpy(dtype=np.int64)
    stat_cols = [c for c in (*LAYER_STAT_NAMES, "nonfinite") if c in df]
    arrays = {c: df[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in dict.fromkeys(stat_cols)}
    kinds = {}
    for k, kname in enumerate(kind_names):
        sel = kind_codes == k
        kinds[str(kname)] = _KindRows(codes[sel], step[sel], {c: a[sel] for c, a in arrays.items()})
    index = _LayerIndex(names, types, rank_key, kinds)
    _INDEX_CACHE[:] = [(frame, index)]
    return index


def clear_cache() -> None:
    """Drop the layer index (render_report calls this when done: big frames stay collectable)."""
    _INDEX_CACHE.clear()


def has_layer_stat(run: Run, kind: str, stat: str, module_types: tuple[str, ...] | None = None) -> bool:
    """Any recorded value of `stat` for `kind` (or, for stats every layer has, any NaN/Inf tensor)."""
    if run.layers.empty:
        return False
    ix = _layer_index(run)
    rows = ix.kinds.get(kind)
    if rows is None or stat not in rows.stats:
        return False
    sel = np.isin(ix.types[rows.code], module_types) if module_types is not None else slice(None)
    if (~np.isnan(rows.stats[stat][sel])).any():
        return True
    nonfinite = rows.stats.get("nonfinite")
    return stat not in CONDITIONAL_STATS and nonfinite is not None and bool((nonfinite[sel] > 0).any())


def _empty_matrix() -> LayerMatrix:
    return LayerMatrix([], [], np.empty(0), np.empty((0, 0)), np.empty((0, 0), bool))


def layer_matrix(run: Run, kind: str, stat: str, module_types: tuple[str, ...] | None = None) -> LayerMatrix:
    """[layers input -> output, recorded steps] of one stat; NaN where not recorded."""
    if run.layers.empty:
        return _empty_matrix()
    ix = _layer_index(run)
    rows = ix.kinds.get(kind)
    if rows is None or stat not in rows.stats:
        return _empty_matrix()
    code, step, vals = rows.code, rows.step, rows.stats[stat]
    nonfinite = rows.stats.get("nonfinite", np.zeros(len(vals)))
    if module_types is not None:
        sel = np.isin(ix.types[code], module_types)
        code, step, vals, nonfinite = code[sel], step[sel], vals[sel], nonfinite[sel]
    bad_rows = (np.nan_to_num(nonfinite, nan=0.0) > 0) | np.isinf(vals)
    keep = ~np.isnan(vals) | bad_rows
    if stat in CONDITIONAL_STATS:
        # NaN/Inf rows of a layer this stat never applied to (e.g. saturation of a ReLU) are not news
        applies = np.unique(code[~np.isnan(vals)])
        keep &= np.isin(code, applies)
    if not keep.any():
        return _empty_matrix()
    code, step, vals, bad_rows = code[keep], step[keep], vals[keep], bad_rows[keep]
    present = np.unique(code)
    present = present[np.argsort(ix.rank_key[present], kind="stable")]
    row_of = np.full(len(ix.names), -1, dtype=np.int64)
    row_of[present] = np.arange(len(present))
    steps, si = np.unique(step, return_inverse=True)
    values = np.full((len(present), len(steps)), np.nan)
    bad = np.zeros((len(present), len(steps)), dtype=bool)
    li = row_of[code]
    values[li, si] = np.where(bad_rows, np.nan, vals)
    bad[li, si] = bad_rows
    return LayerMatrix([ix.names[c] for c in present], [str(ix.types[c]) for c in present], steps, values, bad)


# ----------------------------------------------------------------------------- findings -> marks


@dataclass(frozen=True)
class Mark:
    """Something a finding points at, drawn on the figure that shows it."""

    anchor: str  # id of the finding card, e.g. "finding-2"
    rule: str
    severity: Severity
    label: str  # "best epoch 11"
    steps: tuple[float, ...] = ()  # vertical lines at these steps
    epochs: tuple[float, ...] = ()  # vertical lines at these epochs
    step_range: tuple[float, float] | None = None  # shaded span
    layers: tuple[str, ...] = ()  # highlighted layers


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(float(v)):
        return float(v)
    return None


def marks_for(finding: Finding, anchor: str) -> list[Mark]:
    """Marks from the evidence: keys `step`/`*_step` and `epoch`/`*_epoch`, the step range, the layers.

    Works on any finding (missing keys just give fewer marks), so a new rule gets marks for free
    as long as its evidence names steps and epochs this way.
    """
    marks: list[Mark] = []
    sev = Severity(finding.severity)  # tolerate a plain "error" string
    ev = finding.evidence_dict
    for key, val in ev.items():
        k = key.lower()
        num = _number(val)
        if num is None:
            continue
        label = f"{key.replace('_', ' ')} {num:g}"
        if k.endswith(("per_step", "per_epoch")):  # rates and counts, not positions
            continue
        if k == "step" or k.endswith("_step"):
            marks.append(Mark(anchor, finding.name, sev, label, steps=(num,)))
        elif k == "epoch" or k.endswith("_epoch"):
            marks.append(Mark(anchor, finding.name, sev, label, epochs=(num,)))
    layers = list(finding.layers)
    v = ev.get("layer")  # first_layer/last_layer of a ratio are context, not the culprit
    if isinstance(v, str) and v and v != "None" and v not in layers:
        layers.append(v)
    rng = None
    if finding.steps is not None and finding.steps[1] > finding.steps[0]:
        rng = (float(finding.steps[0]), float(finding.steps[1]))
    if layers or rng or not marks:
        marks.append(Mark(anchor, finding.name, sev, f"{finding.name}", step_range=rng,
                          layers=tuple(layers)))
    return marks


# Which section shows a rule's evidence, in order of preference (the first present wins).
RULE_SECTIONS: dict[str, tuple[str, ...]] = {
    "loss-not-decreasing": ("loss",),
    "input-pipeline-bound": ("time",),
    "host-sync-bound": ("time",),
    "performance-hints": ("time", "run"),
    "divergence": ("loss", "grad-norm"),
    "overfitting": ("loss",),
    "underfitting": ("loss",),
    "oscillation": ("loss",),
    "no-early-stopping": ("loss",),
    "slow-start": ("loss",),
    "initial-loss-mismatch": ("loss",),
    "no-validation": ("loss",),
    "softmax-before-cross-entropy": ("loss",),
    "output-activation-mismatch": ("loss",),
    "vanishing-gradients": ("grad", "grad-norm"),
    "exploding-gradients": ("grad", "grad-norm"),
    "unstable-gradients": ("grad-norm", "grad"),
    "nan-or-inf": ("grad", "loss"),
    "missing-zero-grad": ("grad-norm", "grad"),
    "dead-relu": ("act-dead", "act-stats"),
    "saturated-activations": ("act-sat", "act-stats"),
    "collapsed-activations": ("act-stats", "act-dead"),
    "poor-initialization": ("init",),
    "lr-too-high": ("update", "lr", "loss"),
    "lr-too-low": ("update", "lr", "loss"),
    "scheduler-step-cadence": ("lr",),
    "unnormalized-inputs": ("act-stats",),
    "eval-mode-during-training": ("run",),
    "adam-l2-weight-decay": ("run",),
    "batchnorm-small-batch": ("run",),
    "dropout-before-batchnorm": ("run",),
}


def section_for(finding: Finding, present: set[str]) -> str:
    """The section a finding links to; unknown rules fall back on what their evidence names."""
    prefs = RULE_SECTIONS.get(finding.name)
    if finding.name == "nan-or-inf" and str(finding.evidence_dict.get("tensor", "")).lower() == "loss":
        prefs = ("loss", "grad")
    if prefs is None:
        ev = {k.lower() for k in finding.evidence_dict}
        if finding.layers or ev & {"layer", "layers"}:
            prefs = ("grad", "act-dead", "update")
        elif any(k.endswith("epoch") or k.endswith("step") for k in ev):
            prefs = ("loss",)
        else:
            prefs = ("run",)
    for p in prefs:
        if p in present:
            return p
    return "run"
