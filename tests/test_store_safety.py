"""Issue 10: the store never loses a run, never mixes two runs, and never reads damage as data.

Each test here failed on the store before this change: reused run dirs averaged two runs, two live
writers interleaved, a flipped bit loaded as altered values, unreadable folders read as empty,
an empty run gave exit 0, and long runs left one file per flush.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import trainscope
from trainscope.cli import app
from trainscope.errors import TrainscopeError
from trainscope.rules.engine import diagnose_report
from trainscope.store.writer import RunWriter

SCRIPTS = Path(__file__).parent / "scripts"
runner = CliRunner()
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def _program(path: Path, lr: float = 0.1, steps: int = 30, **options) -> Path:
    """One deterministic program: a tiny classifier, train and val loss, every step logged."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    crit = nn.CrossEntropyLoss()
    x, y = torch.randn(128, 4), torch.randint(0, 3, (128,))
    with trainscope.watch(model, path, optimizer=opt, criterion=crit, every=4, **options) as probe:
        for s in range(steps):
            i = (s * 16) % 128
            opt.zero_grad()
            loss = crit(model(x[i:i + 16]), y[i:i + 16])
            loss.backward()
            opt.step()
            probe.log(train_loss=loss, epoch=s // 8)
            if s % 8 == 7:
                with torch.no_grad():
                    probe.log(val_loss=crit(model(x), y))
    return path


def _tables(run) -> dict[str, pd.DataFrame]:
    out = {}
    for t in ("scalars", "layers", "events", "init"):
        df = getattr(run, t).drop(columns=["time"], errors="ignore")
        if t == "scalars":  # step timing (time/data, ...) is wall-clock, like the time column
            df = df[~df["name"].astype(str).str.startswith("time/")]
        out[t] = df.sort_values(list(df.columns)).reset_index(drop=True)
    return out


def _cli(*args):
    r = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in r.output, r.output
    return r


# ----------------------------------------------------------------------------- attempts
def test_rerun_into_the_same_dir_is_a_new_attempt_never_averaged(tmp_path):
    run_dir = tmp_path / "exp1"
    _program(run_dir, lr=40.0)  # the buggy run: diverges
    buggy = diagnose_report(run_dir, select=["TS1"])
    assert "divergence" in {f.name for f in buggy.findings}
    _program(run_dir, lr=0.1)  # "fix the bug and rerun the same script"
    run = trainscope.load_run(run_dir)
    assert run.meta["attempt"] == 1 and run.meta["attempts"] == [0, 1]
    assert run.scalar("train_loss").index.tolist() == list(range(30))
    assert set(run.scalars["attempt"]) == {1} and len(run.init) == 2  # one init table, not two
    assert run.meta["optimizer"]["param_groups"][0]["lr"] == 0.1
    fixed = diagnose_report(run_dir, select=["TS1"])
    assert not {"divergence", "lr-too-high"} & {f.name for f in fixed.findings}
    old = trainscope.load_run(run_dir, attempt=0)
    assert old.meta["optimizer"]["param_groups"][0]["lr"] == 40.0 and len(old.init) == 2
    with pytest.raises(TrainscopeError, match="no attempt 5; this run holds attempt"):
        trainscope.load_run(run_dir, attempt=5)
    r = _cli("diagnose", run_dir, "--no-html", "--select", "TS1")
    assert "read attempt 1 (the latest" in r.output and r.exit_code == 0
    r = _cli("diagnose", run_dir, "--no-html", "--select", "TS1", "--attempt", "0", "--format", "json")
    assert r.exit_code == 1 and '"attempt": 0' in r.output


def test_second_live_writer_of_a_rank_is_refused_in_process(tmp_path):
    w = RunWriter(tmp_path / "r")
    with pytest.raises(TrainscopeError, match="already being written by pid"):
        RunWriter(tmp_path / "r")
    RunWriter(tmp_path / "r", rank=1).release()  # another rank is another shard
    w.release()
    RunWriter(tmp_path / "r").release()


def test_resume_continues_the_last_attempt_at_the_writer(tmp_path):
    run_dir = _program(tmp_path / "r", steps=12)
    w = RunWriter(run_dir, resume=True)
    assert w.attempt == 0 and w.start_step == 12 and w.resumed
    w.release()
    w = RunWriter(run_dir)
    assert w.attempt == 1 and w.start_step == 0
    w.release()


# ----------------------------------------------------------------------------- determinism, compaction
def test_flush_timing_never_changes_the_tables_or_findings(tmp_path):
    a = trainscope.load_run(_program(tmp_path / "a", flush_seconds=0.0, flush_rows=1))
    b = trainscope.load_run(_program(tmp_path / "b", flush_seconds=1e9, flush_rows=10**9))
    c = trainscope.load_run(_program(tmp_path / "c", flush_seconds=0.0, flush_rows=7))
    ta, tb, tc = _tables(a), _tables(b), _tables(c)
    for t in ta:
        assert len(ta[t]) > 0
        pd.testing.assert_frame_equal(ta[t], tb[t])
        pd.testing.assert_frame_equal(ta[t], tc[t])
    fa = [(f.name, f.severity, f.message) for f in diagnose_report(a).findings]
    assert fa == [(f.name, f.severity, f.message) for f in diagnose_report(b).findings]
    assert fa == [(f.name, f.severity, f.message) for f in diagnose_report(c).findings]
    # flushed at every step (~60 chunks per table), compacted to one file per table at close
    for t in ("scalars", "layers", "events", "init"):
        assert len(list((tmp_path / "a" / t).glob("*.parquet"))) == 1, t


def test_compaction_while_running_keeps_a_handful_of_files(tmp_path):
    w = RunWriter(tmp_path / "r", compact_every=4)
    for i in range(100):
        w.append("scalars", {"step": [i], "name": ["x"], "value": [float(i)]})
        w.next_chunk()
    files = list((tmp_path / "r" / "scalars").glob("*.parquet"))
    assert len(files) <= 3 * 4, len(files)  # at most compact_every-1 per level
    w.write_meta({"status": "running", "schema_version": "1.1"})
    df = trainscope.load_run(tmp_path / "r").scalars
    assert df["value"].tolist() == [float(i) for i in range(100)]
    w.release()


# ----------------------------------------------------------------------------- checksums
def test_every_bit_flip_in_a_chunk_is_named_and_skip_corrupt_reads_the_rest(tmp_path):
    run_dir = _program(tmp_path / "r", steps=12)
    chunk = next((run_dir / "layers").glob("*.parquet"))
    good = chunk.read_bytes()
    rng = random.Random(0)
    for pos in [0, 5, len(good) // 2, len(good) - 9, len(good) - 1] + rng.sample(range(len(good)), 14):
        bad = bytearray(good)
        bad[pos] ^= 1 << rng.randrange(8)
        chunk.write_bytes(bytes(bad))
        with pytest.raises(TrainscopeError) as e:
            trainscope.load_run(run_dir)
        assert str(chunk) in str(e.value) and "corrupt" in str(e.value) and "\n" not in str(e.value)
    run = trainscope.load_run(run_dir, skip_corrupt=True)
    assert run.layers.empty and len(run.scalar("train_loss")) == 12
    assert any(str(chunk) in n for n in run.meta["notes"])
    r = _cli("diagnose", run_dir, "--no-html")
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "--skip-corrupt" in r.output
    r = _cli("diagnose", run_dir, "--no-html", "--skip-corrupt", "--fail-on", "never")
    assert r.exit_code == 0 and "note: skipped" in r.output


# ----------------------------------------------------------------------------- unreadable, empty
def test_unreadable_is_an_error_not_an_empty_table(tmp_path, monkeypatch):
    run_dir = _program(tmp_path / "r", steps=6)
    loop = tmp_path / "loop"
    os.symlink(loop, loop)  # a symlink loop where the scalars folder was
    os.rename(run_dir / "scalars", tmp_path / "scalars.bak")
    os.symlink(loop, run_dir / "scalars")
    with pytest.raises(TrainscopeError, match="scalars: unreadable"):
        trainscope.load_run(run_dir)
    r = _cli("diagnose", run_dir, "--no-html")
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1
    os.unlink(run_dir / "scalars")
    os.rename(tmp_path / "scalars.bak", run_dir / "scalars")
    real_listdir = os.listdir

    def denied(path):
        if str(path).endswith("layers"):
            raise PermissionError(13, "Permission denied")
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", denied)  # what chmod 000 does for a non-root user
    with pytest.raises(TrainscopeError, match="layers: unreadable folder \\(Permission denied\\)"):
        trainscope.load_run(run_dir)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 folder anyway")
def test_chmod_000_folder_is_an_error(tmp_path):
    run_dir = _program(tmp_path / "r", steps=6)
    (run_dir / "scalars").chmod(0)
    try:
        with pytest.raises(TrainscopeError, match="unreadable"):
            trainscope.load_run(run_dir)
    finally:
        (run_dir / "scalars").chmod(0o755)


def _assert_empty_run(d: Path) -> None:
    with pytest.raises(TrainscopeError, match="holds no recorded data"):
        trainscope.load_run(d)
    r = _cli("diagnose", d, "--no-html")
    assert r.exit_code == 2 and "no recorded data" in r.output and len(r.output.strip().splitlines()) == 1


def test_a_run_dir_with_only_meta_json_is_exit_2(tmp_path):
    only_meta = tmp_path / "only_meta"
    only_meta.mkdir()
    (only_meta / "meta.json").write_text('{"schema_version": "1.1", "status": "finished"}')
    _assert_empty_run(only_meta)  # (a run killed before its first flush: in the probe kill test below)


# ----------------------------------------------------------------------------- kills and two writers
def _start(script: str, run_dir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPTS / script), str(run_dir), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def _flushed(proc: subprocess.Popen) -> list[int]:
    out = proc.stdout.read()
    return [int(line) for line in out.split() if line.lstrip("-").isdigit()]


def _markers(run_dir: Path, attempt: int) -> list[int]:
    run = trainscope.load_run(run_dir, attempt=attempt)
    return sorted(int(v) for v in run.scalars.loc[run.scalars["name"] == "marker", "value"])


def _kill_at_random(script: str, run_dir: Path, kills: int, seed: int, max_wait: float) -> None:
    rng = random.Random(seed)
    for attempt in range(kills):
        proc = _start(script, run_dir)
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        first = proc.stdout.readline()  # at least one flush done
        time.sleep(rng.uniform(0.0, max_wait))  # then kill at a random point (mostly inside a flush)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        printed = [int(first)] + _flushed(proc)
        got = _markers(run_dir, attempt)
        assert got == list(range(len(got))), f"attempt {attempt}: a value lost or doubled"
        assert len(got) >= max(printed) + 1, f"attempt {attempt}: a flushed value is missing"
        assert trainscope.load_run(run_dir, attempt=attempt).meta["status"] == "crashed"
    temps = [p.name for t in ("scalars", "layers", "events", "init") for p in (run_dir / t).iterdir()
             if p.name.startswith(".tmp")]
    assert all(f"-a{kills - 1}-" in n for n in temps), temps  # each new writer removed what a kill left


def test_sigkill_inside_store_flushes_and_compactions_keeps_every_value_once(tmp_path):
    _kill_at_random("store_writer.py", tmp_path / "bare", kills=5, seed=0, max_wait=0.3)


def test_sigkill_at_random_points_of_a_probe_flush_keeps_every_value_once(tmp_path):
    early = _start("flush_kill.py", tmp_path / "early", "--no-flush")  # runs alongside: killed before any flush
    try:
        _kill_at_random("flush_kill.py", tmp_path / "probe", kills=1, seed=1, max_wait=0.6)
        assert early.stdout.readline().strip() == "ready"
    finally:
        os.kill(early.pid, signal.SIGKILL)
        early.wait(timeout=30)
    _assert_empty_run(tmp_path / "early")


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("TRAINSCOPE_SLOW"), reason="slow: set TRAINSCOPE_SLOW=1")
def test_sigkill_many_probe_flushes(tmp_path):
    _kill_at_random("flush_kill.py", tmp_path / "probe", kills=8, seed=2, max_wait=1.0)


def test_two_writers_one_dir_second_is_refused_and_nothing_is_mixed(tmp_path):
    run_dir = tmp_path / "shared"
    a = _start("store_writer.py", run_dir)
    assert a.stdout.readline().strip() == "ready"
    b = _start("store_writer.py", run_dir, "--steps", "5")
    out_b, _ = b.communicate(timeout=60)
    assert b.returncode == 3 and out_b.startswith("refused: ") and "already being written by pid" in out_b
    os.kill(a.pid, signal.SIGKILL)
    a.wait(timeout=30)
    flushed_a = _flushed(a)
    got = _markers(run_dir, 0)
    assert got == list(range(len(got))) and len(got) >= max(flushed_a, default=-1) + 1
    b = _start("store_writer.py", run_dir, "--steps", "5")  # the first writer gone: an attempt of its own
    out_b, err = b.communicate(timeout=60)
    assert b.returncode == 0, err
    assert _markers(run_dir, 1) == [0, 1, 2, 3, 4] and _markers(run_dir, 0) == got


def test_a_second_watch_on_a_live_run_dir_is_refused(tmp_path):
    model = nn.Linear(2, 1)
    with trainscope.watch(model, tmp_path / "r", flush_seconds=0.0):
        # watch() never stops the training (issue 9): one warning, a probe that records nothing
        with pytest.warns(RuntimeWarning, match="already being written"):
            second = trainscope.watch(nn.Linear(2, 1), tmp_path / "r")
        assert type(second).__name__ == "DisabledProbe"
        second.close()
    assert json.loads((tmp_path / "r" / "meta.json").read_text())["status"] == "finished"  # not overwritten
    trainscope.watch(model, tmp_path / "r").close()  # closed: the lock is free again


# ----------------------------------------------------------------------------- one-line errors (item 8)
def test_meta_fields_of_the_wrong_type_do_not_crash_the_report(tmp_path):
    import json

    pytest.importorskip("trainscope.report")
    run_dir = _program(tmp_path / "r", steps=6)
    meta = json.loads((run_dir / "meta.json").read_text())
    meta.update(steps="many", model=[1, 2], world_size="two", every=None, optimizer="SGD")
    (run_dir / "meta.json").write_text(json.dumps(meta))
    run = trainscope.load_run(run_dir)
    assert run.meta["steps"] == 6 and run.meta["model"] is None and run.meta["world_size"] is None
    assert any("'steps' is 'many'" in n for n in run.meta["notes"])
    r = _cli("diagnose", run_dir, "--html", tmp_path / "report.html", "--fail-on", "never")
    assert r.exit_code == 0 and (tmp_path / "report.html").exists(), r.output
    assert "HTML report not written" not in r.output


def test_load_run_wraps_every_chunk_error_naming_the_chunk(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    run_dir = _program(tmp_path / "r", steps=6)
    chunk = next((run_dir / "scalars").glob("*.parquet"))
    good = chunk.read_bytes()
    # a chunk of the right columns but wrong types, written by someone else (not in the manifest)
    bad_types = pa.table({"step": ["x"], "name": [1], "value": ["v"], "epoch": [0.0], "rank": [0], "time": [0.0]})
    pq.write_table(bad_types, run_dir / "scalars" / "r0-a0-999999-p1.parquet")
    with pytest.raises(TrainscopeError, match="r0-a0-999999-p1.parquet: unreadable scalars chunk"):
        trainscope.load_run(run_dir)
    (run_dir / "scalars" / "r0-a0-999999-p1.parquet").unlink()
    chunk.unlink()
    with pytest.raises(TrainscopeError, match="listed in the manifest is missing"):
        trainscope.load_run(run_dir)
    chunk.write_bytes(good)
    chunk.chmod(0o644)
    real_open = os.open

    def denied(path, *a, **k):
        if str(path) == str(chunk):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **k)

    monkeypatch.setattr(os, "open", denied)  # what a chmod 000 chunk does for a non-root user
    with pytest.raises(TrainscopeError, match=f"{chunk.name}: unreadable chunk \\(Permission denied\\)"):
        trainscope.load_run(run_dir)


def test_reading_a_live_run_while_it_compacts(tmp_path):
    proc = _start("store_writer.py", tmp_path / "live")
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.stdout.readline()
        for _ in range(15):  # the writer compacts every 4 chunks: reads race with it
            got = _markers(tmp_path / "live", 0)
            assert got == list(range(len(got)))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
