"""Case study 002: the document classifier with seven interacting bugs, trained for real at small scale.

The buggy run (6-layer sigmoid MLP ending in Softmax before CrossEntropyLoss, model.eval() in the
loop, no zero_grad, plain SGD at lr 1e-4, no validation) must yield the bugs the case study lists;
the fixed run (ReLU, He init, BatchNorm, dropout, AdamW 3e-4, zero_grad, train(), clipping, a
cosine schedule and validation) must yield nothing at warning or above.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import helpers_training as h
import trainscope
from trainscope.rules.engine import diagnose_report

WIDTHS = (200, 256, 256, 128, 128, 64)  # the case study's 5000 -> 2048 -> ... -> 128, scaled down
CLASSES = 10


def buggy_model() -> nn.Module:
    layers: list[nn.Module] = []
    for a, b in zip(WIDTHS, WIDTHS[1:]):
        layers += [nn.Linear(a, b), nn.Sigmoid()]
    layers += [nn.Linear(WIDTHS[-1], CLASSES), nn.Softmax(dim=1)]  # bug 1
    return nn.Sequential(*layers)


def fixed_model(dropout: float = 0.3) -> nn.Module:
    layers: list[nn.Module] = []
    for a, b in zip(WIDTHS, WIDTHS[1:]):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU(), nn.Dropout(dropout)]
    layers.append(nn.Linear(WIDTHS[-1], CLASSES))
    model = nn.Sequential(*layers)
    for m in model.modules():  # the case study's init_weights: He for every Linear
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return model


@pytest.fixture(scope="module")
def buggy(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(42)
    return h.train(tmp_path_factory.mktemp("docclf") / "buggy", buggy_model(), h.docs_task(n=512), epochs=4,
                   batch_size=32, optimizer="sgd", lr=1e-4, validate=False, train_mode=False, zero_grad=False,
                   every=5)


@pytest.fixture(scope="module")
def fixed(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(42)
    epochs = 12
    return h.train(tmp_path_factory.mktemp("docclf") / "fixed", fixed_model(), h.docs_task(n=512), epochs=epochs,
                   batch_size=32, optimizer="adamw", lr=3e-4, weight_decay=0.01, clip=1.0, every=5,
                   scheduler=lambda opt, total: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs,
                                                                                           eta_min=1e-6),
                   scheduler_per="epoch")


def test_buggy_classifier_yields_the_case_study_bugs(buggy) -> None:
    found = {f.name: f for f in trainscope.diagnose(buggy)}
    for bug in ("softmax-before-cross-entropy", "eval-mode-during-training", "missing-zero-grad", "lr-too-low"):
        assert bug in found, f"{bug} missing; found {sorted(found)}"
    # bug 2, the sigmoid stack without a fitting init, shows as one of these
    assert {"vanishing-gradients", "saturated-activations", "poor-initialization"} & set(found), sorted(found)
    # the root-cause loop bugs are errors, and come before the symptoms
    assert found["softmax-before-cross-entropy"].severity.value == "error"
    assert found["missing-zero-grad"].severity.value == "error"
    from trainscope.rules.catalogue import load_catalogue

    if "no-validation" in load_catalogue():  # bug 7 is the loss-curve rules' business
        assert "no-validation" in found, sorted(found)


def test_buggy_classifier_loop_bugs_are_caught_in_the_first_steps(buggy) -> None:
    found = {f.name: f for f in trainscope.diagnose(buggy)}
    for bug in ("softmax-before-cross-entropy", "eval-mode-during-training", "missing-zero-grad"):
        assert found[bug].steps is not None and found[bug].steps[0] <= 2, (bug, found[bug].steps)


def test_lr_fix_names_a_concrete_larger_lr(buggy) -> None:
    f = next(f for f in trainscope.diagnose(buggy) if f.name == "lr-too-low")
    suggested = float(f.evidence_dict["suggested_lr"])
    assert suggested > 1e-4
    assert f.evidence_dict["suggested_lr"] in f.fixes[0]


def test_fixed_classifier_yields_nothing_at_warning_or_above(fixed) -> None:
    report = diagnose_report(fixed)
    loud = [f"{f.name}: {f.message}" for f in report.findings if f.severity.rank >= 1]
    assert not loud, loud
    assert not report.crashed, report.crashed
