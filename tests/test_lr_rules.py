"""Learning-rate rules (TS5xx) from update-to-weight ratios and the loss, on real runs."""
from __future__ import annotations

import pytest

from helpers_training import HEALTHY, findings, scenario

FAMILY = ["TS5"]


@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_runs_give_no_lr_findings(name: str) -> None:
    found = findings(scenario(name), select=FAMILY)
    assert found == {}, {n: f.message for n, f in found.items()}


@pytest.mark.parametrize("name", ["lr-high-adam", "sgd-lr-2"])
def test_lr_too_high(name: str) -> None:
    f = findings(scenario(name), select=FAMILY)["lr-too-high"]
    ev = f.evidence_dict
    assert ev["update_ratio"] > 0.1
    # above ratio_extreme (1.0) the message quotes that threshold instead (a run that goes NaN can land there)
    assert "> 0.1 " in f.message or (ev["update_ratio"] > 1 and "> 1 " in f.message)
    suggested = float(ev["suggested_lr"])
    assert suggested < ev["lr"] / 10  # a concrete, much smaller LR
    assert f"to about {ev['suggested_lr']}" in f.fixes[0]


def test_lr_too_high_explains_its_symptoms() -> None:
    found = findings(scenario("sgd-lr-2"))
    for symptom in ("exploding-gradients", "nan-or-inf"):
        assert "lr-too-high" in found[symptom].evidence_dict["explained_by"], symptom


def test_lr_too_low() -> None:
    f = findings(scenario("lr-low-sgd"), select=FAMILY)["lr-too-low"]
    ev = f.evidence_dict
    assert ev["update_ratio"] < 1e-4 and ev["lr"] == pytest.approx(1e-5)
    assert ev["loss_drop"] <= 0.2
    assert "< 1.0e-04" in f.message and "fastest-moving layer" in f.message
    assert float(ev["suggested_lr"]) >= 1e-4  # 10x+ larger
    assert f"to about {ev['suggested_lr']}" in f.fixes[0]


def test_lr_too_low_stays_quiet_while_the_loss_falls() -> None:
    # the same tiny ratio threshold pushed up to catch a healthy run: the loss gate keeps it quiet
    run = scenario("healthy-plain-sgd")
    assert "lr-too-low" not in findings(run, select=FAMILY, settings={"lr-too-low": {"ratio_min": 1.0}})
    loud = findings(run, select=FAMILY, settings={"lr-too-low": {"ratio_min": 1.0, "max_loss_drop": 0.99}})
    assert "lr-too-low" in loud  # and the gate is what kept it quiet


def test_lr_too_low_ignores_a_schedule_tail() -> None:
    # cosine to ~0 at the end: the ratio is judged at the working LR, not on the decayed tail
    assert "lr-too-low" not in findings(scenario("healthy-cosine-per-batch"), select=FAMILY)
