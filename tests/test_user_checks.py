"""`trainscope check` / `trainscope lr-find` on the user's own model and data (issue 12 §2).

The document-classifier pair of case study 002 lives in tests/user_code/docclf.py as a user would write
it: `make_buggy` (softmax before CrossEntropyLoss, sigmoid stack) must fail overfit-one-batch and
`make_fixed` (ReLU, BatchNorm, dropout, He init, logits) must pass it, as the case study says.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import trainscope

HERE = Path(__file__).parent
DOC = HERE / "user_code" / "docclf.py"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def user():
    from trainscope.train.user_code import load_callable

    return {name: load_callable(f"{DOC}:{name}") for name in
            ("make_buggy", "make_fixed", "make_data", "make_bad_data", "make_adamw")}


@pytest.fixture(scope="module")
def cli():
    from trainscope.cli import app

    return app, CliRunner()


def _state(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_check_on_the_fixed_classifier_passes_and_leaves_the_model_as_it_was(user):
    data = user["make_data"]()
    fixed = user["make_fixed"]()
    before = _state(fixed)
    fixed.eval()
    rf = trainscope.check(fixed, data, nn.CrossEntropyLoss(), optimizer_factory=user["make_adamw"], baseline_steps=0)
    o = rf["overfit-one-batch"]
    assert o.passed, o.message
    assert o.values["final_loss"] <= 0.01 * o.values["initial_loss"] and o.values["accuracy"] == 1.0
    assert o.values["dropout_layers_off"] == 5 and o.values["weight_decay_was"] == [0.01]
    assert rf.passed, rf.summary()
    # the model is left exactly as it was: weights, BatchNorm buffers, eval mode, dropout rates
    assert all(torch.equal(before[k], v) for k, v in fixed.state_dict().items())
    assert not fixed.training and all(m.p == 0.3 for m in fixed.modules() if isinstance(m, nn.Dropout))


def test_cli_check_on_user_files_fails_buggy_and_passes_fixed(cli):
    app, runner = cli
    r = runner.invoke(app, ["check", "--model", f"{DOC}:make_buggy", "--data", f"{DOC}:make_data",
                            "--baseline-steps", "30"])
    assert r.exit_code == 1, r.output
    assert "[FAIL] overfit-one-batch: loss 2.30" in r.output and "in 500 steps" in r.output
    assert "[PASS] initial-loss" in r.output  # 2.30 = -log(1/10): the softmax does not show at step 0
    final = float(r.output.split("[FAIL] overfit-one-batch: loss ")[1].split(" -> ")[1].split()[0])
    assert final > 1.0  # barely moves: CrossEntropy of probabilities cannot go below ~1.46 with 10 classes
    r = runner.invoke(app, ["check", "--model", f"{DOC}:make_fixed", "--data", f"{DOC}:make_data",
                            "--criterion", f"{DOC}:make_criterion", "--baseline-steps", "30"])
    assert r.exit_code == 0, r.output
    assert "[PASS] overfit-one-batch" in r.output and "[PASS] input-independent-baseline" in r.output
    assert "4/4 checks passed" in r.output


def test_zeroed_input_baseline_tells_signal_from_none(user):
    data = user["make_data"]()
    fixed = user["make_fixed"]()
    r = trainscope.check(fixed, data, steps=1, baseline_steps=60)["input-independent-baseline"]
    assert r.passed and r.values["real"] < 0.5 * r.values["zeroed"]
    # labels that do not depend on the inputs: real inputs cannot beat zeroed ones
    g = torch.Generator().manual_seed(1)
    noise = [(x, torch.randint(0, 10, (len(y),), generator=g)) for x, y in data]
    r = trainscope.check(user["make_fixed"](), noise, steps=1, baseline_steps=60)["input-independent-baseline"]
    assert not r.passed, r.message


def test_data_peek_flags_constant_labels_unscaled_features_nan_and_imbalance(user):
    r = trainscope.check(user["make_buggy"](), user["make_bad_data"](), steps=1, baseline_steps=0)["data-peek"]
    assert not r.passed and "constant labels" in r.message and "not normalized" in r.message
    x = torch.randn(64, 5)
    x[3, 2] = float("nan")
    y = torch.cat([torch.zeros(60, dtype=torch.long), torch.ones(4, dtype=torch.long)])
    r = trainscope.check(nn.Linear(5, 2), [(x, y)], steps=1, baseline_steps=0)["data-peek"]
    assert "1 NaN/Inf input values" in r.message and "class imbalance" in r.message
    clean = trainscope.check(nn.Linear(5, 2), [(torch.randn(64, 5), torch.arange(64) % 2)], steps=1,
                             baseline_steps=0)["data-peek"]
    assert clean.passed, clean.message


def test_initial_loss_against_log_c_and_skipped_for_regression():
    torch.manual_seed(0)
    model = nn.Linear(8, 5)
    batches = [(torch.randn(32, 8), torch.randint(0, 5, (32,)))]
    r = trainscope.check(model, batches, steps=1, baseline_steps=0)["initial-loss"]
    assert r.passed and r.values["expected"] == pytest.approx(math.log(5))
    with torch.no_grad():
        model.weight.mul_(40)  # overconfident logits at step 0
    assert not trainscope.check(model, batches, steps=1, baseline_steps=0)["initial-loss"].passed
    reg = trainscope.check(nn.Linear(8, 1), [(torch.randn(32, 8), torch.randn(32, 1))], steps=1, baseline_steps=0)
    assert reg["initial-loss"].values.get("skipped") and "MSELoss" in reg["initial-loss"].message


def test_lr_find_on_a_user_model_returns_a_curve_and_a_suggestion(user):
    model = user["make_fixed"]()
    before = _state(model)
    res = trainscope.lr_find(model, user["make_data"](), nn.CrossEntropyLoss(),
                             optimizer_factory=functools.partial(torch.optim.SGD, lr=1e-3, momentum=0.9),
                             num_steps=60)
    assert len(res.lrs) == len(res.losses) == len(res.smoothed) >= 30
    assert res.lrs == sorted(res.lrs) and math.isfinite(res.suggested_lr) and 1e-4 < res.suggested_lr < 5
    assert "/ 10" in res.rule
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # a generator of batches works too (one pass is kept)
    gen = ((x, y) for x, y in user["make_data"]())
    assert len(trainscope.lr_find(user["make_fixed"](), gen, num_steps=20).lrs) >= 10


def test_cli_lr_find_on_user_files(cli, tmp_path):
    app, runner = cli
    r = runner.invoke(app, ["lr-find", "--model", f"{DOC}:make_fixed", "--data", f"{DOC}:make_data",
                            "--steps", "40", "--csv", str(tmp_path / "lr.csv")])
    assert r.exit_code == 0, r.output
    assert "suggested lr" in r.output and (tmp_path / "lr.csv").read_text().startswith("lr,loss,smoothed")


@pytest.mark.parametrize("args, message", [
    (["check", "--model", "nope.py:make", "--data", "nope.py:make"], "no such file"),
    (["check", "--model", "DOC:make_missing", "--data", "DOC:make_data"], "defines no 'make_missing'"),
    (["check", "--model", "DOC:make_data", "--data", "DOC:make_data"], "not a torch.nn.Module"),
    (["check", "--model", "DOC", "--data", "DOC:make_data"], "must be FILE.py:FUNC"),
    (["check", "--model", "DOC:make_fixed"], "needs both --model"),
    (["check", "--model", "DOC:make_fixed", "--data", "DOC:make_data", "--preset", "digits"], "not both"),
    (["check", "--model", "DOC:make_fixed", "--data", "DOC:WIDTHS"], "not a function"),
    (["check", "--model", "DOC:make_fixed", "--data", "DOC:make_fixed"], "pair (inputs, targets)"),
    (["check", "--model", "DOC:make_fixed", "--data", "DOC:make_data", "--optimizer", "lamb"], "--optimizer"),
    (["lr-find", "--model", "DOC:make_fixed", "--data", "DOC:documents"], "pair (inputs, targets)"),
])
def test_cli_bad_user_input_exits_2_with_one_line(cli, args, message):
    app, runner = cli
    r = runner.invoke(app, [a.replace("DOC", str(DOC)) for a in args])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert len([line for line in r.output.splitlines() if line.strip()]) == 1, r.output


def test_user_file_that_raises_is_one_line(cli, tmp_path):
    app, runner = cli
    f = tmp_path / "broken.py"
    f.write_text("import torch\ndef make():\n    raise RuntimeError('no GPU here')\n")
    r = runner.invoke(app, ["check", "--model", f"{f}:make", "--data", f"{DOC}:make_data"])
    assert r.exit_code == 2 and "make() raised RuntimeError: no GPU here" in r.output
    f.write_text("import not_a_module_anywhere\n")
    r = runner.invoke(app, ["check", "--model", f"{f}:make", "--data", f"{DOC}:make_data"])
    assert r.exit_code == 2 and "ModuleNotFoundError" in r.output and "Traceback" not in r.output
