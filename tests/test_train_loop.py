"""The Trainer end to end: resume equality, early stopping, checkpoints, recording with
trainscope.watch, the LR finder, the sanity checks, digits accuracy and the CLI commands."""
from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import trainscope
from trainscope.errors import TrainscopeError
from trainscope.train.checkpoint import Checkpointer, load_checkpoint
from trainscope.train.early_stopping import EarlyStopping
from trainscope.train.loop import Trainer
from trainscope.train.lr_finder import find_lr
from trainscope.train.presets import build
from trainscope.train.sanity import initial_loss, overfit_one_batch, peek, run_checks


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _trainer(exp, **kw):
    return Trainer(exp.model, exp.optimizer, exp.criterion, exp.splits.train, exp.splits.val,
                   config=exp.train_config, schedule=exp.schedule, test_data=exp.splits.test, **kw)


TINY = {"data": {"n_train": 400, "n_val": 200}, "model": {"hidden": [32, 16, 16, 8]},
        "train": {"epochs": 4, "batch_size": 64}}


# -- resume -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_resume_after_checkpoint_equals_uninterrupted_run_bitwise(tmp_path, precision):
    # dropout (global RNG), BatchNorm buffers, AdamW state, one-cycle schedule, shuffling, early-stopping
    # state and (fp16) the GradScaler must all come back for the runs to match bit for bit
    over = {**TINY, "train": {**TINY["train"], "precision": precision, "early_stopping": True, "patience": 10}}
    full = build("streamrec-full", overrides=over)
    _trainer(full).fit()

    first = build("streamrec-full", overrides=over)
    first.train_config.checkpoint_dir = str(tmp_path / "ck")
    _trainer(first).fit(until_epoch=2)
    resumed = build("streamrec-full", overrides=over)
    resumed.train_config.checkpoint_dir = str(tmp_path / "ck")
    tr = _trainer(resumed)
    h = tr.fit(resume_from=tmp_path / "ck")
    assert [r.epoch for r in h.epochs] == [1, 2, 3, 4]
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert tr.scheduler.last_epoch == tr.total_steps  # one-cycle stepped once per batch
    for ga, gb in zip(full.optimizer.param_groups, resumed.optimizer.param_groups):
        assert ga["lr"] == gb["lr"]


def test_checkpoints_keep_last_k_plus_best_and_hold_everything(tmp_path):
    exp = build("streamrec-baseline", overrides={**TINY, "train": {**TINY["train"], "epochs": 6}})
    exp.train_config.checkpoint_dir = str(tmp_path)
    exp.train_config.keep_last = 2
    h = _trainer(exp).fit()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["best.pt", "ckpt-epoch0005.pt", "ckpt-epoch0006.pt"]
    state = load_checkpoint(tmp_path)  # a folder means its latest checkpoint
    assert state["epoch"] == 6
    assert {"model", "optimizer", "scheduler", "scaler", "early_stopping", "rng", "best_epoch", "config"} <= set(state)
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == h.best_epoch
    assert Checkpointer(tmp_path).latest().name == "ckpt-epoch0006.pt"


def test_bad_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(TrainscopeError, match="no checkpoint"):
        load_checkpoint(tmp_path)
    (tmp_path / "ckpt-epoch0001.pt").write_text("not a checkpoint")
    with pytest.raises(TrainscopeError, match="could not be read"):
        load_checkpoint(tmp_path)


# -- early stopping ---------------------------------------------------------------------------------
def test_early_stopping_restores_best_weights_not_latest():
    # the baseline overfits within a few epochs: val loss rises after its minimum
    over = {**TINY, "train": {"epochs": 20, "batch_size": 32, "early_stopping": True, "patience": 3}}
    exp = build("streamrec-baseline", overrides=over)
    tr = _trainer(exp)
    h = tr.fit()
    assert h.stopped_epoch is not None and h.stopped_epoch < 20 and h.restored_best
    val = [r.val_loss for r in h.epochs]
    best = min(range(len(val)), key=val.__getitem__)
    assert h.stopped_epoch == h.epochs[best].epoch + 3
    now = tr.evaluate(exp.splits.val)["loss"]
    assert now == pytest.approx(val[best], rel=1e-6)
    assert now < val[-1]  # not the latest weights
    assert "in 3 epochs" in h.stop_reason


def test_early_stopping_clones_instead_of_shallow_copy():
    model = nn.Linear(3, 1)
    es = EarlyStopping(patience=2, min_delta=0.0)
    es.step(1.0, model, 1)
    best = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)  # in place, like an optimizer step
    assert not es.step(1.5, model, 2)
    assert es.step(1.6, model, 3)  # patience 2 exhausted: stops and restores
    assert torch.equal(model.weight, best)
    assert es.best_epoch == 1 and es.stopped_epoch == 3


