"""Issue 8: warnings a user can act on. Each rule that used to cry wolf gets a run where the
configuration smell exists but the run is healthy (no warning) and one where the harm is real
(a warning); and no rule may advise the opposite of the truth (raising a too-high LR)."""
from __future__ import annotations

import pytest

import helpers_training as h
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
