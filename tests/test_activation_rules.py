"""Activation rules (TS3xx) on real tiny training runs."""
from __future__ import annotations

import pytest

from helpers_training import HEALTHY, findings, scenario

FAMILY = ["TS3"]


@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_runs_give_no_activation_findings(name: str) -> None:
    found = findings(scenario(name), select=FAMILY)
    assert found == {}, {n: f.message for n, f in found.items()}


def test_saturated_tanh_on_unnormalized_inputs() -> None:
    f = findings(scenario("saturated-tanh"), select=FAMILY)["saturated-activations"]
    assert f.layers[0] == "1"  # the first Tanh, right after the unnormalized input
    assert f.evidence_dict["frac_saturated"] >= 0.5
    assert "(Tanh)" in f.message and ">= 50%" in f.message


def test_saturation_is_explained_by_the_unnormalized_inputs() -> None:
    found = findings(scenario("saturated-tanh"))
    assert "unnormalized-inputs" in found
    assert found["saturated-activations"].severity.value == "info"
    assert "unnormalized-inputs" in found["saturated-activations"].evidence_dict["explained_by"]


def test_final_sigmoid_of_a_confident_model_is_not_saturation() -> None:
    # the model's own output sigmoid (BCELoss) may sit near 0/1: that is the goal, not a fault
    assert "saturated-activations" not in findings(scenario("healthy-sigmoid-bce"), select=FAMILY)
    assert "saturated-activations" not in findings(scenario("sigmoid-bcelogits"), select=FAMILY)


def test_collapsed_activations_with_tiny_init() -> None:
    f = findings(scenario("collapsed-tiny-init"), select=FAMILY)["collapsed-activations"]
    assert f.layers[0] == "2"  # the first layer where the signal is gone (forward order)
    assert f.evidence_dict["std"] <= f.evidence_dict["threshold"]
    assert "<=" in f.message


def test_collapse_behind_dead_relus_is_explained_by_them() -> None:
    found = findings(scenario("dead-relu-bias"))
    assert "collapsed-activations" in found
    assert "dead-relu" in found["collapsed-activations"].evidence_dict["explained_by"]