def test_early_stopping_min_delta_and_max_mode():
    model = nn.Linear(1, 1)
    es = EarlyStopping(patience=1, min_delta=0.1)
    es.step(1.0, model, 1)
    assert es.step(0.95, model, 2)  # 0.05 is not an improvement of more than 0.1
    es = EarlyStopping(patience=2, mode="max")
    es.step(0.5, model, 1)
    assert not es.step(0.6, model, 2) and es.best == 0.6


# -- recording --------------------------------------------------------------------------------------
def test_trainer_records_itself_with_watch(tmp_path):
    exp = build("streamrec-full", overrides=TINY)
    h = _trainer(exp, run_dir=tmp_path / "run", run_name="tiny-full").fit()
    run = trainscope.load_run(tmp_path / "run")
    assert run.meta["name"] == "tiny-full" and run.status == "finished"
    train = run.scalar("train_loss")
    assert len(train) == h.epochs[-1].step  # one per optimizer step
    val = run.scalars[run.scalars["name"] == "val_loss"].sort_values("step")
    assert val["epoch"].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert val["value"].tolist() == pytest.approx([r.val_loss for r in h.epochs])
    assert {"val_auc", "val_acc", "best_epoch", "train_time_s"} <= set(run.scalar_names())
    assert run.meta["optimizer"]["class"] == "AdamW" and run.meta["scheduler"]["class"] == "OneCycleLR"
    # the recorded learning rate is PyTorch's OneCycleLR, stepped once per batch, momentum cycling
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1e-3)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=len(train), pct_start=0.3)
    expected = []
    for _ in range(len(train)):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert run.scalar("lr/0").to_numpy() == pytest.approx(expected, rel=1e-6)
    assert run.scalar("momentum/0").iloc[0] == pytest.approx(0.95)


# -- LR finder --------------------------------------------------------------------------------------
def test_lr_finder_restores_weights_and_suggests_a_sane_lr():
    exp = build("digits")
    before = {k: v.clone() for k, v in exp.model.state_dict().items()}
    opt_before = exp.optimizer.state_dict()["param_groups"][0]["lr"]
    result = find_lr(exp.model, exp.splits.train, exp.criterion, exp.optimizer, batch_size=64)
    for k, v in exp.model.state_dict().items():
        assert torch.equal(before[k], v), k  # BatchNorm running stats included
    assert exp.optimizer.param_groups[0]["lr"] == opt_before and not exp.optimizer.state
    assert result.stopped_early  # the sweep blew up and stopped
    assert 1e-3 <= result.suggested_lr <= 0.3, result.summary()
    assert result.suggested_lr == pytest.approx(result.min_loss_lr / 10)
    assert "/ 10" in result.rule
    assert len(result.lrs) == len(result.losses) == len(result.smoothed)


def test_lr_finder_on_a_model_that_does_not_learn_gives_no_suggestion():
    exp = build("docclf-buggy", scale=0.2)
    result = find_lr(exp.model, exp.splits.train, exp.criterion, exp.optimizer, num_steps=60)
    assert math.isnan(result.suggested_lr) and "bug" in result.rule


# -- sanity checks ----------------------------------------------------------------------------------
def test_overfit_one_batch_fails_on_buggy_and_passes_on_fixed_document_classifier():
    from trainscope.train.optim import make_optimizer

    buggy = build("docclf-buggy", scale=0.25)
    r = overfit_one_batch(buggy.model, buggy.splits.train, buggy.criterion,
                          lambda m: make_optimizer(m, "sgd", lr=1e-4, momentum=0.0), steps=150)
    assert not r.passed and r.values["final_loss"] > 0.9 * math.log(50)
    fixed = build("docclf-fixed", scale=0.25)
    before = {k: v.clone() for k, v in fixed.model.state_dict().items()}
    r = overfit_one_batch(fixed.model, fixed.splits.train, fixed.criterion,
                          lambda m: make_optimizer(m, "adamw", lr=1e-3), steps=150)
    assert r.passed and r.values["accuracy"] == 1.0
    assert all(torch.equal(before[k], v) for k, v in fixed.model.state_dict().items())
    assert all(m.p > 0 for m in fixed.model.modules() if isinstance(m, nn.Dropout))  # dropout put back


def test_initial_loss_check_against_log_n():
    exp = build("digits")
    r = initial_loss(exp.model, exp.splits.train, exp.criterion, 10)
    assert r.values["expected"] == pytest.approx(math.log(10)) and r.passed
    # a model whose logits are scaled up 50x starts far from -log(1/N)
    with torch.no_grad():
        exp.model[-1].weight.mul_(50)
    assert not initial_loss(exp.model, exp.splits.train, exp.criterion, 10).passed


