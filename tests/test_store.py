"""The run store: crash safety, DDP shards, pandas readability and clear errors on bad input."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import trainscope
from trainscope.errors import TrainscopeError
from trainscope.store import schema

SCRIPTS = Path(__file__).parent / "scripts"


def _small_run(path: Path) -> Path:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with trainscope.watch(model, path, optimizer=opt, every=2) as probe:
        for _ in range(5):
            opt.zero_grad()
            loss = model(torch.randn(16, 4)).pow(2).mean()
            loss.backward()
            opt.step()
            probe.log(train_loss=loss)
    return path


def test_pandas_reads_tables_directly(tmp_path):
    run_dir = _small_run(tmp_path / "r")
    scalars = pd.read_parquet(run_dir / "scalars")
    layers = pd.read_parquet(run_dir / "layers")
    assert {"step", "name", "value", "epoch", "rank"} <= set(scalars.columns)
    assert {"step", "layer", "kind", "norm", "mean", "std", "max_abs", "frac_zero", "nonfinite"} <= set(layers.columns)
    assert set(pd.read_parquet(run_dir / "init")["layer"]) == {"0", "2"}
    run = trainscope.load_run(run_dir)
    assert run.meta["status"] == "finished" and run.meta["schema_version"] == schema.SCHEMA_VERSION
    assert len(run.scalar("train_loss")) == 5


def test_sigkill_leaves_a_readable_store(tmp_path):
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(SCRIPTS / "train_forever.py"), str(run_dir)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    run = trainscope.load_run(run_dir)
    assert run.meta["status"] == "crashed"  # the writer died without close()
    losses = run.scalar("train_loss")
    assert len(losses) >= 19 and list(losses.index[:19]) == list(range(19))
    assert not run.layers.empty
    # a chunk being written at the kill is a dot-named temp file: pandas and load_run skip it
    assert len(pd.read_parquet(run_dir / "scalars").query("name == 'train_loss'")) == len(losses)


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")
def test_ddp_two_ranks_merge_with_rank_column(tmp_path):
    torchrun = str(Path(sys.executable).parent / "torchrun")
    run_dir = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([torchrun, "--nproc_per_node=2", "--master_port=29533", str(SCRIPTS / "ddp_train.py"),
                          str(run_dir)], capture_output=True, text=True, timeout=240, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    run = trainscope.load_run(run_dir)
    assert run.meta["world_size"] == 2 and set(run.meta["ranks"]) == {"0", "1"}
    assert run.meta["status"] == "finished"
    assert set(run.scalars["rank"]) == {0, 1} and set(run.layers["rank"]) == {0, 1}
    per_rank = run.scalars[run.scalars.name == "train_loss"].groupby("rank").size()
    assert per_rank.tolist() == [16, 16]
    a = run.scalars[(run.scalars.name == "train_loss") & (run.scalars["rank"] == 0)]["value"].to_numpy()
    b = run.scalars[(run.scalars.name == "train_loss") & (run.scalars["rank"] == 1)]["value"].to_numpy()
    assert (a != b).any()  # each rank records its own data
    g = run.layers[(run.layers.kind == "grad") & (run.layers.layer == "0")].pivot_table(
        index="step", columns="rank", values="norm")
    assert (g[0] - g[1]).abs().max() < 1e-5 * g[0].abs().max()  # gradients are all-reduced by DDP


def test_bad_input_gives_one_clear_error(tmp_path):
    with pytest.raises(TrainscopeError, match="no such run directory"):
        trainscope.load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainscopeError, match="empty directory"):
        trainscope.load_run(tmp_path / "empty")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("hello")
    with pytest.raises(TrainscopeError, match="not a trainscope run"):
        trainscope.load_run(foreign)
    run_dir = _small_run(tmp_path / "trunc")
    chunk = sorted((run_dir / "layers").glob("*.parquet"))[0]
    chunk.write_bytes(chunk.read_bytes()[:40])
    with pytest.raises(TrainscopeError, match="corrupt or truncated chunk"):
        trainscope.load_run(run_dir)
    run_dir = _small_run(tmp_path / "badmeta")
    (run_dir / "meta.json").write_text("{not json")
    with pytest.raises(TrainscopeError, match="unreadable run metadata"):
        trainscope.load_run(run_dir)
    run_dir = _small_run(tmp_path / "wrongcols")
    pd.DataFrame({"a": [1]}).to_parquet(run_dir / "scalars" / "r0-999999.parquet")
    with pytest.raises(TrainscopeError, match="missing columns"):
        trainscope.load_run(run_dir)


def test_reopening_a_run_starts_a_new_attempt_kept_apart(tmp_path):
    run_dir = _small_run(tmp_path / "r")
    first = trainscope.load_run(run_dir)
    _small_run(run_dir)
    run = trainscope.load_run(run_dir)
    assert run.meta["attempt"] == 1 and run.meta["attempts"] == [0, 1]
    assert len(run.scalars[run.scalars.name == "train_loss"]) == 5  # the latest attempt only, never averaged
    assert set(run.scalars["attempt"]) == {1} and len(run.init) == len(first.init)
    again = trainscope.load_run(run_dir, attempt=0)
    assert again.meta["attempt"] == 0 and again.meta["started"] == first.meta["started"]
    cols = [c for c in first.scalars.columns if c != "time"]
    assert again.scalars[cols].equals(first.scalars[cols])


def test_chunks_are_written_in_step_order(tmp_path):
    """A flush's rows come from several collectors, out of step order; the writer stores each chunk (and
    each compacted one) stably sorted by step, the order load_run gives, so loading a big run sorts
    nothing. Rows of one step keep their order."""
    import pyarrow.parquet as pq

    from trainscope.store import schema
    from trainscope.store.writer import RunWriter, new_meta

    w = RunWriter(tmp_path / "r", compact_every=2)
    w.write_meta(new_meta(name="r", rank=0, world_size=1, trainscope_version="t", torch_version="t",
                          python_version="t"))
    nan = float("nan")
    for base in (0, 10):
        steps = [base + 3, base + 1, base + 2, base + 1]
        w.append(schema.SCALARS, {"step": steps, "name": ["a", "b", "c", "d"], "value": [1.0, 2.0, 3.0, 4.0],
                                  "epoch": [nan] * 4, "time": [0.0] * 4})
        w.next_chunk()  # one flush each, as the probe's buffer does
    files = sorted((tmp_path / "r" / schema.SCALARS).glob("*.parquet"))
    assert files  # compacted into one chunk of both appends
    for f in files:
        steps = pq.read_table(f).column("step").to_pylist()
        assert steps == sorted(steps)
    run = trainscope.load_run(tmp_path / "r")
    assert run.scalars.step.tolist() == [1, 1, 2, 3, 11, 11, 12, 13]
    assert run.scalars.name.tolist() == ["b", "d", "c", "a", "b", "d", "c", "a"]  # stable within a step
