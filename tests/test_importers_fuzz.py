"""Issue 10: importers never guess silently. Property-based fuzzing of every importer (CSV/TSV, JSON
lines / JSON, TensorBoard) through the CLI, plus one test per failure the issue lists."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from typer.testing import CliRunner

from trainscope.cli import app
from trainscope.errors import TrainscopeError
from trainscope.rules.engine import diagnose_report
from trainscope.store.importers import import_log

runner = CliRunner()
FUZZ = settings(max_examples=100, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))

NAMES = ["step", "epoch", "loss", "val_loss", "train_loss", "acc", "lr", "Loss/train", "loss ", " step", "",
         "_step", "time", "note", "val/loss", "global_step"]
CELLS = hs.one_of(
    hs.integers(-5, 10**6).map(str), hs.floats(allow_nan=True, allow_infinity=True).map(repr),
    hs.sampled_from(["", "nan", "inf", "-inf", "ERR", "None", "null", "1e400", "9223372036854775808",
                     "-9223372036854775809", "1,5", "0x10", "tensor(0.5)", "   ", "\"q\"", "1.5.2", "NaN"]),
    hs.text(alphabet="0123456789.-eE,;\t xa", max_size=6),
)


def _diagnose(path: Path):
    r = runner.invoke(app, ["diagnose", str(path), "--no-html", "--format", "json", "--fail-on", "warning"])
    assert "Traceback" not in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code in (0, 1, 2), (r.exit_code, r.output)
    if r.exit_code == 2:
        assert r.output.startswith("trainscope: error:") and len(r.output.strip().splitlines()) == 1, r.output
        return None
    return json.loads(r.stdout[: r.stdout.rindex("}") + 1])


@FUZZ
@given(header=hs.lists(hs.sampled_from(NAMES), min_size=1, max_size=5),
       rows=hs.lists(hs.lists(CELLS, min_size=0, max_size=6), min_size=0, max_size=40),
       sep=hs.sampled_from([",", "\t", ";"]), trailing=hs.booleans())
def test_fuzz_csv_never_tracebacks(tmp_path_factory, header, rows, sep, trailing):
    path = tmp_path_factory.mktemp("csv") / "log.csv"
    end = sep if trailing else ""
    path.write_text("\n".join([sep.join(header)] + [sep.join(r) + end for r in rows]))
    _diagnose(path)


JSON_VALUES = hs.recursive(
    hs.one_of(hs.none(), hs.booleans(), hs.integers(-10**30, 10**30), hs.floats(), hs.text(max_size=5)),
    lambda children: hs.lists(children, max_size=3) | hs.dictionaries(hs.sampled_from(NAMES), children, max_size=3),
    max_leaves=8,
)


@settings(FUZZ, max_examples=60)
@given(records=hs.lists(hs.dictionaries(hs.sampled_from(NAMES), JSON_VALUES, max_size=5), max_size=30),
       junk=hs.lists(hs.sampled_from(["{", "[1,2]", "nul", '{"loss": 1', "[" * 1500 + "]" * 1500]), max_size=3),
       as_json=hs.booleans())
def test_fuzz_json_never_tracebacks(tmp_path_factory, records, junk, as_json):
    folder = tmp_path_factory.mktemp("json")
    if as_json:
        path = folder / "history.json"
        path.write_text(json.dumps(records) if not junk else json.dumps(records)[:-1] + junk[0])
    else:
        path = folder / "log.jsonl"
        path.write_text("\n".join([json.dumps(r) for r in records] + junk))
    _diagnose(path)


@FUZZ
@given(n=hs.integers(5, 60), frac_bad=hs.floats(0.5, 1.0), seed=hs.integers(0, 10**6),
       garbage=hs.sampled_from(["ERR", "n/a", "--", "loss", "tensor(0.3)", "?"]),
       column=hs.sampled_from(["loss", "val_loss", "train_loss"]), with_step=hs.booleans())
def test_fuzz_mostly_unparsed_column_never_gives_a_warning(tmp_path_factory, n, frac_bad, seed, garbage, column,
                                                           with_step):
    rng = random.Random(seed)
    bad = set(rng.sample(range(n), max(1, round(frac_bad * n))))
    cells = [garbage if i in bad else repr(rng.choice([rng.uniform(0, 10), 1e30, float("nan"), -1.0, 0.0]))
             for i in range(n)]
    lines = ["step," + column if with_step else column]
    lines += [f"{i},{c}" if with_step else c for i, c in enumerate(cells)]
    path = tmp_path_factory.mktemp("bad") / "log.csv"
    path.write_text("\n".join(lines))
    out = _diagnose(path)
    if out is not None:
        serious = [f["name"] for f in out["findings"] if f["severity"] in ("warning", "error")]
        assert serious == [], (serious, out["notes"])


@settings(max_examples=15, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(values=hs.lists(hs.floats(allow_nan=True, allow_infinity=True, width=32), min_size=1, max_size=30),
       steps=hs.lists(hs.integers(-10, 2**40), min_size=1, max_size=30), tag=hs.sampled_from(["loss", "x", "Loss/val"]),
       corrupt=hs.booleans())
def test_fuzz_tensorboard_never_tracebacks(tmp_path_factory, values, steps, tag, corrupt):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    folder = tmp_path_factory.mktemp("tb")
    with SummaryWriter(str(folder)) as w:
        for v, s in zip(values, steps):
            w.add_scalar(tag, v, s)
    if corrupt:
        f = next(folder.glob("*tfevents*"))
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data[: len(data) - 3]))
    _diagnose(folder)


# ----------------------------------------------------------------------------- the failures of issue 10
def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_trailing_delimiter_does_not_shift_columns(tmp_path):
    p = _write(tmp_path, "t.csv", "step,loss\n" + "".join(f"{i},{2 / (i + 1):.4f},\n" for i in range(60)))
    run = import_log(p)
    assert run.scalar("train_loss").index.tolist() == list(range(60))
    assert run.scalar("train_loss").iloc[0] == 2.0
    assert any("trailing delimiter" in n for n in run.meta["notes"])


def test_shuffled_and_duplicate_steps_are_sorted_and_counted(tmp_path):
    rows = [f"{i},{1 / (i + 1):.5f}" for i in range(400)] + ["7,0.5", "7,0.25"]
    random.Random(0).shuffle(rows)
    run = import_log(_write(tmp_path, "s.csv", "step,loss\n" + "\n".join(rows)))
    loss = run.scalar("train_loss")
    assert loss.index.tolist() == list(range(400))
    assert any("not in step order: sorted" in n and "2 row(s) dropped" in n for n in run.meta["notes"])


def test_a_real_restart_still_supersedes(tmp_path):
    rows = [f"{s},{1.0:.1f}" for s in range(0, 300)] + [f"{s},0.5" for s in range(200, 400)]
    run = import_log(_write(tmp_path, "r.csv", "step,loss\n" + "\n".join(rows)))
    assert run.scalar("train_loss").loc[250] == 0.5 and len(run.scalar("train_loss")) == 400
    assert any("resumed run" in n for n in run.meta["notes"])


def test_steps_beyond_int64_are_refused(tmp_path):
    p = _write(tmp_path, "b.csv", "step,loss\n0,1.0\n9223372036854775808,0.5\n")
    with pytest.raises(TrainscopeError, match="does not fit a 64-bit step"):
        import_log(p)
    big = _write(tmp_path, "ok.csv", "step,loss\n9223372036854775806,1.0\n9223372036854775807,0.5\n")
    assert import_log(big).scalar("train_loss").index.tolist() == [2**63 - 2, 2**63 - 1]  # exact, no wrap


def test_a_mostly_unparsed_loss_is_not_used_and_said_so(tmp_path):
    lines = ["step,loss"] + [f"{i},{'ERR' if i % 5 else 1e6 * i}" for i in range(100)]
    p = _write(tmp_path, "err.csv", "\n".join(lines))
    with pytest.raises(TrainscopeError, match=r"no usable .*'loss': 80 of 100 cells \(80%\) are not numbers"):
        import_log(p)
    r = runner.invoke(app, ["diagnose", str(p), "--no-html"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1
    few = ["step,loss"] + [f"{i},{'ERR' if i == 3 else 1 / (i + 1)}" for i in range(100)]
    run = import_log(_write(tmp_path, "few.csv", "\n".join(few)))
    assert len(run.scalar("train_loss")) == 99
    assert any("1 of 100 cells are not numbers (e.g. 'ERR')" in n for n in run.meta["notes"])
    r = runner.invoke(app, ["diagnose", str(tmp_path / "few.csv"), "--no-html"])
    assert "note: few.csv: column 'loss': 1 of 100 cells are not numbers" in r.output


def test_colliding_column_names_and_deep_json_are_one_line_errors(tmp_path):
    p = _write(tmp_path, "c.csv", "step,loss,loss \n0,1,2\n1,2,3\n")
    with pytest.raises(TrainscopeError, match="columns 'loss' and 'loss ' have the same name"):
        import_log(p)
    deep = _write(tmp_path, "deep.json", "[" * 5000 + "]" * 5000)
    deep_l = _write(tmp_path, "deep.jsonl", '{"a":' * 5000 + "1" + "}" * 5000)
    for bad in (p, deep, deep_l):
        r = runner.invoke(app, ["diagnose", str(bad), "--no-html"])
        assert r.exit_code == 2 and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


def test_a_fifo_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "log.csv"
    os.mkfifo(fifo)
    with pytest.raises(TrainscopeError, match="not a regular file"):
        import_log(fifo)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.mkfifo(run_dir / "meta.json")
    r = runner.invoke(app, ["diagnose", str(run_dir), "--no-html"])
    assert r.exit_code == 2 and "not a regular file" in r.output
