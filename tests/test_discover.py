"""`trainscope diagnose DIR` finds what a framework wrote inside DIR: a trainscope run, Hugging Face
trainer_state.json (also in checkpoint-* folders: the latest), Lightning's metrics.csv
(lightning_logs/version_N: the latest), TensorBoard event files."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import trainscope
from trainscope.cli import app
from trainscope.store.discover import discover

runner = CliRunner()


def _state(path: Path, steps: int, loss0: float = 2.0) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    history = [{"loss": loss0 / (1 + s / 50), "learning_rate": 5e-5, "epoch": s / 100, "step": s}
               for s in range(10, steps + 10, 10)]
    (path / "trainer_state.json").write_text(json.dumps({"global_step": steps, "log_history": history}))
    return path / "trainer_state.json"


def _metrics_csv(folder: Path, epochs: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["epoch,step,train_loss,val_loss"]
    for e in range(epochs):
        lines.append(f"{e},{e * 10 + 9},{1.0 / (e + 1):.4f},")
        lines.append(f"{e},{e * 10 + 9},,{1.1 / (e + 1):.4f}")
    (folder / "metrics.csv").write_text("\n".join(lines))
    return folder


def _tiny_run(run_dir: Path, steps: int = 3) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    with trainscope.watch(model, run_dir, optimizer=opt) as probe:
        for _ in range(steps):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            probe.log(train_loss=loss)


def test_hf_output_dir_latest_checkpoint_state(tmp_path):
    out = tmp_path / "out"
    _state(out / "checkpoint-100", 100)
    latest = _state(out / "checkpoint-1000", 1000)  # numerically, not alphabetically, latest
    _state(out / "checkpoint-500", 500)
    assert discover(out) == latest
    run = trainscope.load_run(out)
    assert run.scalar("train_loss").index.max() == 1000
    assert run.meta["found_in"] == str(out)
    top = _state(out, 1200)  # the state the Trainer wrote at the end wins over any checkpoint's
    assert discover(out) == top


def test_trainscope_run_inside_wins_over_framework_logs(tmp_path):
    out = tmp_path / "out"
    _state(out / "checkpoint-10", 10)
    _tiny_run(out / "trainscope")
    assert discover(out) == out / "trainscope"
    run = trainscope.load_run(out)
    assert run.source == "trainscope" and run.has_layers


def test_lightning_logs_latest_version(tmp_path):
    logs = tmp_path / "lightning_logs"
    _metrics_csv(logs / "version_2", 3)
    _metrics_csv(logs / "version_10", 6)
    _metrics_csv(logs / "version_9", 4)
    assert discover(logs) == logs / "version_10"
    assert discover(tmp_path) == logs / "version_10"  # the project folder above lightning_logs too
    assert len(trainscope.load_run(tmp_path).scalar("val_loss")) == 6
    assert discover(logs / "version_2") == logs / "version_2"


def test_tensorboard_event_files_in_versions(tmp_path):
    pytest.importorskip("tensorboard", reason="TensorBoard logs need the tensorboard package")
    from torch.utils.tensorboard import SummaryWriter

    logs = tmp_path / "tb_logs" / "my_model"
    for version, n in ((0, 5), (1, 12)):
        with SummaryWriter(str(logs / f"version_{version}")) as w:
            for s in range(n):
                w.add_scalar("train_loss", 1.0 / (s + 1), s)
        time.sleep(0.01)
    assert discover(tmp_path / "tb_logs") == logs / "version_1"
    run = trainscope.load_run(tmp_path / "tb_logs")
    assert run.source == "tensorboard" and len(run.scalar("train_loss")) == 12


def test_cli_diagnose_on_output_dir_reads_what_is_inside(tmp_path):
    out = tmp_path / "out"
    _state(out / "checkpoint-300", 300)
    r = runner.invoke(app, ["diagnose", str(out), "--no-html", "--fail-on", "never"])
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    assert "checkpoint-300" in r.output  # says which file it read
    empty = tmp_path / "nothing"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("hello")
    r = runner.invoke(app, ["diagnose", str(empty), "--no-html"])
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_depth_limit(tmp_path):
    deep = tmp_path
    for i in range(7):
        deep = deep / f"d{i}"
    _metrics_csv(deep, 2)
    assert discover(tmp_path) == tmp_path  # not found: too deep to crawl for
    assert os.path.isdir(deep)
