"""Importers for logs trainscope did not record: CSV/TSV (Keras, Lightning), JSON lines, TensorBoard."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from trainscope.errors import TrainscopeError
from trainscope.rules.engine import diagnose_report
from trainscope.store.importers import import_log, is_log, normalize_name

DATA = Path(__file__).parent / "data"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_keras_csvlogger(tmp_path):
    rows = ["epoch,accuracy,loss,val_accuracy,val_loss"]
    rows += [f"{e},{0.5 + e / 40:.3f},{1.0 / (e + 1):.4f},{0.5 + e / 50:.3f},{1.2 / (e + 1):.4f}" for e in range(10)]
    run = import_log(write(tmp_path / "training.log.csv", "\n".join(rows)))
    assert run.source == "csv"
    assert {"train_loss", "val_loss", "train_acc", "val_acc"} <= set(run.scalar_names())
    assert run.scalar("val_loss").index.tolist() == list(range(10))  # the epoch is the step
    assert run.scalars["epoch"].notna().all()


def test_lightning_metrics_csv_with_train_and_val_on_separate_rows(tmp_path):
    lines = ["epoch,step,train_loss_step,train_loss_epoch,val_loss,val_acc"]
    step = 0
    for epoch in range(8):
        for _ in range(5):
            step += 10
            lines.append(f"{epoch},{step - 1},{2.0 / (1 + step / 50):.4f},,,")
        lines.append(f"{epoch},{step - 1},,,{2.1 / (1 + step / 60):.4f},{0.5 + epoch / 20}")
        lines.append(f"{epoch},{step - 1},,{2.0 / (1 + step / 55):.4f},,")
    folder = tmp_path / "lightning_logs" / "version_0"
    folder.mkdir(parents=True)
    write(folder / "metrics.csv", "\n".join(lines))
    assert is_log(folder)
    run = import_log(folder)  # the folder of metrics.csv
    assert len(run.scalar("train_loss")) == 40  # the per-step column wins the name
    assert "train_loss_epoch" in run.scalar_names()  # the other keeps its own name
    assert len(run.scalar("val_loss")) == 8
    assert run.scalars[run.scalars["name"] == "val_loss"]["value"].notna().all()  # empty cells are not NaN values


def test_tsv_nan_strings_gaps_and_restart(tmp_path):
    lines = ["step\tloss\tval_loss"]
    lines += [f"{s}\t{1.0 / (1 + s / 100):.4f}\t" for s in range(0, 300)]
    lines += [f"{s}\t{0.5:.4f}\t0.6" for s in range(200, 400)]  # restart from a step-200 checkpoint
    lines += ["400\tnan\t", "401\t\t", "402\tinf\t"]
    run = import_log(write(tmp_path / "log.tsv", "\n".join(lines)))
    loss = run.scalar("train_loss")
    assert loss.index.is_unique and loss.index.max() == 402
    assert loss.loc[250] == 0.5  # the restarted attempt's value, not the superseded one
    assert math.isnan(loss.loc[400]) and math.isinf(loss.loc[402]) and 401 not in loss.index
    report = diagnose_report(run, select=["divergence"])
    assert report.findings and report.findings[0].evidence_dict["first_nonfinite_step"] == 400


def test_validation_rows_written_after_the_epochs_training_rows_are_not_a_restart(tmp_path):
    # some loggers flush an epoch's validation row after training rows of later steps
    lines = ["step,train_loss,val_loss"]
    for epoch in range(5):
        lines += [f"{epoch * 100 + s},{1 / (1 + epoch + s / 100):.4f}," for s in range(0, 100, 10)]
        lines.append(f"{epoch * 100 + 50},,{1.1 / (1 + epoch):.4f}")  # mid-epoch eval, written late
    run = import_log(write(tmp_path / "late_val.csv", "\n".join(lines)))
    assert len(run.scalar("train_loss")) == 50 and len(run.scalar("val_loss")) == 5


def test_semicolon_csv_and_keep_unknown_metrics(tmp_path):
    lines = ["iteration;training_loss;my_metric;note"] + [f"{i};{1 / (i + 1)};{i * 2};ok" for i in range(50)]
    run = import_log(write(tmp_path / "m.csv", "\n".join(lines)))
    assert set(run.scalar_names()) == {"train_loss", "my_metric"}
    assert len(run.scalar("my_metric")) == 50


def test_thousands_of_steps(tmp_path):
    rng = np.random.default_rng(0)
    steps = np.arange(20000)
    loss = 2.0 * np.exp(-steps / 4000) + 0.3 + rng.normal(0, 0.1, len(steps))
    (tmp_path / "big.csv").write_text("step,loss\n" + "\n".join(f"{s},{v:.5f}" for s, v in zip(steps, loss)))
    run = import_log(tmp_path / "big.csv")
    assert len(run.scalar("train_loss")) == 20000
    report = diagnose_report(run, select=["TS1"])
    assert {f.name for f in report.findings} <= {"no-validation"}  # a healthy noisy curve


def test_jsonl_history_with_truncated_last_line(tmp_path):
    lines = [json.dumps({"epoch": e, "loss": 1 / (e + 1), "val_loss": 1.1 / (e + 1)}) for e in range(6)]
    lines.append('{"epoch": 6, "loss": 0.1')  # cut off by a crash
    run = import_log(write(tmp_path / "history.jsonl", "\n".join(lines)))
    assert run.source == "jsonl" and len(run.scalar("val_loss")) == 6


def test_jsonl_train_and_val_in_separate_records(tmp_path):
    lines = []
    for step in range(1, 101):
        lines.append(json.dumps({"step": step, "loss": 1 / step}))
        if step % 20 == 0:
            lines.append(json.dumps({"step": step, "val_loss": 1.2 / step, "val_acc": None}))
    run = import_log(write(tmp_path / "log.jsonl", "\n".join(lines)))
    assert run.scalar("train_loss").notna().all() and len(run.scalar("train_loss")) == 100
    assert len(run.scalar("val_loss")) == 5 and "val_acc" not in run.scalar_names()


def test_keras_history_json_dict(tmp_path):
    hist = {"loss": [1.0, 0.8, 0.7], "val_loss": [1.1, 0.9, 0.95], "lr": [0.001] * 3}
    run = import_log(write(tmp_path / "history.json", json.dumps(hist)))
    assert set(run.scalar_names()) == {"train_loss", "val_loss", "lr/0"}


def test_tensorboard_pytorch_summarywriter(tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path / "tb")) as w:
        for s in range(100):
            w.add_scalar("Loss/train", 2.0 / (1 + s / 20), s)
            if s % 20 == 19:
                w.add_scalar("Loss/val", 2.2 / (1 + s / 25), s)
            w.add_scalar("learning_rate", 1e-3, s)
    assert is_log(tmp_path / "tb")
    run = import_log(tmp_path / "tb")
    assert run.source == "tensorboard"
    assert len(run.scalar("train_loss")) == 100 and len(run.scalar("val_loss")) == 5
    assert "lr/0" in run.scalar_names()


def test_tensorboard_keras_layout_train_and_validation_folders(tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    for split, scale in (("train", 1.0), ("validation", 1.2)):
        with SummaryWriter(str(tmp_path / "logs" / split)) as w:
            for e in range(5):
                w.add_scalar("epoch_loss", scale / (e + 1), e)
    run = import_log(tmp_path / "logs")
    assert set(run.scalar_names()) == {"train_loss", "val_loss"}


def test_tensorboard_missing_extra_says_which_pip_install(tmp_path, monkeypatch):
    import builtins

    (tmp_path / "events.out.tfevents.1.host").write_bytes(b"\x00" * 16)
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(TrainscopeError, match=r'pip install "trainscope\[tensorboard\]"'):
        import_log(tmp_path)


@pytest.mark.parametrize(
    "content,match",
    [
        ("", "empty"),
        ("step,loss\n", "no data rows"),
        ("name,comment\nfoo,bar\nbaz,qux\n", "no numeric metric columns"),
        ("step,accuracy\n1,0.5\n2,0.6\n", "no loss column"),
        (b"\x00\x01\x02\xff\xfe binary", "binary"),
    ],
)
def test_bad_csv_is_one_clear_error(tmp_path, content, match):
    p = tmp_path / "bad.csv"
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(TrainscopeError, match=match):
        import_log(p)


def test_name_normalisation():
    assert normalize_name("Loss/train") == "train_loss"
    assert normalize_name("validation_loss") == "val_loss"
    assert normalize_name("val_categorical_accuracy") == "val_acc"
    assert normalize_name("lr-AdamW") == "lr/0"
    assert normalize_name("loss_box_reg") == "loss_box_reg"  # unknown: kept


def test_streamrec_fixture_roundtrip():
    run = import_log(DATA / "streamrec_baseline.csv")
    assert run.scalar("val_loss").idxmin() == 13 and run.scalar("val_loss").min() == pytest.approx(0.562)


# ----------------------------------------------------------------------------- real runs, exported
def _export(run, folder: Path) -> dict[str, Path]:
    """The same real run written as the logs other tools produce."""
    import pandas as pd

    s = run.scalars
    train_rows = s[s["name"] == "train_loss"]
    val_rows = s[s["name"] == "val_loss"]
    out: dict[str, Path] = {}
    # Lightning CSVLogger: per-step train rows and per-epoch val rows, empty cells elsewhere
    lines = ["epoch,step,train_loss_step,val_loss"]
    for _, r in pd.concat([train_rows, val_rows]).sort_values(["step", "name"], kind="stable").iterrows():
        cells = (f"{r['value']}," if r["name"] == "train_loss" else f",{r['value']}")
        lines.append(f"{int(r['epoch']) - 1},{r['step']},{cells}")
    out["lightning"] = folder / "metrics.csv"
    out["lightning"].write_text("\n".join(lines))
    # Keras CSVLogger: one row per epoch (mean train loss), 0-based epochs
    per_epoch = train_rows.groupby("epoch")["value"].mean()
    vals = val_rows.set_index("epoch")["value"]
    out["keras"] = folder / "keras.csv"
    out["keras"].write_text("epoch,loss,val_loss\n" + "\n".join(
        f"{int(e) - 1},{per_epoch[e]},{vals[e]}" for e in per_epoch.index))
    # JSON lines, one record per log call
    out["jsonl"] = folder / "history.jsonl"
    out["jsonl"].write_text("\n".join(json.dumps({"step": int(r["step"]), r["name"]: r["value"]})
                                      for _, r in pd.concat([train_rows, val_rows]).sort_values("step", kind="stable").iterrows()))
    # TensorBoard through torch's SummaryWriter
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(folder / "tb")) as w:
        for _, r in pd.concat([train_rows, val_rows]).sort_values("step", kind="stable").iterrows():
            w.add_scalar("loss/train" if r["name"] == "train_loss" else "loss/val", r["value"], int(r["step"]))
    out["tensorboard"] = folder / "tb"
    return out


def test_loss_rules_agree_on_a_real_run_and_its_exported_logs(tmp_path):
    pytest.importorskip("tensorboard")
    from helpers_training import mlp, teacher_task, train

    run = train(tmp_path / "run", mlp(hidden=256, depth=3), teacher_task(n=64, label_noise=0.3), epochs=40,
                batch_size=16)
    probe = {f.name: f for f in diagnose_report(run, select=["TS1"]).findings}
    assert {"overfitting", "no-early-stopping"} <= set(probe)
    best = probe["overfitting"].evidence_dict["best_epoch"]  # 1-based, as the loop logged it
    for kind, path in _export(run, tmp_path).items():
        imported = import_log(path)
        found = {f.name: f for f in diagnose_report(imported, select=["TS1"]).findings}
        assert {"overfitting", "no-early-stopping"} <= set(found), (kind, sorted(found))
        assert "divergence" not in found, kind  # empty cells / missing keys are not NaN losses
        report = diagnose_report(imported)
        assert not report.crashed, (kind, report.crashed)
        if kind in ("lightning", "keras"):  # these logs carry the (0-based) epoch
            assert found["overfitting"].evidence_dict["best_epoch"] == best - 1, kind
        layer_rules = [s for s in report.skipped if s.reason == "no layer statistics"]
        assert layer_rules, kind  # rules that need layer statistics say so instead of guessing


def test_hugging_face_trainer_state_json(tmp_path):
    history = []
    for step in range(10, 310, 10):
        history.append({"loss": 2.0 / (1 + step / 100), "learning_rate": 5e-5, "grad_norm": 1.2,
                        "epoch": step / 100, "step": step})
        if step % 100 == 0:
            history.append({"eval_loss": 2.1 / (1 + step / 120), "eval_accuracy": 0.6, "epoch": step / 100,
                            "step": step})
    history.append({"train_runtime": 12.3, "train_loss": 1.1, "epoch": 3.0, "step": 300})  # the summary record
    state = {"best_metric": None, "global_step": 300, "log_history": history}
    run = import_log(write(tmp_path / "trainer_state.json", json.dumps(state)))
    assert len(run.scalar("val_loss")) == 3 and "val_acc" in run.scalar_names() and "lr/0" in run.scalar_names()
    assert run.scalar("train_loss").index.max() == 300


def test_wandb_history_export(tmp_path):
    lines = ["_step,_runtime,_timestamp,train/loss,val/loss"]
    lines += [f"{i},{i * 0.1},{1.7e9 + i},{1 / (1 + i / 50):.4f},{'' if i % 50 else f'{1.1 / (1 + i / 60):.4f}'}"
              for i in range(300)]
    run = import_log(write(tmp_path / "wandb_export.csv", "\n".join(lines)))
    assert set(run.scalar_names()) == {"train_loss", "val_loss"}
    assert len(run.scalar("val_loss")) == 6
