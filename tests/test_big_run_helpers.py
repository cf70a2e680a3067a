"""Fast paths for big runs (benchmarks/diagnose_big.py): the same answers as the slow ones.

`pivot` builds with numpy what `DataFrame.pivot_table(aggfunc="mean")` built (and with `rows=` what
it builds of the masked frame); `layer_rows` selects once per run and kind; `compute_mask` looks the
type up by code; the reader skips sorting what is already in (step, rank) order and hands over the
codes of its dictionary-decoded string columns; `Run.scalar` answers once per diagnosis.
"""
from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import trainscope
from trainscope.report.synthetic import synthetic_run
from trainscope.rules.detectors import _common
from trainscope.rules.detectors._common import (all_ranks_mask, compute_grad_norms, compute_mask, compute_rows,
                                                is_compute, kind_mask, kind_rows, layer_rows, pivot, types_where)
from trainscope.errors import TrainscopeError
from trainscope.rules.registry import NotApplicable
from trainscope.store import reader, schema
from trainscope.store.reader import _sorted_by_step_rank
from trainscope.store.writer import RunWriter, new_meta


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


def _store(path: Path, compact_every: int | None = None) -> Path:
    """A small run written by the run store's writer: three chunks, out of step order across chunks,
    layer names that differ between chunks (different Parquet dictionaries) and a missing one."""
    w = RunWriter(path, **({"compact_every": compact_every} if compact_every else {}))
    w.write_meta(new_meta(name="r", rank=0, world_size=1, trainscope_version="t", torch_version="t",
                          python_version="t"))
    nan = float("nan")
    for base, names in ((20, ["b", "a", "b", None]), (0, ["c", "c", "a", "b"]), (10, ["d", None, "d", "d"])):
        steps = [base + 1, base + 1, base + 2, base + 3]
        w.append(schema.SCALARS, {"step": steps, "name": ["loss", "lr/0", "loss", "lr/0"], "value": [1.0, 2.0, 3.0, 4.0],
                                  "epoch": [nan] * 4, "time": [0.0] * 4})
        w.append(schema.LAYERS, {"step": steps, "layer": names, "kind": ["grad", "weight", "grad", "update"],
                                 "module_type": ["Linear", "ReLU", None, "Linear"], "order": [0, 1, 0, 2],
                                 **{s: [1.0, nan, 2.0, 3.0] for s in schema.LAYER_STATS}})
        w.next_chunk()
    w.release()
    return path


@pytest.mark.parametrize("compact_every", [None, 2])
def test_reader_codes_are_pd_factorize_of_the_loaded_columns(tmp_path: Path, compact_every: int | None) -> None:
    run = trainscope.load_run(_store(tmp_path / "r", compact_every))
    assert run.layers["step"].tolist() == [1, 1, 2, 3, 11, 11, 12, 13, 21, 21, 22, 23]  # sorted on load
    handed = run.__dict__.get("_codes_cache", {})
    assert {("layers", "layer"), ("layers", "kind"), ("layers", "module_type"), ("scalars", "name")} <= set(handed)
    for table, column in handed:
        codes, uniques = run.codes(table, column)
        assert run.__dict__["_codes_cache"][(table, column)][1][0] is codes  # the reader's, not recomputed
        ref_codes, ref_uniques = pd.factorize(getattr(run, table)[column])
        np.testing.assert_array_equal(codes, ref_codes)
        pd.testing.assert_index_equal(uniques, ref_uniques, exact=True)
    assert -1 in run.codes("layers", "layer")[0]  # the missing name
    for c in ("layer", "kind", "module_type"):  # one chunk: a row selection takes from it, no concatenation first
        assert run.layers[c].array.__arrow_array__().num_chunks == 1
    # a changed column is factorized again, never answered from the reader's codes
    run.layers.loc[0, "layer"] = "zzz"
    codes, uniques = run.codes("layers", "layer")
    ref_codes, ref_uniques = pd.factorize(run.layers["layer"])
    np.testing.assert_array_equal(codes, ref_codes)
    pd.testing.assert_index_equal(uniques, ref_uniques)
    old_kinds = weakref.ref(run.layers["kind"].array.__arrow_array__())
    run.layers = run.layers.iloc[::-1].reset_index(drop=True)
    gc.collect()
    assert old_kinds() is None  # the codes of a replaced frame keep none of its data alive
    np.testing.assert_array_equal(run.codes("layers", "kind")[0], pd.factorize(run.layers["kind"])[0])
    mask = all_ranks_mask(run, "grad")
    assert mask.tolist() == (run.layers["kind"] == "grad").tolist()
    assert not all_ranks_mask(run, "activation").any()


