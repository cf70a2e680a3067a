"""The committed sample runs (`scripts/make_sample_runs.py`) and what `trainscope.diagnose` must say
about each.

EXPECTED is the expectation table: `present` rules must be among the findings (any severity);
`absent` rules must not be; `clean` runs must have no finding at warning or above. Rules that are not
in the catalogue are skipped (and reported by `test_expected_rules_exist`), so the table can name a
rule before its detector lands.
"""
from __future__ import annotations

from pathlib import Path

import pytest

import trainscope
from trainscope.rules.catalogue import load_catalogue

ROOT = Path(__file__).resolve().parents[1] / "sample_runs"

EXPECTED: dict[str, dict] = {
    "streamrec-baseline": {"present": {"overfitting", "no-early-stopping", "poor-initialization"}},
    "streamrec-he": {"present": {"overfitting"}, "absent": {"poor-initialization"}},
    "streamrec-bn": {"present": {"overfitting"}, "absent": {"poor-initialization"}},
    "streamrec-regularized": {"absent": {"poor-initialization"}},
    "healthy-streamrec-full": {"clean": True},
    "diverging-lr": {"present": {"nan-or-inf", "lr-too-high"}},
    "flat-loss": {"present": {"lr-too-low"}},
    "dead-relu": {"present": {"dead-relu"}},
    "vanishing-sigmoid": {"present": {"vanishing-gradients", "poor-initialization"}},
    "docclf-buggy": {"present": {"softmax-before-cross-entropy", "eval-mode-during-training", "missing-zero-grad",
                                 "no-validation"}},
    "healthy-docclf-fixed": {"clean": True},
    "healthy-digits": {"clean": True},
}


@pytest.fixture(scope="module")
def catalogue():
    return load_catalogue()


def test_every_sample_run_is_in_the_table_and_present():
    on_disk = {p.name for p in ROOT.iterdir() if p.is_dir()}
    assert on_disk == set(EXPECTED), "regenerate with scripts/make_sample_runs.py and update EXPECTED"
    readme = (ROOT / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in EXPECTED)


def test_sample_runs_stay_small():
    sizes = {p.name: sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and f.name != "report.html")
             for p in ROOT.iterdir() if p.is_dir()}
    assert max(sizes.values()) < 3 * 2**20, sizes
    assert sum(sizes.values()) < 15 * 2**20


def test_expected_rules_exist(catalogue):
    named = set().union(*(e.get("present", set()) | e.get("absent", set()) for e in EXPECTED.values()))
    assert named <= set(catalogue), f"not in the catalogue yet: {sorted(named - set(catalogue))}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_run_findings(name, catalogue):
    run = trainscope.load_run(ROOT / name)
    assert run.status == "finished"
    assert run.meta["config"]["experiment"]["name"]  # recorded by the reference trainer
    findings = trainscope.diagnose(run)
    found = {f.name for f in findings}
    serious = sorted(f.name for f in findings if f.severity.value in ("error", "warning"))
    exp = EXPECTED[name]
    present = {r for r in exp.get("present", set()) if r in catalogue}
    assert present <= found, f"{name}: missing {sorted(present - found)}; found {sorted(found)}"
    absent = {r for r in exp.get("absent", set()) if r in catalogue}
    assert not (absent & found), f"{name}: should not report {sorted(absent & found)}"
    if exp.get("clean"):
        assert serious == [], f"{name} is healthy but got {serious}"


def test_sample_runs_are_reproducible_from_the_script(tmp_path, monkeypatch):
    """Re-record the cheapest sample exactly as scripts/make_sample_runs.py does: same numbers."""
    import importlib.util
    import sys

    import numpy as np
    import torch

    spec = importlib.util.spec_from_file_location("make_sample_runs", ROOT.parent / "scripts" / "make_sample_runs.py")
    script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "make_sample_runs", script)  # dataclasses look their module up
    spec.loader.exec_module(script)
    sample = next(s for s in script.SAMPLES if s.name == "healthy-digits")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        script.OUT = tmp_path
        script.make(sample)
    finally:
        torch.set_num_threads(old)
    fresh, committed = trainscope.load_run(tmp_path / sample.name), trainscope.load_run(ROOT / sample.name)
    for name in ("train_loss", "val_loss", "test_acc"):
        a, b = fresh.scalar(name), committed.scalar(name)
        assert a.index.tolist() == b.index.tolist(), name
        np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-3, err_msg=name)  # other CPUs round differently (1e-4 seen)
