"""Issue 10, probe side: a bad log value, a failed write or a reused run dir never costs data."""
from __future__ import annotations

import warnings
from fractions import Fraction

import pytest
import torch
from torch import nn

import trainscope
from trainscope.store import writer as writer_mod


def _train(path, steps=50, bad_at=None, **options):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    probe = trainscope.watch(model, path, optimizer=opt, every=5, **options)
    for s in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        probe.log(train_loss=loss)
        if bad_at is not None and s >= bad_at:
            bad = torch.sparse_coo_tensor([[0]], [1.0], (3,))
            probe.log(odd=10**400, frac=Fraction(1, 3), meta=torch.empty(1, device="meta"), sparse=bad,
                      text="1.5", ok=float(s))
    probe.close()
    return probe


def test_one_bad_log_value_is_dropped_alone_with_one_warning(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probe = _train(tmp_path / "r", steps=50, bad_at=5, flush_seconds=0.0)
    messages = [str(w.message) for w in caught if "trainscope" in str(w.message)]
    for name in ("odd", "frac", "meta", "sparse", "text"):
        assert sum(f"probe.log({name}=...) dropped" in m for m in messages) == 1, (name, messages)
    assert not [m for m in messages if "dropped" not in m], messages
    run = trainscope.load_run(tmp_path / "r")
    assert run.status == "finished" and run.meta["disabled_hooks"] == []
    assert run.scalar("train_loss").index.tolist() == list(range(50))
    assert run.scalar("ok").index.tolist() == list(range(5, 50))
    assert run.scalar("grad_norm").index.tolist() == list(range(50))
    assert not run.layers.empty and len(run.init) == 2
    dropped = run.events_of("value_dropped")
    assert sorted(dropped["detail"].map(lambda d: __import__("json").loads(d)["name"])) == \
        ["frac", "meta", "odd", "sparse", "text"]
    assert probe.clock.step == 50


def test_a_failed_write_is_retried_and_never_disables_a_hook(tmp_path, monkeypatch):
    real_append = writer_mod.RunWriter.append
    failures = {"n": 0}

    def flaky(self, table, columns):
        if failures["n"] < 12:  # the disk is full for the first dozen writes
            failures["n"] += 1
            raise OSError(28, "No space left on device")
        return real_append(self, table, columns)

    monkeypatch.setattr(writer_mod.RunWriter, "append", flaky)
    with pytest.warns(RuntimeWarning, match="could not write the run store .*No space left.*retrying"):
        probe = _train(tmp_path / "r", steps=40, flush_seconds=0.0)
    run = trainscope.load_run(tmp_path / "r")
    assert failures["n"] == 12
    assert run.meta["disabled_hooks"] == [] and probe.clock.step == 40
    for name in ("train_loss", "grad_norm", "lr/0", "loop/backwards"):
        s = run.scalars[run.scalars["name"] == name]
        assert s["step"].tolist() == list(range(40)), name  # every row once, none lost, none twice
    assert len(run.init) == 2 and not run.layers.empty
    assert len(run.events_of("run")) == 2


def test_resume_continues_the_steps_of_the_last_attempt(tmp_path):
    _train(tmp_path / "r", steps=10)
    probe = _train(tmp_path / "r", steps=10, resume=True)
    assert probe.clock.step == 20
    run = trainscope.load_run(tmp_path / "r")
    assert run.meta["attempts"] == [0] and run.meta["resumes"][0]["step"] == 10
    assert run.scalar("train_loss").index.tolist() == list(range(20))
    assert len(run.init) == 2  # the resumed attempt keeps the first init table
    _train(tmp_path / "r", steps=3)  # no resume: a new attempt
    assert trainscope.load_run(tmp_path / "r").meta["attempts"] == [0, 1]


def test_a_model_class_name_cannot_put_the_default_run_dir_outside_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = type("../../x/evil", (nn.Linear,), {})
    probe = trainscope.watch(evil(2, 1))
    probe.close()
    assert probe.run_dir.resolve().parent == (tmp_path / "runs").resolve()
    assert not (tmp_path.parent / "x").exists()
