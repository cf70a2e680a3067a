"""Fast paths for big runs (benchmarks/diagnose_big.py): the same answers as the slow ones.

`pivot` builds with numpy what `DataFrame.pivot_table(aggfunc="mean")` built (and with `rows=` what
it builds of the masked frame); `layer_rows` selects once per run and kind; `compute_mask` looks the
type up by code; the reader skips sorting what is already in (step, rank) order.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trainscope.report.synthetic import synthetic_run
from trainscope.rules.detectors._common import (compute_grad_norms, compute_mask, compute_rows, is_compute, kind_mask,
                                                kind_rows, layer_rows, pivot, types_where)
from trainscope.rules.registry import NotApplicable
from trainscope.store.reader import _sorted_by_step_rank


def test_pivot_equals_pivot_table_with_nan_inf_duplicates_and_order() -> None:
    rng = np.random.default_rng(0)
    n = 4000
    df = pd.DataFrame({
        "step": rng.integers(0, 300, n).astype(np.int64),
        "layer": pd.array(rng.choice(["c", "a", "b", "z", "dup"], n), dtype="string"),
        "norm": rng.standard_normal(n),
    })
    df["order"] = df["layer"].map({"c": 0, "a": 1, "b": 2, "z": 3, "dup": 4}).astype("int32")
    df.loc[rng.random(n) < 0.2, "norm"] = np.nan
    df.loc[df.index[:5], "norm"] = np.inf
    df.loc[df.index[5:7], "norm"] = -np.inf
    df.loc[df["layer"] == "z", "norm"] = np.nan  # an all-NaN layer is dropped, like pivot_table does
    fast = pivot(df, "norm")
    slow = df.pivot_table(index="step", columns="layer", values="norm", aggfunc="mean")
    slow = slow[[c for c in ["c", "a", "b", "z", "dup"] if c in slow.columns]]
    assert list(fast.columns) == list(slow.columns) == ["c", "a", "b", "dup"]
    assert list(fast.index) == list(slow.index)
    np.testing.assert_array_equal(np.isnan(fast.to_numpy()), np.isnan(slow.to_numpy()))
    np.testing.assert_allclose(fast.to_numpy(), slow.to_numpy(), rtol=1e-12, equal_nan=True)


def test_layer_rows_is_selected_once_and_follows_a_new_frame() -> None:
    run = synthetic_run(200, 3, every=10, epochs=2)
    a = layer_rows(run, "grad")
    assert layer_rows(run, "grad") is a and set(a["kind"]) == {"grad"}
    run.layers = run.layers[run.layers["kind"] != "grad"]
    with pytest.raises(NotApplicable):
        layer_rows(run, "grad")


def test_pivot_of_masked_rows_equals_pivot_of_the_masked_frame() -> None:
    rng = np.random.default_rng(2)
    n = 3000
    df = pd.DataFrame({"step": rng.integers(0, 100, n).astype(np.int64),
                       "layer": pd.array(rng.choice(["b", "a", "c"], n), dtype="string"),
                       "order": rng.integers(0, 3, n).astype(np.int32), "norm": rng.standard_normal(n)})
    rows = (df["norm"] > -0.5) & (df["layer"] != "c")
    pd.testing.assert_frame_equal(pivot(df, "norm", rows=rows), pivot(df[rows], "norm"))


def test_layer_rows_of_one_rank_and_of_several() -> None:
    run = synthetic_run(200, 3, every=10, epochs=2)
    g = run.layers[run.layers["kind"] == "grad"]
    pd.testing.assert_frame_equal(kind_rows(run, "grad"), g)
    pd.testing.assert_frame_equal(layer_rows(run, "grad"), g)  # every row is rank 0: no copy needed
    run.layers = pd.concat([run.layers, run.layers.assign(rank=np.int32(1))], ignore_index=True)
    g = run.layers[run.layers["kind"] == "grad"]
    pd.testing.assert_frame_equal(kind_rows(run, "grad"), g)
    pd.testing.assert_frame_equal(layer_rows(run, "grad"), g[g["rank"] == 0])
    pd.testing.assert_frame_equal(run.layers[kind_mask(run, "grad")], g[g["rank"] == 0])
    assert compute_rows(run).tolist() == compute_mask(run.layers["module_type"]).tolist()
    relu = types_where(run, lambda t: t == "ReLU", na=False)
    assert relu.tolist() == (run.layers["module_type"] == "ReLU").fillna(False).tolist()
    norms = compute_grad_norms(run)
    assert compute_grad_norms(run) is norms and norms.shape[1] >= 2


def test_compute_mask_matches_is_compute() -> None:
    types = pd.Series(["Linear", "LayerNorm", "Embedding", "Conv2d", None, "BatchNorm2d", "Linear"], dtype="string",
                      index=[5, 3, 1, 0, 9, 8, 7])
    mask = compute_mask(types)
    assert mask.tolist() == [is_compute(t) for t in types] and mask.index.equals(types.index)
    assert mask.dtype == bool and compute_mask(types[:0]).tolist() == []


def test_sorted_check_agrees_with_a_stable_sort() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        n = int(rng.integers(0, 12))
        df = pd.DataFrame({"step": np.sort(rng.integers(0, 5, n)) if rng.random() < 0.5 else rng.integers(0, 5, n),
                           "rank": rng.integers(0, 2, n).astype(np.int32)})
        moved = not df.sort_values(["step", "rank"], kind="stable").index.equals(df.index)
        assert _sorted_by_step_rank(df["step"].to_numpy(), df["rank"].to_numpy()) is (not moved)
