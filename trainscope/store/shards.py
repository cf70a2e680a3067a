"""Merge the per-shard rows of a sharded (FSDP2 / DTensor) run into full-tensor statistics.

Each rank of a sharded run records its layers' statistics on its local shard (probe/sharded.py) and
meta.json `sharding` says which layers are sharded and on how many ranks each element lives
(`replicas`). `merge()` turns every (step, layer, kind) group that all ranks wrote into the statistics
of the whole tensor and gives that value to each rank's row (so per-rank views stay complete):
  norm      sqrt(sum of squares / replicas)
  mean      element-weighted mean of the shard means
  std       from the shards' sums of squared deviations (Chan et al.'s pairwise update)
  max_abs   the largest shard max;  frac_zero, nonfinite, numel: from the counts
  update    norm from summed squared changes; ratio sqrt(sum d^2 / sum w^2), w^2 of a shard from its
            own row (d^2 / ratio^2) or, where its ratio is 0, from its weight row of that step
The scalars `grad_norm` and `grad_norm_clipped` are each rank's share: merged as sqrt(sum v^2).
A group some rank did not write (a rank crashed before its flush, or recorded an extra step because
of an anomaly on its own shard) is left out: a shard's norm shown as the tensor's would read as a
sudden drop. A note in `run.meta["notes"]` says how many. A run some rank never wrote to (watch() on
rank 0 only) is not merged at all; a note says its rows are shards.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from trainscope.store import schema

MERGED_KINDS = ("grad", "weight", "update", "grad_norm")
PARTIAL_SCALARS = (schema.GRAD_NORM, schema.GRAD_NORM_CLIPPED)


def sharding_of(meta: dict[str, Any]) -> dict[str, Any] | None:
    sh = meta.get("sharding")
    if not isinstance(sh, dict) or not isinstance(sh.get("layers"), dict) or not sh.get("merged_at_load", True):
        return None
    try:
        int(sh.get("world_size"))
    except (TypeError, ValueError):
        return None
    return sh


def merge(meta: dict[str, Any], scalars: pd.DataFrame, layers: pd.DataFrame,
          notes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tables with sharded rows merged (unchanged when the run is not sharded)."""
    sh = sharding_of(meta)
    if sh is None:
        return scalars, layers
    world = int(sh["world_size"])
    present = set(layers["rank"].unique().tolist()) | set(scalars["rank"].unique().tolist())
    if len(present) < world:  # e.g. watch() on rank 0 only: nothing can be merged, say what the rows are
        notes.append(f"sharded run recorded by rank(s) {sorted(present)} of {world}: the sharded layers' rows and "
                     "grad_norm are those ranks' shards, not the full tensors (call watch() on every rank)")
        return scalars, layers
    reps = {str(k): max(1, int(v)) for k, v in sh["layers"].items() if isinstance(v, (int, float))}
    layers, left = _merge_layers(layers, reps, world)
    scalars, left_s = _merge_scalars(scalars, world)
    if left or left_s:
        notes.append(f"sharded run: {left} layer groups and {left_s} norm scalars were not written by all "
                     f"{world} ranks and are left out (a shard's value is not the tensor's)")
    return scalars, layers


def _groups(df: pd.DataFrame, keys: list[str]) -> tuple[np.ndarray, int, np.ndarray]:
    """Group codes of the rows, the number of groups, and each group's number of distinct ranks."""
    codes, uniques = pd.factorize(pd.MultiIndex.from_frame(df[keys]))
    pairs = np.unique(np.stack([codes, df["rank"].to_numpy(dtype=np.int64)]), axis=1)
    return codes, len(uniques), np.bincount(pairs[0], minlength=len(uniques))


def _sum(codes: np.ndarray, n: int, x: np.ndarray) -> np.ndarray:
    return np.bincount(codes, weights=x, minlength=n)  # NaN in a group stays NaN (a non-finite shard)


def _merge_scalars(scalars: pd.DataFrame, world: int) -> tuple[pd.DataFrame, int]:
    mask = scalars["name"].isin(PARTIAL_SCALARS).to_numpy()
    if not mask.any():
        return scalars, 0
    sub = scalars.loc[mask]
    codes, n, ranks = _groups(sub, ["attempt", "step", "name"])
    v = sub["value"].to_numpy(dtype=np.float64)
    merged = np.sqrt(_sum(codes, n, v * v))
    ok = ranks[codes] == world
    out = scalars.copy()
    rows = np.flatnonzero(mask)
    out.iloc[rows[ok], out.columns.get_loc("value")] = merged[codes][ok]
    return _without(out, rows[~ok]), int((ranks != world).sum())


