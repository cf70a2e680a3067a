"""Shrink long series for display without hiding what matters: spikes and NaN/Inf points.

A 100k-step run has far more points than a screen has pixels. Each series is cut into buckets of
consecutive steps; a bucket keeps its first, minimum, maximum and last finite points in step order
(an M4-style envelope), so a one-step spike survives and the drawn line looks like the full one.
Non-finite values are kept apart, as marker points (the first one always, then one per bucket).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Downsampled:
    """A series ready to plot: finite points plus where the non-finite ones were."""

    x: np.ndarray
    y: np.ndarray
    bad_x: np.ndarray  # steps (or epochs) where the value was NaN/Inf
    bad_kind: np.ndarray  # "NaN", "+Inf" or "-Inf" for each bad point
    n_raw: int  # number of points before downsampling

    @property
    def reduced(self) -> bool:
        return len(self.x) < self.n_raw


def _bucket_starts(n: int, n_buckets: int) -> np.ndarray:
    return np.linspace(0, n, n_buckets + 1).astype(np.int64)[:-1]


def envelope(x: np.ndarray, y: np.ndarray, max_points: int = 2000) -> Downsampled:
    """Keep at most about `max_points` finite points (first/min/max/last per bucket) and the bad ones.

    x must be sorted ascending. Works on any numeric y; NaN and +-Inf go to `bad_x`.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    finite = np.isfinite(y)
    bad_x, bad_kind = _bad_points(x, y, ~finite, max_points)
    xf, yf = x[finite], y[finite]
    n = len(xf)
    n_buckets = max(1, max_points // 4)
    if n <= max_points:
        return Downsampled(xf, yf, bad_x, bad_kind, len(x))
    starts = _bucket_starts(n, n_buckets)
    ends = np.append(starts[1:], n) - 1
    # argmin/argmax inside each bucket via reduceat on values, then locate the index.
    mins = np.minimum.reduceat(yf, starts)
    maxs = np.maximum.reduceat(yf, starts)
    bucket_of = np.repeat(np.arange(n_buckets), np.diff(np.append(starts, n)))
    idx = np.arange(n)
    is_min = yf == mins[bucket_of]
    is_max = yf == maxs[bucket_of]
    # first index per bucket where the min / max is reached
    big = np.iinfo(np.int64).max
    i_min = np.minimum.reduceat(np.where(is_min, idx, big), starts)
    i_max = np.minimum.reduceat(np.where(is_max, idx, big), starts)
    keep = np.unique(np.concatenate([starts, ends, i_min, i_max]))
    return Downsampled(xf[keep], yf[keep], bad_x, bad_kind, len(x))


def _bad_points(
    x: np.ndarray, y: np.ndarray, bad: np.ndarray, max_points: int
) -> tuple[np.ndarray, np.ndarray]:
    """The first non-finite point, then at most one per bucket (a run that stays NaN stays small)."""
    if not bad.any():
        return np.empty(0), np.empty(0, dtype=object)
    where = np.flatnonzero(bad)
    if len(where) > max_points // 10:
        n_buckets = max(1, max_points // 10)
        # bucket by position in x's range so the markers spread like the line
        lo, hi = x[0], x[-1]
        bucket = np.floor((x[where] - lo) / max(hi - lo, 1e-12) * n_buckets).astype(np.int64)
        _, first = np.unique(bucket, return_index=True)
        where = where[first]
    yb = y[where]
    kind = np.where(np.isnan(yb), "NaN", np.where(yb > 0, "+Inf", "-Inf")).astype(object)
    return x[where], kind


@dataclass(frozen=True)
class Columns:
    """A [rows, steps] matrix reduced along steps to at most `max_cols` bucket columns."""

    values: np.ndarray  # [rows, buckets], NaN where a bucket had no finite value
    bad: np.ndarray  # [rows, buckets] bool: the bucket held a NaN/Inf
    step_lo: np.ndarray  # first step of each bucket
    step_hi: np.ndarray  # last step of each bucket


def reduce_columns(
    matrix: np.ndarray,
    steps: np.ndarray,
    max_cols: int = 400,
    how: str = "max",
    bad_cells: np.ndarray | None = None,
) -> Columns:
    """Bucket the columns of `matrix` (steps ascending) keeping each row's max (or min/mean) per bucket.

    Buckets are equal spans of steps (not of recorded columns), so the columns sit on a uniform
    grid: plotly then draws the heatmap as one small image scaled up (one pixel per cell) instead
    of filling a rectangle per cell, which is most of the time a big heatmap takes to draw. A span
    in which nothing was recorded is an empty (NaN) column.

    NaN cells are missing (the layer was not recorded then); `bad_cells` marks cells whose
    recorded value was NaN/Inf (Inf cells of `matrix` count as bad too). `how="max"` keeps
    spikes (exploding norms, a burst of dead units); "min" keeps dips.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    steps = np.asarray(steps)
    n = matrix.shape[1]
    bad = np.isinf(matrix)
    if bad_cells is not None:
        bad = bad | bad_cells
    finite = np.isfinite(matrix)
    if n <= max_cols:
        return Columns(np.where(finite, matrix, np.nan), bad, steps.copy(), steps.copy())
    s0, s1 = int(steps[0]), int(steps[-1])
    width = max(1, -(-(s1 - s0 + 1) // max_cols))  # whole steps per column, ceil
    bucket = (steps.astype(np.int64) - s0) // width
    n_cols = int(bucket[-1]) + 1
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])  # first column of each non-empty bucket
    fill = {"max": -np.inf, "min": np.inf}.get(how, 0.0)
    m = np.where(finite, matrix, fill)
    if how == "max":
        vals = np.maximum.reduceat(m, starts, axis=1)
    elif how == "min":
        vals = np.minimum.reduceat(m, starts, axis=1)
    else:
        cnt = np.add.reduceat(finite.astype(np.float64), starts, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            vals = np.add.reduceat(m, starts, axis=1) / cnt
    any_finite = np.add.reduceat(finite.astype(np.int64), starts, axis=1) > 0
    where = bucket[starts]
    out = np.full((matrix.shape[0], n_cols), np.nan)
    out[:, where] = np.where(any_finite, vals, np.nan)
    out_bad = np.zeros((matrix.shape[0], n_cols), dtype=bool)
    out_bad[:, where] = np.add.reduceat(bad.astype(np.int64), starts, axis=1) > 0
    lo = s0 + width * np.arange(n_cols, dtype=np.int64)
    hi = np.minimum(lo + width - 1, s1)
    return Columns(out, out_bad, lo.astype(steps.dtype), hi.astype(steps.dtype))
