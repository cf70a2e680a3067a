"""store/shards.py: per-shard rows merged into full-tensor statistics, checked against numpy on the
whole tensor (uneven shards, an empty shard, a non-finite shard, a rank that never wrote its rows)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from trainscope.probe import stats as st
from trainscope.store import schema, shards
from trainscope.store.run import empty_frame


def _row(step: int, rank: int, layer: str, kind: str, values: list[float]) -> dict:
    return {"attempt": 0, "step": step, "rank": rank, "layer": layer, "kind": kind, "module_type": "Linear",
            "order": 0, **dict(zip(schema.LAYER_STATS, values))}


def _moment_row(step: int, rank: int, layer: str, kind: str, t: torch.Tensor) -> dict:
    return _row(step, rank, layer, kind, st.basic_stats(t).tolist())


def _layers(rows: list[dict]) -> pd.DataFrame:
    base = empty_frame(schema.LAYERS)
    return pd.concat([base, pd.DataFrame(rows)], ignore_index=True)[list(base.columns)].astype(schema.COLUMNS[schema.LAYERS])


META = {"sharding": {"world_size": 3, "layers": {"w": 1}, "merged_at_load": True}}


def test_moments_merge_to_the_full_tensor():
    g = torch.Generator().manual_seed(0)
    full = torch.randn(7, 5, generator=g) * 3 + 10  # |mean| >> std: the shift-free merge must stay exact
    full[1, :] = 0.0
    parts = [full[:4], full[4:], full[7:]]  # 4 / 3 / 0 rows: rank 2 holds nothing
    rows = [_moment_row(0, r, "w", "grad", p) for r, p in enumerate(parts)]
    out_s, out = shards.merge(META, empty_frame(schema.SCALARS), _layers(rows), notes := [])
    want = st.basic_stats(full).numpy()
    for _, got in out.iterrows():
        for i, stat in enumerate(schema.LAYER_STATS):
            if np.isfinite(want[i]):
                assert got[stat] == pytest.approx(float(want[i]), rel=1e-6, abs=1e-9), stat
    assert notes == []


def test_a_nonfinite_shard_stays_nonfinite_and_a_missing_rank_is_not_merged():
    a, b = torch.ones(4), torch.tensor([1.0, float("nan")])
    rows = [_moment_row(0, 0, "w", "grad", a), _moment_row(0, 1, "w", "grad", b), _moment_row(0, 2, "w", "grad", a),
            _moment_row(1, 0, "w", "grad", a), _moment_row(1, 1, "w", "grad", a)]  # step 1: rank 2 crashed
    scalars = pd.DataFrame({"attempt": 0, "step": [0, 0, 0, 1], "rank": [0, 1, 2, 0], "name": schema.GRAD_NORM,
                            "value": [3.0, 4.0, 12.0, 1.0], "epoch": np.nan, "time": 0.0})
    scalars = scalars[list(schema.COLUMNS[schema.SCALARS])].astype(schema.COLUMNS[schema.SCALARS])
    out_s, out = shards.merge(META, scalars, _layers(rows), notes := [])
    step0 = out[out.step == 0]
    assert step0["norm"].isna().all() and (step0["nonfinite"] == 1).all() and (step0["numel"] == 10).all()
    assert (out.step == 1).sum() == 0  # a shard's norm is not the tensor's: left out
    assert out_s["value"].tolist() == [13.0, 13.0, 13.0]  # sqrt(3^2 + 4^2 + 12^2); step 1 incomplete
    assert len(notes) == 1 and "1 layer groups and 1 norm scalars" in notes[0]


def test_update_ratio_merges_from_summed_squares():
    d = [torch.tensor([0.1, 0.2]), torch.tensor([0.0])]
    w = [torch.tensor([1.0, 2.0]), torch.tensor([3.0])]  # rank 1 did not move: its ratio is 0
    rows = []
    for r in range(2):
        rows.append(_row(0, r, "w", "update", st.update_stats([w[r]], [w[r] + d[r]]).tolist()))
        rows.append(_moment_row(0, r, "w", "weight", w[r]))
    meta = {"sharding": {"world_size": 2, "layers": {"w": 1}}}
    _, out = shards.merge(meta, empty_frame(schema.SCALARS), _layers(rows), [])
    upd = out[out.kind == "update"]
    want = float(torch.cat(d).norm() / torch.cat(w).norm())
    assert upd["ratio"].tolist() == pytest.approx([want, want], rel=1e-6)


def test_an_unsharded_run_is_left_alone():
    rows = [_moment_row(0, r, "w", "grad", torch.ones(3)) for r in range(2)]
    layers = _layers(rows)
    _, out = shards.merge({"world_size": 2}, empty_frame(schema.SCALARS), layers, [])
    assert out is layers


def test_a_run_watched_on_rank_0_only_is_not_merged_and_says_so():
    rows = [_moment_row(0, 0, "w", "grad", torch.ones(3))]
    layers = _layers(rows)
    _, out = shards.merge(META, empty_frame(schema.SCALARS), layers, notes := [])
    assert out is layers and "rank(s) [0] of 3" in notes[0]