def test_data_peek_flags_unscaled_inputs_and_constant_labels():
    from torch.utils.data import TensorDataset

    good = peek(build("digits").splits.train)
    assert good.passed and good.values["input_shape"] == [64, 64] and len(good.values["labels"]) == 10
    bad = peek(TensorDataset(torch.rand(100, 4) * 1000, torch.zeros(100, dtype=torch.long)))
    assert not bad.passed and "same" in bad.message and "standardized" in bad.message


def test_run_checks_zeroed_baseline_on_digits():
    results = {r.name: r for r in run_checks(build("digits"), overfit_steps=60, baseline_epochs=1)}
    assert set(results) == {"data-peek", "initial-loss", "overfit-one-batch", "input-independent-baseline"}
    base = results["input-independent-baseline"]
    assert base.passed and base.values["zeroed"] > 2 * base.values["real"]


# -- real data: digits ------------------------------------------------------------------------------
def test_digits_full_recipe_reaches_97_percent_quickly():
    exp = build("digits")
    t0 = time.perf_counter()
    h = _trainer(exp).fit()
    elapsed = time.perf_counter() - t0
    print(f"digits: test_acc {h.final['test_acc']:.4f} in {elapsed:.1f}s ({len(h.epochs)} epochs)")
    assert h.final["test_acc"] >= 0.97
    assert elapsed < 30


# -- CLI --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli():
    from trainscope.cli import app

    return app, CliRunner()


def test_cli_train_check_lr_find_compare(tmp_path, cli):
    app, runner = cli
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "--preset", "streamrec-full", "--out", str(out), "--scale", "0.05",
                            "--epochs", "3", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "next: trainscope diagnose" in r.output
    assert trainscope.load_run(out).status == "finished"
    r = runner.invoke(app, ["compare", str(out), "--format", "markdown"])
    assert r.exit_code == 0, r.output
    assert "| run | val AUC |" in r.output and "streamrec-full" in r.output
    r = runner.invoke(app, ["check", "--preset", "docclf-buggy", "--scale", "0.1", "--steps", "30",
                            "--baseline-epochs", "0"])
    assert r.exit_code == 1 and "[FAIL] overfit-one-batch" in r.output
    r = runner.invoke(app, ["lr-find", "--preset", "digits", "--steps", "40", "--csv", str(tmp_path / "lr.csv")])
    assert r.exit_code == 0 and "suggested lr" in r.output and (tmp_path / "lr.csv").exists()


@pytest.mark.parametrize("args, message", [
    (["train", "--preset", "nope", "--out", "OUT"], "unknown preset"),
    (["train", "--out", "OUT"], "exactly one of --preset"),
    (["compare", "does/not/exist"], "no such file"),
    (["lr-find", "--preset", "digits", "--start-lr", "1", "--end-lr", "0.1"], "start_lr"),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, cli, args, message):
    app, runner = cli
    args = [str(tmp_path / "o") if a == "OUT" else a for a in args]
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output


def test_cli_train_refuses_a_non_empty_out(tmp_path, cli):
    app, runner = cli
    (tmp_path / "x").write_text("keep me")
    r = runner.invoke(app, ["train", "--preset", "digits", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "not empty" in r.output


def test_progress_prints_one_line_per_epoch_off_a_terminal_and_nothing_when_quiet():
    import io

    from trainscope.train.progress import Progress

    buf = io.StringIO()
    p = Progress(total_epochs=2, steps_per_epoch=5, stream=buf)
    for e in (1, 2):
        p.start_epoch(e)
        p.step(5, 0.5, 1e-3)  # not a terminal: no carriage-return redraws
        p.end_epoch("train 0.5000 | lr 1.00e-03")
    assert buf.getvalue().splitlines() == ["epoch 1/2 train 0.5000 | lr 1.00e-03" + " " * 8,
                                           "epoch 2/2 train 0.5000 | lr 1.00e-03" + " " * 8]
    quiet = io.StringIO()
    q = Progress(2, 5, quiet=True, stream=quiet)
    q.end_epoch("x")
    q.message("y")
    assert quiet.getvalue() == ""


def test_compare_writes_an_html_plot(tmp_path, cli):
    app, runner = cli
    exp = build("digits", overrides={"train": {"epochs": 2}})
    _trainer(exp, run_dir=tmp_path / "d").fit()
    r = runner.invoke(app, ["compare", str(tmp_path / "d"), "--html", str(tmp_path / "c.html"), "--format", "json"])
    assert r.exit_code == 0, r.output
    html = (tmp_path / "c.html").read_text()
    assert "plotly" in html.lower() and "Loss per epoch" in html and "<table>" in html
    import json

    rows = json.loads(r.stdout[r.stdout.index("["):])
    assert rows[0]["run"] == "d" and rows[0]["epochs"] == 2 and rows[0]["test_acc"] > 0.5
