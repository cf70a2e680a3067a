"""Loop and wiring bugs (TS6xx) on real tiny runs: each caught within the first steps, and quiet on
the correct version of the same loop (proper accumulation, AdamW, per-batch OneCycle, ...)."""
from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

import helpers_training as h
from helpers_training import HEALTHY, findings, scenario

FAMILY = ["TS6"]


@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_runs_give_no_loop_findings(name: str) -> None:
    found = {n: f for n, f in findings(scenario(name), select=FAMILY).items()
             if not (n == "batchnorm-small-batch" and f.severity.value == "info")}  # a short last batch
    assert found == {}, {n: f.message for n, f in found.items()}


def test_softmax_before_cross_entropy() -> None:
    f = findings(scenario("softmax-ce"), select=FAMILY)["softmax-before-cross-entropy"]
    assert f.severity.value == "error" and f.steps == (0, 0)
    assert f.evidence_dict["row_sum_mean"] == pytest.approx(1.0, abs=1e-4)
    assert "softmax" in f.fixes[0]


def test_softmax_before_cross_entropy_explains_the_flat_loss() -> None:
    found = findings(scenario("softmax-ce"))
    symptoms = [n for n in ("loss-not-decreasing", "underfitting", "slow-start") if n in found]
    assert symptoms, sorted(found)
    for n in symptoms:
        assert "softmax-before-cross-entropy" in found[n].evidence_dict["explained_by"]


@pytest.mark.parametrize(
    "name, expects",
    [("sigmoid-bcelogits", "BCEWithLogitsLoss"), ("logsoftmax-ce", "CrossEntropyLoss"), ("softmax-nll", "NLLLoss")],
)
def test_output_activation_mismatch(name: str, expects: str) -> None:
    found = findings(scenario(name), select=FAMILY)
    f = found["output-activation-mismatch"]
    assert f.evidence_dict["criterion"] == expects and expects in f.message
    assert "softmax-before-cross-entropy" not in found


def test_matching_output_and_loss_is_quiet() -> None:
    for name in ("logsoftmax-nll", "healthy-sigmoid-bce", "healthy-bce-logits", "healthy-mlp"):
        found = findings(scenario(name), select=FAMILY)
        assert "output-activation-mismatch" not in found and "softmax-before-cross-entropy" not in found, name


def test_eval_mode_during_training() -> None:
    f = findings(scenario("eval-mode"), select=FAMILY)["eval-mode-during-training"]
    assert f.severity.value == "error"  # the model has Dropout: eval mode really changes it
    assert f.evidence_dict["frac_eval_steps"] == 1.0 and f.steps[0] == 0
    assert "Dropout" in f.message and "model.train()" in f.fixes[0]


def test_validation_passes_in_eval_mode_are_not_training() -> None:
    # every healthy run validates under model.eval() + no_grad between epochs
    for name in ("healthy-mlp-bn-dropout", "healthy-bn-cnn"):
        assert "eval-mode-during-training" not in findings(scenario(name), select=FAMILY), name


def test_missing_zero_grad() -> None:
    f = findings(scenario("no-zero-grad"), select=FAMILY)["missing-zero-grad"]
    assert f.severity.value == "error" and f.evidence_dict["frac_not_reset"] == 1.0
    assert f.evidence_dict["backwards_per_step"] == 1.0
    assert "zero_grad" in f.fixes[0]


def test_gradient_accumulation_is_not_a_missing_zero_grad() -> None:
    run = scenario("healthy-accumulation")
    assert run.scalar("loop/backwards").iloc[1:].eq(4).all()  # 4 micro-batches per optimizer step
    assert "missing-zero-grad" not in findings(run, select=FAMILY)


def test_loop_bugs_are_caught_within_the_first_steps(tmp_path: Path) -> None:
    model = h.mlp(depth=2, dropout=0.2, out_act=nn.Softmax(dim=1))
    run = h.train(tmp_path / "r", model, h._seq(), epochs=1, max_steps=4, train_mode=False, zero_grad=False,
                  validate=False, every=5)
    assert run.meta["steps"] == 4
    found = findings(run, select=FAMILY)
    for bug in ("softmax-before-cross-entropy", "eval-mode-during-training", "missing-zero-grad"):
        assert bug in found, (bug, sorted(found))


def test_adam_with_weight_decay() -> None:
    f = findings(scenario("adam-weight-decay"), select=FAMILY)["adam-l2-weight-decay"]
    assert f.fixes[0].startswith("Use AdamW(lr=1.0e-03, weight_decay=1.0e-04)")
    assert "adam-l2-weight-decay" not in findings(scenario("healthy-mlp-bn-dropout"), select=FAMILY)  # AdamW


def test_onecycle_stepped_per_epoch() -> None:
    f = findings(scenario("onecycle-per-epoch"), select=FAMILY)["scheduler-step-cadence"]
    ev = f.evidence_dict
    assert ev["scheduler"] == "OneCycleLR" and ev["scheduler_steps"] == ev["epochs"] == 6
    assert "once per epoch" in f.message and "every optimizer.step()" in f.fixes[0]