_STATS_BY_KIND = {"grad": ("norm", "numel", "mean", "std", "max_abs", "frac_zero", "nonfinite"),
                  "weight": ("norm", "numel", "mean", "std", "max_abs", "frac_zero", "nonfinite"),
                  "grad_norm": ("norm", "numel"), "update": ("norm", "numel", "ratio")}


def _merge_layers(layers: pd.DataFrame, reps: dict[str, int], world: int) -> tuple[pd.DataFrame, int]:
    mask = (layers["layer"].isin(list(reps)) & layers["kind"].isin(MERGED_KINDS)).to_numpy()
    if not mask.any():
        return layers, 0
    df = layers.loc[mask]
    codes, G, ranks = _groups(df, ["attempt", "step", "layer", "kind"])
    f = lambda c: df[c].to_numpy(dtype=np.float64)  # noqa: E731
    n = np.nan_to_num(f("numel"), nan=0.0)
    has = n > 0  # a rank may hold no element of a small tensor: its row is all NaN
    norm, mean, std = f("norm"), f("mean"), f("std")
    k = df["layer"].map(reps).to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        kg = np.ones(G)
        kg[codes] = k
        N = _sum(codes, G, n)
        sq = _sum(codes, G, np.where(has, norm * norm, 0.0))
        mu = _sum(codes, G, np.where(has, n * mean, 0.0)) / N
        # within-shard plus between-shard squared deviations (Chan et al.)
        m2 = _sum(codes, G, np.where(n > 1, std * std * (n - 1), 0.0)
                  + np.where(has, n * (mean - mu[codes]) ** 2, 0.0))
        nz = _sum(codes, G, np.where(has, n * (1.0 - f("frac_zero")), 0.0))
        bad = _sum(codes, G, np.where(has, np.nan_to_num(f("nonfinite"), nan=0.0), 0.0))
        mx = np.full(G, -np.inf)
        np.maximum.at(mx, codes, np.where(has, f("max_abs"), -np.inf))
        w2 = _sum(codes, G, np.nan_to_num(_update_weight_sq(df, layers), nan=0.0))
        full_n = N / kg
        merged = {
            "norm": np.sqrt(sq / kg),
            "numel": full_n,
            "mean": mu,
            "std": np.where(full_n > 1, np.sqrt(np.maximum(m2 / kg / (full_n - 1), 0.0)), np.nan),
            "max_abs": np.where(np.isfinite(mx) | np.isnan(mx), mx, np.nan),
            "frac_zero": 1.0 - nz / N,
            "nonfinite": bad / kg,
            "ratio": np.sqrt(sq / w2),
        }
    ok = ranks[codes] == world
    out = layers.copy()
    rows = np.flatnonzero(mask)
    kind = df["kind"].to_numpy()
    for kd, cols in _STATS_BY_KIND.items():
        sel = ok & (kind == kd)
        if sel.any():
            for c in cols:
                out.iloc[rows[sel], out.columns.get_loc(c)] = merged[c][codes[sel]]
    return _without(out, rows[~ok]), int((ranks != world).sum())


def _without(df: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    if not len(rows):
        return df
    keep = np.ones(len(df), dtype=bool)
    keep[rows] = False
    return df.loc[keep].reset_index(drop=True)


def _update_weight_sq(df: pd.DataFrame, layers: pd.DataFrame) -> np.ndarray:
    """Per update row, the squared weight norm its ratio was taken against (NaN for other kinds)."""
    upd = (df["kind"] == "update").to_numpy()
    out = np.full(len(df), np.nan)
    if not upd.any():
        return out
    norm = df["norm"].to_numpy(dtype=np.float64)
    ratio = df["ratio"].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        own = (norm * norm) / (ratio * ratio)
    good = upd & np.isfinite(own) & (ratio > 0)
    out[good] = own[good]
    need = upd & ~good
    if need.any():  # no change at all on this shard: its weight row of that step says how large it is
        w = layers[layers["kind"] == "weight"][["attempt", "step", "layer", "rank", "norm"]]
        w = w.drop_duplicates(["attempt", "step", "layer", "rank"], keep="last")
        key = pd.MultiIndex.from_frame(w[["attempt", "step", "layer", "rank"]])
        wn = pd.Series(w["norm"].to_numpy(dtype=np.float64), index=key)
        look = pd.MultiIndex.from_frame(df.loc[need, ["attempt", "step", "layer", "rank"]])
        out[need] = (wn.reindex(look).to_numpy()) ** 2
    return out
