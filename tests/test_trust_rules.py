"""Issue 8: warnings a user can act on. Each rule that used to cry wolf gets a run where the
configuration smell exists but the run is healthy (no warning) and one where the harm is real
(a warning); and no rule may advise the opposite of the truth (raising a too-high LR)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import helpers_training as h
import trainscope
from trainscope.rules.engine import diagnose_report
from trainscope.rules.evidence import raises_lr

_RUNS: dict = {}


def cached(name, make):
    if name not in _RUNS:
        _RUNS[name] = make(h._root() / name)
    return _RUNS[name]


def report(run, **kw):
    rep = diagnose_report(run, **kw)
    assert not rep.crashed, [(c.name, c.error) for c in rep.crashed]
    return rep


def loud(rep) -> dict:
    return {f.name: f for f in rep.findings if f.severity.rank >= 1}


def all_fixes(rep) -> list[str]:
    return [fx for f in rep.findings for fx in f.fixes]


# ----------------------------------------------------------------------- lr-too-high, nanoGPT-style
def test_nanogpt_style_too_high_lr_with_warmup_and_clipping_is_reported_as_too_high() -> None:
    run = cached("nanogpt-lr-x200", lambda p: h.nanogpt_train(p, lr=0.6))
    rep = report(run)
    found = {f.name: f for f in rep.findings}
    f = found["lr-too-high"]
    assert f.severity.rank >= 1
    assert f.evidence_dict["peak_lr"] == pytest.approx(0.6, rel=0.05)  # the peak, not the first warmup value
    assert "from 0.6 " in f.fixes[0]
    assert float(f.evidence_dict["suggested_lr"]) < 0.06
    assert "warms up" in f.message
    # no rule advises raising it
    bad = [fx for fx in all_fixes(rep) if raises_lr(fx)]
    assert bad == [], bad
    assert "lr-too-low" not in found


def test_nanogpt_style_healthy_lr_is_quiet() -> None:
    run = cached("nanogpt-healthy", lambda p: h.nanogpt_train(p, lr=3e-3))
    rep = report(run)
    assert loud(rep) == {}, {n: f.message for n, f in loud(rep).items()}


def test_nanogpt_style_high_but_workable_lr_is_not_too_high() -> None:
    # the smell (an LR 100x nanoGPT's, warmup, clipping active) without the harm: the loss falls well
    run = cached("nanogpt-lr-6e-2", lambda p: h.nanogpt_train(p, lr=6e-2))
    assert "lr-too-high" not in loud(report(run))


# ----------------------------------------------------------------------- degenerate data is evidence
def test_softmax_over_one_unit_is_diagnosed_as_zero_gradients_not_missing_data() -> None:
    # a binary classifier ending in nn.Softmax(dim=1) over a single unit: constant 1.0, every gradient 0
    def make(p):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 1), nn.Softmax(dim=1))
        return h.train(p, model, h.click_task(n=512, d=16), epochs=3, criterion=nn.BCELoss())

    rep = report(cached("softmax-one-unit", make))
    found = {f.name: f for f in rep.findings}
    oam = found["output-activation-mismatch"]
    assert oam.severity.value == "error" and "size 1" in oam.message
    zg = found["zero-gradients"]
    assert "exactly 0" in zg.message and "constant" in zg.message
    assert "output-activation-mismatch" in zg.evidence_dict["explained_by"]  # kept, as info
    assert not any("0 recorded steps with gradients" in s.reason for s in rep.skipped)
    assert "poor-initialization" not in loud(rep) and "oscillation" not in loud(rep)


def test_eight_layer_relu_mlp_with_std_one_init_has_exploding_gradients() -> None:
    def make(p):
        torch.manual_seed(0)
        return h.train(p, h.init_weights(h.mlp(depth=8, hidden=64), "normal", std=1.0), h._seq(), epochs=2)

    rep = report(cached("std1-relu8", make))
    found = {f.name: f for f in rep.findings}
    f = found["exploding-gradients"]
    assert f.evidence_dict["norm_median"] > 1e4 and "before clipping" in f.message
    assert found["poor-initialization"].severity.value == "warning"  # the cause, with its effect measured
    # found, and kept visible under its root cause (principle 4)
    assert f.severity.value == "warning" or "poor-initialization" in f.evidence_dict["explained_by"]


def test_nothing_recorded_is_a_finding_with_the_line_to_add(tmp_path) -> None:
    # the probe watches a module that never runs (a warning), and no loss is logged (info on its own)
    torch.manual_seed(0)
    model, unused = h.mlp(), nn.Linear(16, 4)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    data = h._seq()
    with trainscope.watch(unused, tmp_path / "r"):
        for i in range(5):
            opt.zero_grad()
            nn.functional.cross_entropy(model(data.x_train[:32]), data.y_train[:32]).backward()
            opt.step()
    rep = report(trainscope.load_run(tmp_path / "r"))
    f = {x.name: x for x in rep.findings}["incomplete-recording"]
    assert f.severity.value == "warning"
    assert "no training forward" in f.message and "no training loss logged" in f.message
    assert any("probe.log(train_loss=loss)" in fx for fx in f.fixes)
    assert any("trainscope.watch(model" in fx for fx in f.fixes)


def test_a_complete_recording_is_not_reported_as_incomplete() -> None:
    assert "incomplete-recording" not in {f.name for f in report(h.scenario("healthy-mlp")).findings}


# ----------------------------------------------------------------------- smell without harm: no warning
def test_xavier_before_relu_in_a_run_that_trains_well_is_info() -> None:
    rep = report(h.scenario("streamrec-xavier"), select=["TS4"])
    f = {x.name: x for x in rep.findings}["poor-initialization"]
    assert f.severity.value == "info" and "no effect measured" in f.message
    assert f.evidence_dict["harm"] is None


def test_default_init_whose_shrinking_activations_are_measured_is_a_warning() -> None:
    f = {x.name: x for x in report(h.scenario("streamrec-default"), select=["TS4"]).findings}["poor-initialization"]
    assert f.severity.value == "warning"
    assert any("activation variance shrinks" in x for x in f.evidence_dict["harm"])


def test_small_noisy_binary_batches_are_not_oscillation_or_unstable_gradients() -> None:
    # the smell (per-step loss of 4-sample binary batches: very noisy; grad norm noisy) without harm
    run = cached("small-batch-binary", lambda p: h.train(p, h._he(h.mlp(depth=2, classes=2)),
                                                           h.teacher_task(n=512, classes=2, n_val=256), epochs=4,
                                                           batch_size=4, every=10))
    found = loud(report(run))
    for name in ("oscillation", "unstable-gradients", "slow-start", "underfitting", "lr-too-high"):
        assert name not in found, (name, found[name].message)


def test_logged_epoch_means_of_a_healthy_run_are_not_underfitting() -> None:
    # points that are means over many steps start already low: judged from the probe's first loss
    run = cached("epoch-means", lambda p: h.train(p, h._he(h.mlp(depth=2)), h._seq(), epochs=6,
                                                   log_every_step=False))
    found = loud(report(run))
    assert "underfitting" not in found and "divergence" not in found, found


def test_slow_start_of_a_few_steps_is_not_a_warning() -> None:
    rep = report(h.scenario("healthy-mlp-default-init"), select=["slow-start"])
    assert all(f.severity.value == "info" for f in rep.findings)


def test_vanishing_gradients_mild_spread_is_info() -> None:
    # the StreamRec case study's ~100x first/last spread: a milder threshold gives info, not a warning
    rep = report(h.scenario("deep-sigmoid"), select=["vanishing-gradients"],
                 settings={"vanishing-gradients": {"ratio_min": 1e-6, "info_ratio": 0.02}})
    f = rep.findings[0]
    assert f.severity.value == "info" and f.evidence_dict["threshold"] == 0.02


# ----------------------------------------------------------------------- silent wiring bugs (probe facts)
def _needs(run, kind: str) -> None:
    if run.events.empty or not (run.events["kind"] == kind).any():
        pytest.skip(f"this probe does not record {kind!r} events yet")


def _sorted_task() -> "h.Data":
    torch.manual_seed(0)  # the model is built right after this: same init whatever ran before
    d = h.teacher_task(n=1024, classes=4, n_val=256)
    order = torch.argsort(d.y_train, stable=True)
    return h.Data(d.x_train[order], d.y_train[order], d.x_val, d.y_val, 4)


class _Squeezed(nn.Module):
    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x).squeeze(-1)


def _regression(n: int = 512) -> "h.Data":
    d = h.teacher_task(n=n, n_val=128)
    return h.Data(d.x_train, d.x_train[:, :4].sum(1), d.x_val, d.x_val[:, :4].sum(1), 1)


def test_loss_shape_mismatch_on_n1_output_against_n_target() -> None:
    run = cached("shape-n1-n", lambda p: h.train(p, h._he(h.mlp(depth=2, classes=1)), _regression(), epochs=3,
                                                   criterion=nn.MSELoss(), validate=False))
    _needs(run, "criterion_input")
    d = h.detail_of(run, "criterion_input")
    if "target_shape" not in d:
        pytest.skip("criterion_input has no target_shape yet")
    f = {x.name: x for x in report(run).findings}["loss-shape-mismatch"]
    assert f.severity.value == "error" and f.evidence_dict["broadcast_shape"] == [32, 32]
    assert "squeeze(-1)" in f.fixes[0]
    fixed = cached("shape-fixed", lambda p: h.train(p, _Squeezed(h._he(h.mlp(depth=2, classes=1))), _regression(),
                                                      epochs=3, criterion=nn.MSELoss(), validate=False))
    assert "loss-shape-mismatch" not in {x.name for x in report(fixed).findings}


class _ListMLP(nn.Module):
    """Hidden layers kept in a Python list: never registered, never optimized."""

    def __init__(self, registered: bool) -> None:
        super().__init__()
        hidden = [nn.Linear(16, 32), nn.Linear(32, 32)]
        self.hidden = nn.ModuleList(hidden) if registered else hidden
        self.out = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.out(x)


def test_parameters_not_updated_for_layers_in_a_python_list() -> None:
    run = cached("python-list", lambda p: h.train(p, _ListMLP(False), h._seq(), epochs=3))
    if run.events.empty or not run.events["kind"].isin(["parameter_status", "foreign_weight"]).any():
        pytest.skip("this probe does not record parameter_status/foreign_weight events yet")
    _needs(run, "foreign_weight")
    f = {x.name: x for x in report(run).findings}["parameters-not-updated"]
    assert f.severity.value == "error" and "Python list" in f.message
    assert any("nn.ModuleList" in fx for fx in f.fixes)
    fixed = cached("module-list", lambda p: h.train(p, _ListMLP(True), h._seq(), epochs=3))
    assert "parameters-not-updated" not in {x.name for x in report(fixed).findings}


def test_validation_in_train_mode_with_dropout() -> None:
    run = cached("val-train-mode", lambda p: h.train(p, h._he(h.mlp(depth=2, dropout=0.3)), h._seq(), epochs=3,
                                                       eval_for_validation=False))
    _needs(run, "eval_forward")
    f = {x.name: x for x in report(run).findings}["train-mode-during-evaluation"]
    assert f.severity.value == "error" and "Dropout" in f.message
    assert "model.eval()" in f.fixes[0]
    assert "train-mode-during-evaluation" not in {x.name for x in report(h.scenario("healthy-mlp-bn-dropout")).findings}


def test_unshuffled_class_sorted_data() -> None:
    # seen from the per-batch targets (probe facts) or, without them, from the epoch-periodic sawtooth
    def make(p, shuffle: bool):
        data = _sorted_task()  # seeds, then the model is built
        return h.train(p, h._he(h.mlp(depth=2)), data, epochs=5, shuffle=shuffle)

    run = cached("unshuffled", lambda p: make(p, False))
    f = {x.name: x for x in report(run).findings}["unshuffled-data"]
    assert f.severity.value == "warning" and "shuffle=True" in f.fixes[0]
    ev = f.evidence_dict
    assert ev.get("median_mode_frac", 1.0) >= 0.8 and ev.get("profile_corr", 1.0) >= 0.6
    shuffled = cached("sorted-but-shuffled", lambda p: make(p, True))
    assert "unshuffled-data" not in {x.name for x in report(shuffled).findings}


def test_missing_gradient_clipping_is_quiet_when_clipping_or_no_spikes() -> None:
    for name in ("healthy-gru", "healthy-lstm-tokens", "healthy-transformer"):
        rep = report(h.scenario(name), select=["missing-gradient-clipping"])
        assert rep.findings == [], (name, [f.message for f in rep.findings])


# ----------------------------------------------------------------------- infer from what was recorded
def _train_unpassed_scheduler(p, make_sched, per: str, epochs: int = 4):
    """A loop whose scheduler was built but NOT given to trainscope.watch."""
    torch.manual_seed(0)
    model = h._he(h.mlp(depth=2))
    data = h._seq()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = make_sched(opt)
    g = torch.Generator().manual_seed(0)
    with trainscope.watch(model, p, optimizer=opt, every=5) as probe:
        for epoch in range(1, epochs + 1):
            perm = torch.randperm(len(data.x_train), generator=g)
            for i in range(len(data.x_train) // 32):
                idx = perm[i * 32:(i + 1) * 32]
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
                loss.backward()
                opt.step()
                if per == "batch":
                    sched.step()
                probe.log(epoch=epoch, train_loss=loss.detach())
            if per == "epoch":
                sched.step()
    return trainscope.load_run(p)


def test_scheduler_cadence_from_the_lr_trace_when_no_scheduler_was_given() -> None:
    run = cached("steplr-unpassed", lambda p: _train_unpassed_scheduler(
        p, lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.1), "batch"))
    assert not run.meta.get("scheduler")
    f = {x.name: x for x in report(run).findings}["scheduler-step-cadence"]
    assert "no scheduler given to the probe" in f.message and "once per epoch" in f.fixes[0]
    ok = cached("steplr-unpassed-ok", lambda p: _train_unpassed_scheduler(
        p, lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.1), "epoch"))
    assert "scheduler-step-cadence" not in {x.name for x in report(ok).findings}


# ----------------------------------------------------------------------- the detectors on the data contract
def _contract_run(events=(), scalars=(), meta=None):
    """A Run holding exactly the probe facts of the issue-8 data contract (COORDINATION.md)."""
    import json
    from pathlib import Path

    import pandas as pd

    from trainscope.store.run import Run, empty_frame

    ev = pd.DataFrame([{"step": s, "kind": k, "layer": "", "value": v, "detail": json.dumps(d), "rank": 0}
                       for s, k, v, d in events]) if events else empty_frame("events")
    sc = pd.DataFrame([{"step": s, "name": n, "value": v, "epoch": float("nan"), "rank": 0, "time": 0.0}
                       for s, n, v in scalars]) if scalars else empty_frame("scalars")
    return Run(path=Path("contract"), meta=meta or {"model": {"modules": []}}, scalars=sc, events=ev)


def _one(run, rule):
    rep = report(run, select=[rule])
    return rep.findings[0] if rep.findings else None


def test_contract_loss_shape_mismatch() -> None:
    bad = {"criterion": "MSELoss", "producer": "AddmmBackward0", "input_shape": [64, 1], "target_shape": [64],
           "broadcast": True}
    f = _one(_contract_run([(0, "criterion_input", 1.0, bad)]), "loss-shape-mismatch")
    assert f is not None and f.evidence_dict["broadcast_shape"] == [64, 64]
    ok = dict(bad, input_shape=[64], broadcast=False)
    assert _one(_contract_run([(0, "criterion_input", 1.0, ok)]), "loss-shape-mismatch") is None
    ce = {"criterion": "cross_entropy", "input_shape": [64, 10], "target_shape": [64], "broadcast": False}
    assert _one(_contract_run([(0, "criterion_input", 1.0, ce)]), "loss-shape-mismatch") is None


@pytest.mark.parametrize("d, expect", [
    ({"criterion": "MSELoss", "producer": "SoftmaxBackward0", "is_prob": True, "target_min": 0, "target_max": 1,
      "target_integer": False}, "class targets"),
    ({"criterion": "binary_cross_entropy", "producer": "AddmmBackward0", "is_prob": False, "min": -3, "max": 4},
     "raw outputs"),
    ({"criterion": "nll_loss", "producer": "AddmmBackward0", "min": -3, "max": 4}, "log-probabilities"),
    ({"criterion": "MSELoss", "producer": "ReluBackward0", "target_min": -2.0, "target_max": 3.0}, "ReLU"),
    ({"criterion": "MSELoss", "producer": "SigmoidBackward0", "target_min": 0.0, "target_max": 50.0,
      "target_in_unit": False}, "sigmoid"),
    ({"criterion": "BCELoss", "producer": "SoftmaxBackward0", "is_prob": True, "target_multi_label": True,
      "target_min": 0, "target_max": 1}, "multi-label"),
    ({"criterion": "CrossEntropyLoss", "producer": "SoftmaxBackward0", "dim1_size": 1}, "size 1"),
])
def test_contract_output_activation_mismatch(d, expect) -> None:
    f = _one(_contract_run([(0, "criterion_input", 1.0, d)]), "output-activation-mismatch")
    assert f is not None and expect in f.message, (d, f and f.message)


def test_contract_output_activation_fits() -> None:
    for d in ({"criterion": "MSELoss", "producer": "AddmmBackward0", "target_min": -2, "target_max": 3},
              {"criterion": "BCEWithLogitsLoss", "producer": "AddmmBackward0", "target_min": 0, "target_max": 1},
              {"criterion": "BCELoss", "producer": "SigmoidBackward0", "is_prob": True, "target_min": 0,
               "target_max": 1, "target_multi_label": True},
              {"criterion": "nll_loss", "producer": "LogSoftmaxBackward0", "is_log_prob": True},
              # a sigmoid behind max-pooling and a clamp is still a probability: BCELoss fits it
              {"criterion": "BCELoss", "producer": "ClampBackward1", "is_prob": False, "min": 0.49, "max": 0.58,
               "target_min": 0.0, "target_max": 1.0},
              # a Gaussian heatmap spans 0..1 but is a regression target: MSE on a sigmoid fits it
              {"criterion": "MSELoss", "producer": "SigmoidBackward0", "is_prob": True, "target_min": 0.0,
               "target_max": 1.0, "target_integer": False, "target_binary": False, "target_in_unit": True}):
        assert _one(_contract_run([(0, "criterion_input", 1.0, d)]), "output-activation-mismatch") is None, d


def test_contract_parameters_not_updated() -> None:
    status = {"never_grad": ["enc.weight", "enc.bias"], "all_zero_grad": [], "not_in_optimizer": [],
              "unchanged": [], "optimizer_foreign": 0, "n_trainable": 6}
    f = _one(_contract_run([(2, "parameter_status", 0.0, status)]), "parameters-not-updated")
    assert f is not None and f.severity.value == "warning" and "never received a gradient" in f.message
    swapped = dict(status, never_grad=[], not_in_optimizer=["fc.weight", "fc.bias"], optimizer_foreign=4)
    f = _one(_contract_run([(2, "parameter_status", 0.0, swapped)]), "parameters-not-updated")
    assert f.severity.value == "error" and "not in the model" in f.message
    clean = dict(status, never_grad=[])
    assert _one(_contract_run([(2, "parameter_status", 0.0, clean)]), "parameters-not-updated") is None


def test_contract_train_mode_during_evaluation() -> None:
    d = {"training": True, "has_dropout": True, "has_batchnorm": False, "step": 16}
    f = _one(_contract_run([(16, "eval_forward", 1.0, d)]), "train-mode-during-evaluation")
    assert f.severity.value == "error"
    f = _one(_contract_run([(16, "eval_forward", 1.0, dict(d, has_dropout=False))]), "train-mode-during-evaluation")
    assert f.severity.value == "info"
    assert _one(_contract_run([(16, "eval_forward", 0.0, dict(d, training=False))]),
                "train-mode-during-evaluation") is None


def test_contract_unshuffled_data() -> None:
    sorted_rows = [(s, "batch/target_mode_frac", 1.0) for s in range(40)] + \
                  [(s, "batch/target_mode", float(s // 10)) for s in range(40)]
    f = _one(_contract_run(scalars=sorted_rows), "unshuffled-data")
    assert f is not None and f.evidence_dict["mode_changes"] == 3
    imbalanced = [(s, "batch/target_mode_frac", 0.9) for s in range(40)] + \
                 [(s, "batch/target_mode", 0.0) for s in range(40)]
    assert _one(_contract_run(scalars=imbalanced), "unshuffled-data") is None
    shuffled = [(s, "batch/target_mode_frac", 0.4) for s in range(40)] + \
               [(s, "batch/target_mode", float(s % 4)) for s in range(40)]
    assert _one(_contract_run(scalars=shuffled), "unshuffled-data") is None


# ----------------------------------------------------------------------- rule pairs that could contradict
LOWERS = ("lower the learning rate", "reduce the learning rate", "smaller lr", "10x smaller")


def _lowers_lr(fix: str) -> bool:
    return any(w in fix.lower() for w in LOWERS)


@pytest.mark.parametrize("name", sorted(h.LABELS))
def test_no_run_is_told_to_raise_and_lower_the_lr(name: str) -> None:
    rep = report(h.scenario(name))
    loud_fixes = [fx for f in rep.findings if f.severity.rank >= 1 for fx in f.fixes]
    raise_ = [fx for fx in loud_fixes if raises_lr(fx)]
    lower = [fx for fx in loud_fixes if _lowers_lr(fx)]
    assert not (raise_ and lower), (raise_, lower)
    names = {f.name for f in rep.findings if f.severity.rank >= 1}
    assert not ({"lr-too-high", "lr-too-low"} <= names)
    if "lr-too-high" in {f.name for f in rep.findings}:
        assert raise_ == [], raise_


# ----------------------------------------------------------------------- second round (held-out misses' mechanisms)
def test_sigmoid_stack_names_the_activation_not_the_init() -> None:
    # a sigmoid's slope is at most 1/4: six sigmoid layers starve the first whatever the init, so
    # vanishing-gradients is the root cause and poor-initialization / no-normalization are explained by it
    rep = report(h.scenario("deep-sigmoid"))
    f = loud(rep)["vanishing-gradients"]
    assert "sigmoid" in f.message and f.evidence_dict["sigmoid_layers"] >= 4
    assert "ReLU" in f.fixes[0]
    shown = {x.name: x for x in rep.findings}
    for smell in ("poor-initialization", "no-normalization-deep-stack"):
        if smell in shown:
            assert shown[smell].severity.value == "info" and "vanishing-gradients" in shown[smell].message, smell


class _ReluRegressor(nn.Module):
    def __init__(self, relu_out: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU())
        self.head = nn.Linear(32, 1)
        self.relu_out = relu_out
        with torch.no_grad():
            self.head.bias.fill_(-4.0)  # an unlucky start: the head's output is below zero for every input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.body(x)).squeeze(-1)
        return torch.relu(out) if self.relu_out else out


def _positive_regression() -> "h.Data":
    d = h.teacher_task(n=512, n_val=128)
    return h.Data(d.x_train, d.x_train[:, :4].abs().sum(1) / 4 + 1, d.x_val, d.x_val[:, :4].abs().sum(1) / 4 + 1, 1)


def test_dead_output_relu_is_dead_relu_with_the_head_fix() -> None:
    def make(p, relu_out: bool):
        torch.manual_seed(0)
        return h.train(p, _ReluRegressor(relu_out), _positive_regression(), epochs=4, lr=1e-2, criterion=nn.MSELoss())

    rep = report(cached("dead-output-relu", lambda p: make(p, True)))
    f = loud(rep)["dead-relu"]
    assert "output is a ReLU that never fires" in f.message and "Remove the ReLU" in f.fixes[0]
    assert not any("learning rate" in fx for fx in f.fixes)  # it died at its start, not from large updates
    zero = {x.name: x for x in rep.findings}.get("zero-gradients")
    assert zero is None or zero.severity.value == "info"
    healthy = report(cached("linear-output", lambda p: make(p, False)))
    assert "dead-relu" not in {x.name for x in healthy.findings}
    assert loud(healthy) == {}, {n: x.message for n, x in loud(healthy).items()}


def _log(tmp_path, name: str, header: str, rows: list[str]):
    p = tmp_path / f"{name}.csv"
    p.write_text("\n".join([header] + rows) + "\n")
    return diagnose_report(str(p))


def test_frozen_loss_is_degenerate_evidence_even_in_a_short_log(tmp_path) -> None:
    rep = _log(tmp_path, "frozen", "epoch,train_loss", [f"{e},1.0097" for e in range(1, 4)])
    f = {x.name: x for x in rep.findings}["loss-not-decreasing"]
    assert f.severity.value == "error" and "exactly 1.0097" in f.message
    assert "requires_grad" in f.fixes[0]  # not a step-size problem first
    val_only = _log(tmp_path, "val", "epoch,val_loss", [f"{e},0.28823" for e in range(1, 11)])
    assert "validation loss" in {x.name: x for x in val_only.findings}["loss-not-decreasing"].message
    moving = _log(tmp_path, "moving", "epoch,train_loss", [f"{e},{1.0 - 0.0001 * e}" for e in range(1, 4)])
    assert "loss-not-decreasing" not in {x.name for x in moving.findings}  # 3 values: too short to judge


def test_a_late_window_that_trends_down_is_not_loss_not_decreasing(tmp_path) -> None:
    down = _log(tmp_path, "down", "epoch,train_loss", [f"{e},{13.1 - 0.07 * (e - 154)}" for e in range(154, 162)])
    assert "loss-not-decreasing" not in {x.name for x in down.findings}
    flat = _log(tmp_path, "flat", "epoch,train_loss",
                [f"{e},{0.0255 + 0.001 * ((e * 7) % 3 - 1)}" for e in range(76, 93)])
    f = {x.name: x for x in flat.findings}["loss-not-decreasing"]
    assert f.severity.value == "info" and "window of a longer run" in f.message
    # the same flat curve logged from the start is a real stall
    start = _log(tmp_path, "start", "epoch,train_loss", [f"{e},{0.0255 + 0.001 * ((e * 7) % 3 - 1)}" for e in range(17)])
    assert {x.name: x for x in start.findings}["loss-not-decreasing"].severity.value != "info"


def test_contract_unshuffled_data_three_batches_per_class() -> None:
    # 10 classes, 3 batches of 50 each: the lead class changes every third batch, which is still an order
    rows = [(s, "batch/target_mode_frac", 1.0) for s in range(60)] + \
           [(s, "batch/target_mode", float((s // 3) % 10)) for s in range(60)] + \
           [(s, "loop/batch_size", 50.0) for s in range(60)]
    f = _one(_contract_run(scalars=rows), "unshuffled-data")
    assert f is not None and f.evidence_dict["dominant_share"] <= 0.2
    # batches of one sample are pure by chance: a shuffled stream of single samples is not an order
    single = [(s, "batch/target_mode_frac", 1.0) for s in range(60)] + \
             [(s, "batch/target_mode", float((s * 7) % 10)) for s in range(60)] + \
             [(s, "loop/batch_size", 1.0) for s in range(60)]
    assert _one(_contract_run(scalars=single), "unshuffled-data") is None


def test_summed_loss_with_momentum_that_climbs_back_is_lr_too_high() -> None:
    # pytorch-fcn's trap: a loss summed over the batch with SGD momentum 0.99 needs a far smaller LR than
    # a mean; the loss first falls, then climbs back. The summed loss's chance level is n x ln(C).
    def make(p, lr: float):
        torch.manual_seed(0)
        return h.train(p, h._he(h.mlp(depth=2)), h.teacher_task(n=1024), epochs=6, optimizer="sgd", momentum=0.99,
                       lr=lr, criterion=nn.CrossEntropyLoss(reduction="sum"))

    rep = report(cached("summed-momentum-high", lambda p: make(p, 3e-3)))
    f = loud(rep)["lr-too-high"]
    assert f.severity.rank >= 1 and float(f.evidence_dict["suggested_lr"]) < 3e-3
    assert not any(raises_lr(fx) for fx in all_fixes(rep))
    ok = report(cached("summed-momentum-ok", lambda p: make(p, 5e-5)))
    assert loud(ok) == {}, {n: x.message for n, x in loud(ok).items()}


class _SqueezedSigmoid(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x)).squeeze(-1)  # the loss sees SqueezeBackward, made by a sigmoid


def test_sigmoid_behind_a_squeeze_into_bce_with_logits_is_seen(tmp_path) -> None:
    d = h.teacher_task(n=256, classes=2, n_val=64)
    data = h.Data(d.x_train, d.y_train.float(), d.x_val, d.y_val.float(), 1)
    torch.manual_seed(0)
    run = h.train(tmp_path / "r", _SqueezedSigmoid(), data, epochs=1, criterion=nn.BCEWithLogitsLoss())
    f = {x.name: x for x in report(run).findings}["output-activation-mismatch"]
    assert f.severity.value == "error" and "sigmoid outputs" in f.message


class _Standardize(nn.Module):
    def __init__(self, x: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", x.mean(0))
        self.register_buffer("std", x.std(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def test_unnormalized_inputs_that_the_model_normalizes_itself_are_info(tmp_path) -> None:
    d = h.scaled(h.teacher_task(n=512, n_val=128), 300.0, 50.0)
    torch.manual_seed(0)
    inside = h.train(tmp_path / "inside", nn.Sequential(_Standardize(d.x_train), h._he(h.mlp())), d, epochs=2)
    f = {x.name: x for x in report(inside).findings}["unnormalized-inputs"]
    assert f.severity.value == "info" and "normalizes its input itself" in f.message
    torch.manual_seed(0)
    raw = h.train(tmp_path / "raw", h._he(h.mlp()), d, epochs=2)
    g = loud(report(raw))["unnormalized-inputs"]
    assert "receives it" in g.message and g.evidence_dict["largest_layer_output_std"] > 5


def test_val_loss_noise_around_a_converged_level_is_not_oscillation(tmp_path) -> None:
    rows = [f"{e},{1.6 * 0.5 ** e + 0.01},{0.033 + (0.01 if e % 2 else -0.01)}" for e in range(10)]
    rep = _log(tmp_path, "converged", "epoch,train_loss,val_loss", rows)
    f = {x.name: x for x in rep.findings}.get("oscillation")
    assert f is None or (f.severity.value == "info" and "converged" in f.message)
    rows = [f"{e},{1.0 / (1 + e) + 0.3},{0.6 + (0.25 if e % 2 else -0.25)}" for e in range(10)]
    swinging = {x.name: x for x in _log(tmp_path, "swinging", "epoch,train_loss,val_loss", rows).findings}
    assert swinging["oscillation"].severity.value == "warning"


def _lr_run(values, steps_per_epoch: int = 16):
    rows = [(s, "lr/0", float(v)) for s, v in enumerate(values)]
    epochs = [(e * steps_per_epoch, "epoch", float(e), {}) for e in range(len(values) // steps_per_epoch)]
    return _contract_run(epochs, scalars=rows)


def test_cadence_from_the_trace_of_a_cycling_cosine_and_not_from_a_warmup_from_zero() -> None:
    import math

    # CosineAnnealingLR(T_max=10 epochs) stepped every batch: 0 at step 10, back up at 20, ...
    cycling = [0.5e-3 * (1 + math.cos(math.pi * s / 10)) for s in range(160)]
    f = _one(_lr_run(cycling), "scheduler-step-cadence")
    assert f is not None and "stepped every batch" in f.message
    # a warmup from exactly 0 then a cosine decay over the whole run is a per-batch schedule done right
    warm = [1e-3 * s / 10 if s < 10 else 0.5e-3 * (1 + math.cos(math.pi * (s - 10) / 150)) for s in range(160)]
    assert _one(_lr_run(warm), "scheduler-step-cadence") is None


class _LogOfSoftmax(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.softmax(x, dim=1))  # two steps: -inf once a probability underflows


def test_nan_from_log_of_softmax_is_named_even_with_a_high_lr(tmp_path) -> None:
    torch.manual_seed(0)
    model = h.mlp(hidden=64, out_act=_LogOfSoftmax())
    run = h.train(tmp_path / "r", model, h.scaled(h.teacher_task(n=512, n_val=128), 20.0), epochs=3,
                  lr=0.1, criterion=nn.NLLLoss())
    rep = report(run)
    f = {x.name: x for x in rep.findings}["nan-or-inf"]
    assert f.severity.value == "error" and "log(softmax(x))" in f.message
    assert "log_softmax" in f.fixes[0]


def _loop_with_optimizer_over(tmp_path, name: str, pick) -> "trainscope.store.run.Run":
    from trainscope.store.reader import load_run

    torch.manual_seed(0)
    d = h.teacher_task(n=256, n_val=64)
    model = h.mlp()
    opt = torch.optim.SGD(pick(model), lr=0.05)
    crit = nn.CrossEntropyLoss()
    with trainscope.watch(model, tmp_path / name, optimizer=opt) as probe:
        for epoch in range(2):
            for i in range(0, 256, 32):
                opt.zero_grad()
                loss = crit(model(d.x_train[i:i + 32]), d.y_train[i:i + 32])
                loss.backward()
                opt.step()
                probe.log(epoch=epoch, train_loss=loss)
    return load_run(tmp_path / name)


def test_zero_grad_is_judged_on_a_parameter_the_optimizer_holds(tmp_path) -> None:
    # the last layer left out of the optimizer: optimizer.zero_grad() is called, so no missing-zero-grad;
    # the left-out layer is parameters-not-updated's finding
    part = _loop_with_optimizer_over(tmp_path, "part", lambda m: list(m[0].parameters()) + list(m[2].parameters()))
    found = {x.name: x for x in report(part).findings}
    assert "missing-zero-grad" not in found and found["parameters-not-updated"].severity.value == "error"
    # an optimizer over another model's parameters: the model's .grad piles up, explained by the wiring bug
    other = h.mlp()
    alien = _loop_with_optimizer_over(tmp_path, "alien", lambda m: other.parameters())
    found = {x.name: x for x in report(alien).findings}
    assert found["parameters-not-updated"].severity.value == "error"
    assert "missing-zero-grad" not in found or found["missing-zero-grad"].severity.value == "info"


def test_softmax_only_in_the_validation_loss_is_found(tmp_path) -> None:
    from trainscope.store.reader import load_run

    def make(name: str, softmax_in_val: bool):
        torch.manual_seed(0)
        d = h.teacher_task(n=256, n_val=64)
        model = h.mlp()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        crit = nn.CrossEntropyLoss()
        with trainscope.watch(model, tmp_path / name, optimizer=opt, criterion=crit) as probe:
            for epoch in range(2):
                model.train()
                for i in range(0, 256, 32):
                    opt.zero_grad()
                    loss = crit(model(d.x_train[i:i + 32]), d.y_train[i:i + 32])
                    loss.backward()
                    opt.step()
                    probe.log(epoch=epoch, train_loss=loss)
                model.eval()
                with torch.no_grad():
                    out = model(d.x_val)
                    probe.log(epoch=epoch, val_loss=crit(torch.softmax(out, 1) if softmax_in_val else out, d.y_val))
        return load_run(tmp_path / name)

    f = {x.name: x for x in report(make("val-softmax", True)).findings}["softmax-before-cross-entropy"]
    assert f.severity.value == "error" and "in evaluation" in f.message
    assert "softmax-before-cross-entropy" not in {x.name for x in report(make("val-logits", False)).findings}


def _dropout_loop(tmp_path, name: str, *, val: str = "", accumulate_summed: int = 1):
    """A dropout MLP; val: '' (none), 'train-mode' (no eval(), no no_grad), 'eval' (eval(), no no_grad)."""
    from trainscope.store.reader import load_run

    torch.manual_seed(0)
    d = h.teacher_task(n=256, n_val=128)
    model = h.mlp(dropout=0.3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    crit = nn.CrossEntropyLoss()
    with trainscope.watch(model, tmp_path / name, optimizer=opt, criterion=crit) as probe:
        for epoch in range(3):
            model.train()
            for i in range(0, 256, 32 * accumulate_summed):
                opt.zero_grad()
                losses = [crit(model(d.x_train[j:j + 32]), d.y_train[j:j + 32])
                          for j in range(i, i + 32 * accumulate_summed, 32)]
                loss = sum(losses)  # several forwards, one backward: every output is reached
                loss.backward()
                opt.step()
                probe.log(epoch=epoch, train_loss=loss)
            if val:
                if val == "eval":
                    model.eval()
                for j in range(0, 128, 32):  # no torch.no_grad(): the graph is built and thrown away
                    probe.log(epoch=epoch, val_loss=crit(model(d.x_val[j:j + 32]), d.y_val[j:j + 32]).item())
    return load_run(tmp_path / name)


def test_validation_without_no_grad_in_train_mode_is_found(tmp_path) -> None:
    f = {x.name: x for x in report(_dropout_loop(tmp_path, "val-train", val="train-mode")).findings}[
        "train-mode-during-evaluation"]
    assert f.severity.value == "error" and "never backpropagated" in f.message
    for name, kw in (("val-eval", {"val": "eval"}), ("summed-accumulation", {"accumulate_summed": 4})):
        names = {x.name for x in report(_dropout_loop(tmp_path, name, **kw)).findings}
        assert "train-mode-during-evaluation" not in names, name


def test_a_log_printed_with_few_digits_is_not_frozen(tmp_path) -> None:
    # a converged loss printed to 2 decimals repeats exactly; that is the printing, not a frozen model
    rep = _log(tmp_path, "rounded", "epoch,train_loss", [f"{e},0.01" for e in range(1, 6)])
    f = {x.name: x for x in rep.findings}.get("loss-not-decreasing")
    assert f is None or not f.evidence_dict.get("frozen")