def test_cached_scalars_answers_as_without_the_cache(tmp_path: Path) -> None:
    run = trainscope.load_run(_store(tmp_path / "r"))
    plain = run.scalar("loss")
    with run.cached_scalars():
        first = run.scalar("loss")
        pd.testing.assert_series_equal(first, plain)
        first.iloc[0] = 99.0  # the caller's copy: the cache keeps its own
        first.index.name = "x"
        first.name = "changed"
        pd.testing.assert_series_equal(run.scalar("loss"), plain)
        assert run.scalar_names() == ["loss", "lr/0"]
        run.scalars = run.scalars[run.scalars["name"] != "loss"]  # a new frame is read afresh
        assert run.scalar("loss").empty and run.scalar_names() == ["lr/0"]
    assert "_scalar_cache" not in run.__dict__
    run = trainscope.load_run(tmp_path / "r")
    run.scalars.loc[run.scalars.index[0], "value"] = -1.0  # outside the block: read every time
    assert run.scalar("loss").iloc[0] == -1.0


def test_sorted_check_across_blocks() -> None:
    n = (1 << 16) * 3 + 5
    step, rank = np.repeat(np.arange(n // 3 + 1), 3)[:n].astype(np.int64), np.zeros(n, dtype=np.int32)
    assert _sorted_by_step_rank(step, rank)
    for at in (1, 1 << 16, (1 << 16) + 1, n - 1):  # out of order at each block's edge and inside
        s = step.copy()
        s[at] = s[at - 1] - 1
        assert not _sorted_by_step_rank(s, rank)
    r = rank.copy()
    r[(1 << 16) - 1], r[1 << 16] = 1, 0  # same step (a triple straddling the edge), rank going down
    assert step[(1 << 16) - 1] == step[1 << 16] and not _sorted_by_step_rank(step, r)


def _outcome(run_dir: Path, skip: bool) -> tuple:
    try:
        run = trainscope.load_run(run_dir, skip_corrupt=skip)
    except TrainscopeError as e:
        return ("error", str(e))
    return ("read", run.meta.get("notes"), {t: getattr(run, t) for t in schema.TABLES})


def test_column_by_column_reading_fails_and_skips_as_whole_chunk_reading(tmp_path: Path, monkeypatch) -> None:
    """Chunks are decoded a column at a time when the frame is built; damaged or foreign chunks
    must still give the errors (and with skip_corrupt the notes and rows) of decoding each chunk
    whole, in chunk order. Unlisted chunks (no checksum) with random byte flips in their pages or
    footer, next to a listed chunk whose checksum fails, compared with the whole-chunk reader."""
    import json
    import random

    run_dir = _store(tmp_path / "r")
    manifest = run_dir / "chunks-r0.json"
    listed = json.loads(manifest.read_text())
    layer_chunks = sorted((run_dir / schema.LAYERS).glob("*.parquet"))
    for c in layer_chunks[:2]:  # as if a crash cut them off before the manifest update: kept, unchecked
        del listed["chunks"][f"{schema.LAYERS}/{c.name}"]
    manifest.write_text(json.dumps(listed))
    goods = {c: c.read_bytes() for c in layer_chunks}

    def whole(path, data, table, attempt):
        return reader._Decoded(reader._decode(path, data, table, attempt))

    rng = random.Random(0)
    for trial in range(40):
        for c, good in goods.items():
            c.write_bytes(good)
        for c in layer_chunks[:2] if trial % 3 else layer_chunks[:1]:
            bad = bytearray(goods[c])
            lo = len(bad) - 400 if trial % 4 == 0 else 4  # the footer's metadata, or anywhere
            for _ in range(rng.randint(1, 3)):
                bad[rng.randrange(lo, len(bad) - 8)] ^= 1 << rng.randrange(8)
            c.write_bytes(bytes(bad))
        if trial % 2:
            bad = bytearray(goods[layer_chunks[2]])
            bad[len(bad) // 2] ^= 1
            layer_chunks[2].write_bytes(bytes(bad))  # a checksum mismatch after them
        for skip in (False, True):
            fast = _outcome(run_dir, skip)
            with monkeypatch.context() as m:
                m.setattr(reader, "_open_chunk", whole)
                slow = _outcome(run_dir, skip)
            assert fast[:2] == slow[:2], (trial, skip)
            if fast[0] == "read":
                for t in schema.TABLES:
                    pd.testing.assert_frame_equal(fast[2][t], slow[2][t])


@pytest.mark.parametrize("seed", range(6))
def test_pivot_a_block_at_a_time_is_bit_for_bit_the_whole_pivot(monkeypatch, seed: int) -> None:
    """A frame in step order (the reader's) is pivoted in blocks of rows that end where a step ends;
    the table is the one-pass table bit for bit: NaN, +-inf, duplicate (step, layer) cells (two
    ranks), steps and layers without values, a mask, layers that never occur."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 3000))
    step = np.sort(rng.integers(0, max(2, n // 7), n)).astype(np.int64)
    names = np.array(["a", "b", "c", "d", "z"], dtype=object)
    df = pd.DataFrame({"step": step, "layer": pd.array(rng.choice(names[:4], n), dtype="string"),
                       "order": rng.integers(-1, 4, n).astype(np.int32), "norm": rng.standard_normal(n) * 1e3})
    v = df["norm"].to_numpy().copy()
    v[rng.random(n) < 0.2] = np.nan
    v[rng.random(n) < 0.02] = np.inf
    v[rng.random(n) < 0.02] = -np.inf
    df["norm"] = v
    codes = pd.factorize(pd.concat([df["layer"], pd.Series(["z"], dtype="string")], ignore_index=True))
    codes = (codes[0][:n], codes[1])  # "z" has a code but no rows
    for rows in (None, rng.random(n) < 0.6, np.zeros(n, dtype=bool)):
        whole = pivot(df, "norm", rows=rows, codes=codes)
        monkeypatch.setattr(_common, "_BLOCK", int(rng.integers(1, 40)))
        blocks = pivot(df, "norm", rows=rows, codes=codes)
        monkeypatch.undo()
        pd.testing.assert_frame_equal(blocks, whole, check_exact=True)
        assert np.array_equal(blocks.to_numpy().view(np.int64), whole.to_numpy().view(np.int64))
    shuffled = df.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # not in step order: one pass
    monkeypatch.setattr(_common, "_BLOCK", 5)
    pd.testing.assert_frame_equal(pivot(shuffled, "norm"), pivot(df, "norm"), check_exact=False)


def test_a_one_chunk_store_loads_into_its_decoded_buffers_writable_and_equal(tmp_path: Path, monkeypatch) -> None:
    """One chunk file per table (a compacted run): numeric columns become the frame without a copy
    (a float's nulls NaN in place); the frame equals the copying path's, bit for bit, and is writable."""
    w = RunWriter(tmp_path / "r")
    w.write_meta(new_meta(name="r", rank=0, world_size=1, trainscope_version="t", torch_version="t",
                          python_version="t"))
    rng = np.random.default_rng(0)
    n = 5000
    vals = rng.standard_normal(n)
    vals[rng.random(n) < 0.3] = np.nan
    vals[:3] = [np.inf, -np.inf, -0.0]
    w.append(schema.LAYERS, {"step": np.arange(n) // 5, "layer": np.array(["a", "b", "c", "d", "e"] * (n // 5), dtype=object),
                             "kind": np.array(["grad"] * n, dtype=object), "module_type": np.array(["Linear"] * n, dtype=object),
                             "order": np.tile(np.arange(5, dtype=np.int32), n // 5),
                             **{s: vals * (i + 1) for i, s in enumerate(schema.LAYER_STATS)}})
    w.append(schema.SCALARS, {"step": np.arange(n), "name": np.array(["loss"] * n, dtype=object), "value": vals,
                              "epoch": np.full(n, np.nan), "time": np.zeros(n)})
    w.next_chunk()
    w.release()
    owned = []
    real = reader._owned_view

    def counted(*a):
        out = real(*a)
        owned.append(out is not None)
        return out

    monkeypatch.setattr(reader, "_owned_view", counted)
    run = trainscope.load_run(tmp_path / "r")
    assert sum(owned) >= 12  # the layers' step, order, stats, rank, attempt and the scalars' numbers
    monkeypatch.setattr(reader, "_owned_view", lambda *a: None)
    copied = trainscope.load_run(tmp_path / "r")
    for t in (schema.LAYERS, schema.SCALARS):
        pd.testing.assert_frame_equal(getattr(run, t), getattr(copied, t), check_exact=True)
        for c, dtype in schema.COLUMNS[t].items():
            if dtype != "string":
                a, b = getattr(run, t)[c].to_numpy(), getattr(copied, t)[c].to_numpy()
                assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), (t, c)
    assert np.isnan(run.layers["norm"]).sum() == np.isnan(vals).sum()
    run.layers.loc[0, "norm"] = 7.0  # writable, as every frame load_run returns
    run.layers["mean"] *= 2
    assert run.layers.loc[0, "norm"] == 7.0 and copied.layers.loc[0, "norm"] == np.inf
    pd.testing.assert_series_equal(run.layers["mean"], copied.layers["mean"] * 2)