def test_steplr_stepped_per_batch() -> None:
    f = findings(scenario("steplr-per-batch"), select=FAMILY)["scheduler-step-cadence"]
    assert f.evidence_dict["lr_last"] < 1e-10
    assert "every batch" in f.message and "once per epoch" in f.fixes[0]


def test_right_scheduler_cadence_is_quiet() -> None:
    for name in ("healthy-sgd-onecycle", "healthy-sgd-cosine-epochs", "healthy-cosine-per-batch", "healthy-bn-cnn"):
        assert "scheduler-step-cadence" not in findings(scenario(name), select=FAMILY), name


def test_batchnorm_on_small_batches() -> None:
    f = findings(scenario("bn-batch-4"), select=FAMILY)["batchnorm-small-batch"]
    assert f.severity.value == "warning" and f.evidence_dict["min_batch"] == 4


def test_only_the_last_incomplete_batch_is_info_with_drop_last() -> None:
    f = findings(scenario("healthy-bn-tail-batch"), select=FAMILY)["batchnorm-small-batch"]
    assert f.severity.value == "info" and f.evidence_dict["min_batch"] == 3
    assert "drop_last=True" in f.fixes[1]


def test_dropout_feeding_batchnorm() -> None:
    f = findings(scenario("dropout-then-bn"), select=FAMILY)["dropout-before-batchnorm"]
    assert f.layers == ("1", "2")
    # Linear -> BN -> ReLU -> Dropout -> Linear (the case study's fixed model) is fine
    assert "dropout-before-batchnorm" not in findings(scenario("healthy-mlp-bn-dropout"), select=FAMILY)


def test_initial_loss_far_above_chance() -> None:
    f = findings(scenario("biased-head"), select=FAMILY)["initial-loss-mismatch"]
    ev = f.evidence_dict
    assert ev["num_classes"] == 4 and ev["expected"] == pytest.approx(1.3863, abs=1e-3)
    assert ev["initial_loss"] > 2 * ev["expected"]
    assert "ln(4)" in f.message


def test_unnormalized_inputs_and_what_they_explain() -> None:
    found = findings(scenario("raw-scale-inputs"))
    f = found["unnormalized-inputs"]
    assert f.evidence_dict["mean"] > 100 and "> 5" in f.message
    assert "unnormalized-inputs" in found["initial-loss-mismatch"].evidence_dict["explained_by"]


def test_raw_pixels_are_named() -> None:
    run = h.train(Path(h._root()) / "digits-raw", h.bn_cnn(), h.digits_task(raw=True), epochs=1, every=10,
                  max_steps=5, validate=False)
    f = findings(run, select=["unnormalized-inputs"])["unnormalized-inputs"]
    assert f.evidence_dict["max"] == 16.0  # sklearn digits: 0..16
    # token ids into an embedding are not 'unnormalized inputs'
    assert "unnormalized-inputs" not in findings(scenario("healthy-lstm-tokens"), select=FAMILY)


def test_loop_rules_skip_imported_logs() -> None:
    from trainscope.rules.engine import diagnose_report
    from trainscope.store.importers import import_log

    run = import_log(Path(__file__).parent / "data" / "streamrec_baseline.csv")
    report = diagnose_report(run, select=FAMILY)
    assert report.findings == [] and not report.crashed
    assert {s.name for s in report.skipped} >= {"missing-zero-grad", "softmax-before-cross-entropy"}



def test_every_fix_is_filled_in_on_every_scenario() -> None:
    import re

    for name in h.SCENARIOS:
        for f in findings(scenario(name), select=["TS2", "TS3", "TS4", "TS5", "TS6"]).values():
            assert f.message and f.fixes and f.reference, (name, f.name)
            for fix in f.fixes:
                assert not re.search(r"\{\w+\}", fix), (name, f.name, fix)


@pytest.mark.parametrize("name", sorted(h.LABELS))
def test_labelled_scenario_gets_exactly_its_labels(name: str) -> None:
    """Every rule of TS2-TS6 that fires is a true label (no false alarm), every label fires (no miss)."""
    found = set(findings(scenario(name), select=["TS2", "TS3", "TS4", "TS5", "TS6"]))
    assert found == h.LABELS[name], {"missed": h.LABELS[name] - found, "false alarms": found - h.LABELS[name]}


def test_initial_loss_comes_from_the_probe_when_only_epoch_means_are_logged(tmp_path: Path) -> None:
    run = h.train(tmp_path / "r", h._biased_head(), h._seq(), epochs=2, every=5, log_every_step=False)
    assert int(run.scalar("train_loss").index[0]) > 10  # the first logged loss is an epoch mean
    f = findings(run, select=FAMILY)["initial-loss-mismatch"]
    assert f.steps == (0, 0) and f.evidence_dict["initial_loss"] > 5


def test_onecycle_per_epoch_without_epochs_logged(tmp_path: Path) -> None:
    run = h.train(tmp_path / "r", h._he(h.mlp(depth=2)), h._seq(), epochs=6, every=5, optimizer="sgd", momentum=0.9,
                  scheduler=h._sched_onecycle, scheduler_per="epoch", log_epoch=False, validate=False)
    assert run.events_of("epoch").empty
    f = findings(run, select=FAMILY)["scheduler-step-cadence"]
    assert f.evidence_dict["scheduler"] == "OneCycleLR"
