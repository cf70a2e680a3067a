"""Tracking in meta.json (git, data fingerprint, environment, seeds, notes) and `trainscope compare`'s
configuration differences (issue 12 §4)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import trainscope
from trainscope.train.config_diff import config_diff, format_diff

ROOT = Path(__file__).resolve().parents[1]


def _run(run_dir: Path, lr: float, seed: int = 0, data_seed: int = 0, notes: str | None = None) -> Path:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(data_seed)
    x, y = torch.randn(64, 6, generator=g), torch.randint(0, 3, (64,), generator=g)
    with trainscope.watch(model, run_dir, optimizer=opt, criterion=loss_fn, notes=notes, every=5) as probe:
        for i in range(0, 64, 16):
            opt.zero_grad()
            loss = loss_fn(model(x[i:i + 16]), y[i:i + 16])
            loss.backward()
            opt.step()
            probe.log(train_loss=loss)
    return run_dir


def test_meta_records_git_data_env_seeds_and_notes(tmp_path):
    run = trainscope.load_run(_run(tmp_path / "a", 0.1, seed=7, notes="baseline, lr 0.1"))
    t = run.meta["tracking"]
    assert run.meta["notes"] == "baseline, lr 0.1"
    assert t["seeds"]["torch"] == 7
    assert t["env"]["torch"] == torch.__version__ and t["env"]["world_size"] == 1
    data = t["data"]
    assert data["batches"] == 4 and data["inputs"] == [{"shape": [16, 6], "dtype": "float32", "device": "cpu"}]
    assert data["targets"] == {"shape": [16], "dtype": "int64"} and len(data["hash"]) == 16
    git = t["git"]  # the tests run inside the project's repository
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    if git is not None:
        assert git["commit"] == head and isinstance(git["dirty"], bool)


def test_data_fingerprint_tells_same_data_from_different_data(tmp_path):
    h = [trainscope.load_run(_run(tmp_path / n, 0.1, data_seed=d)).meta["tracking"]["data"]["hash"]
         for n, d in (("a", 0), ("b", 0), ("c", 1))]
    assert h[0] == h[1] != h[2]


def test_compare_prints_exactly_what_differs(tmp_path):
    a = _run(tmp_path / "a", 0.1, notes="lr 0.1")
    b = _run(tmp_path / "b", 0.01, data_seed=1, notes="lr 0.01, other data")
    metas = [trainscope.load_run(p).meta for p in (a, b)]
    differ, values, same = config_diff(metas)
    assert values["optimizer.param_groups[0].lr"] == ["0.1", "0.01"]
    assert "data.hash" in differ and "notes" in differ and same > 10
    assert not any(k.startswith(("model.", "env.", "code.", "criterion.")) for k in differ), differ
    from trainscope.cli import app

    r = CliRunner().invoke(app, ["compare", str(a), str(b), "--no-diagnose"])
    assert r.exit_code == 0, r.output
    assert "Configuration differences" in r.output and "optimizer.param_groups[0].lr" in r.output
    assert "data.hash" in r.output and "lr 0.01, other data" in r.output
    same_runs = format_diff(["a", "a2"], [metas[0], metas[0]])
    assert same_runs.startswith("Configuration: all")


def test_compare_on_two_sample_runs_shows_the_case_study_changes():
    from trainscope.cli import app

    runs = [str(ROOT / "sample_runs" / n) for n in ("streamrec-baseline", "healthy-streamrec-full")]
    r = CliRunner().invoke(app, ["compare", *runs, "--no-diagnose", "--format", "markdown"])
    assert r.exit_code == 0, r.output
    out = r.output
    for key in ("optimizer.class", "schedule.class", "model.layers.BatchNorm1d", "config.experiment.model.init"):
        assert f"| {key} |" in out, key
    assert "| optimizer.class | Adam | AdamW |" in out
    assert "| config.trainer.early_stopping | False | True |" in out


def test_fingerprint_of_a_device_tensor_is_deferred_not_synced():
    from trainscope.probe.tracking import Tracking

    t = Tracking()
    x = torch.arange(10.0)
    t.on_batch((x,))
    assert t._pending  # nothing hashed inside the step
    fp = t.data_fingerprint()
    assert fp["batches"] == 1 and not t._pending and fp["inputs"][0]["shape"] == [10]
    if not torch.cuda.is_available():
        pytest.skip("no GPU: the deferred path is covered on the device machine")
    t2 = Tracking()
    t2.on_batch((x.cuda(),))
    assert t2._pending  # hashed at the next meta write
    assert t2.data_fingerprint()["hash"] == fp["hash"]  # the same values hash the same on CPU and GPU
