"""The rules issue 12 adds from the playbook: dropout after the output layer, dropout rates above 0.5,
a deep stack without normalization where the run shows the harm, and `overfitting` that knows an
early-stopping restore. Each fires on a run with the problem and stays silent on a healthy one."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import helpers_training as h
import trainscope
from trainscope.rules.engine import diagnose_report


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _found(run):
    return {f.name: f for f in trainscope.diagnose(run)}


def _ran(run, rule):
    report = diagnose_report(run)
    assert rule not in {s.name for s in report.skipped}, [s for s in report.skipped if s.name == rule]
    return {f.name: f for f in report.findings}


def test_dropout_after_the_output_layer(tmp_path):
    torch.manual_seed(0)
    bad = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4), nn.Dropout(0.3))
    run = h.train(tmp_path / "bad", bad, h.teacher_task(n=256), epochs=2)
    f = _found(run)["dropout-after-output"]
    assert f.severity.value == "warning" and f.layers == ("3",) and "Remove 3" in f.fixes[0]
    good = h.train(tmp_path / "good", h.mlp(dropout=0.3), h.teacher_task(n=256), epochs=2)
    assert "dropout-after-output" not in _ran(good, "dropout-after-output")


def test_dropout_rates_above_one_half(tmp_path):
    data = h.teacher_task(n=256)
    torch.manual_seed(0)
    heavy = h.train(tmp_path / "heavy", h.mlp(dropout=0.8), data, epochs=6)
    f = _found(heavy)["high-dropout-rate"]
    assert "p=0.8" in f.message and f.layers == ("2", "5")
    # the run shows the harm: the dropped-out network's training loss sits well above validation
    assert f.severity.value == "warning" and f.evidence_dict["harm"] is True, f.message
    usual = h.train(tmp_path / "usual", h.mlp(dropout=0.3), data, epochs=6)
    assert "high-dropout-rate" not in _ran(usual, "high-dropout-rate")


def test_deep_stack_without_normalization_where_it_hurts(tmp_path):
    data = h.docs_task(n=256)
    torch.manual_seed(0)
    sigmoid = h.mlp(d=200, classes=10, hidden=128, depth=5, act=nn.Sigmoid)  # 6 weight layers, bug 6 + bug 2
    run = h.train(tmp_path / "sig", sigmoid, data, epochs=2, every=4)
    f = _found(run)["no-normalization-deep-stack"]
    assert f.evidence_dict["weight_layers"] == 6 and float(f.evidence_dict["ratio_first_last"]) < 0.01
    # the same depth with BatchNorm: silent; without normalization but gradients flowing (ReLU): silent too
    torch.manual_seed(0)
    bn = h.train(tmp_path / "bn", h.mlp(d=200, classes=10, hidden=128, depth=5, norm=nn.BatchNorm1d), data,
                 epochs=2, every=4)
    assert "no-normalization-deep-stack" not in _found(bn)
    torch.manual_seed(0)
    relu = h.train(tmp_path / "relu", h.mlp(d=200, classes=10, hidden=128, depth=5), data, epochs=2, every=4)
    assert "no-normalization-deep-stack" not in _ran(relu, "no-normalization-deep-stack")


def test_overfitting_is_info_when_the_run_restored_its_best_epoch(tmp_path):
    from trainscope.train.loop import TrainConfig, Trainer

    data = h.teacher_task(n=64, label_noise=0.3)
    train, val = TensorDataset(data.x_train, data.y_train), TensorDataset(data.x_val, data.y_val)
    found = {}
    for restore in (False, True):
        torch.manual_seed(0)
        model = h.mlp(hidden=256, depth=3)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        # early stopping with a patience that never runs out: the run goes on to the end either way, and
        # with restore_best the trainer hands back the best epoch's weights (and logs restored_epoch)
        cfg = TrainConfig(epochs=40, batch_size=16, early_stopping=True, patience=1000, restore_best=restore,
                          watch_every=20)
        Trainer(model, opt, nn.CrossEntropyLoss(), train, val, config=cfg, run_dir=tmp_path / str(restore),
                quiet=True).fit()
        run = trainscope.load_run(tmp_path / str(restore))
        assert ("restored_epoch" in run.scalar_names()) == restore
        found[restore] = _found(run)["overfitting"]
    assert found[False].severity.value == "warning"
    assert found[True].severity.value == "info" and "restored the weights of epoch" in found[True].message
