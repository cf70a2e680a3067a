"""Issue 11: the probe at scale (per-layer gradient norms every step, capture on anomaly, background
flush, no host copies on cheap steps). Tiny models, a few seconds in all."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import trainscope
from trainscope.probe.clock import FULL_STEPS, SAMPLE_EVERY
from trainscope.probe.probe import default_grad_norm_every


class _Tied(nn.Module):
    """Embedding tied to the output layer (one parameter in two layers), a frozen bias, a BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(12, 8)
        self.hidden = nn.Linear(8, 8)
        self.hidden.bias.requires_grad_(False)
        self.norm = nn.LayerNorm(8)
        self.out = nn.Linear(8, 12)
        self.out.weight = self.emb.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(torch.relu(self.hidden(self.emb(idx)))))


def test_per_layer_grad_norms_every_step_equal_vector_norm(tmp_path):
    """With the defaults, every step (past the dense first 200 too) has a `grad_norm` row per layer equal to
    torch.linalg.vector_norm over that layer's gradients, read independently by the test's own pre-hook."""
    torch.manual_seed(0)
    model = _Tied()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    crit = nn.CrossEntropyLoss()
    layers = {name: [p for p in m.parameters(recurse=False) if p.requires_grad]
              for name, m in model.named_modules() if any(p.requires_grad for p in m.parameters(recurse=False))}
    want: dict[int, dict[str, float]] = {}
    want_global: dict[int, float] = {}

    def independent(optimizer, args, kwargs):
        s = len(want)
        want[s] = {n: torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in ps])).item()
                   for n, ps in layers.items()}
        unique = {id(p): p for ps in layers.values() for p in ps}.values()
        want_global[s] = torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in unique])).item()

    n_steps = 215
    with trainscope.watch(model, tmp_path / "r", optimizer=opt, criterion=crit, flush_seconds=0.05, grad_norm_every=1):
        opt.register_step_pre_hook(independent)
        g = torch.Generator().manual_seed(1)
        for _ in range(n_steps):
            idx = torch.randint(0, 12, (16,), generator=g)
            opt.zero_grad()
            loss = crit(model(idx), (idx + 1) % 12)
            loss.backward()
            opt.step()
    run = trainscope.load_run(tmp_path / "r")
    rows = run.layers[run.layers.kind == "grad_norm"]
    assert sorted(rows.step.unique()) == list(range(n_steps))  # every step, not every 10th after 200
    assert set(rows.layer) == set(layers)
    got = {(int(r.step), r.layer): r.norm for r in rows.itertuples()}
    assert len(got) == len(rows) == n_steps * len(layers)  # one row per layer and step
    for s, per_layer in want.items():
        for name, v in per_layer.items():
            assert got[s, name] == pytest.approx(v, rel=1e-5, abs=1e-9), (s, name)
    numel = rows.groupby("layer").numel.first()
    assert numel["out"] == 12 * 8 + 12 and numel["hidden"] == 64  # the tied weight in both; frozen bias out
    gn = run.scalar("grad_norm")
    assert list(gn.index) == list(range(n_steps))
    for s, v in gn.items():
        assert v == pytest.approx(want_global[int(s)], rel=1e-5)  # the tied weight counted once


def _events(run, kind):
    import json

    ev = run.events[run.events.kind == kind]
    return [(int(r.step), json.loads(r.detail)) for r in ev.itertuples()]


def _spike_run(tmp_path, logged_spike_at: int | None = None, expect_grad_norm_every: int | None = None,
               **watch):
    """The issue's run: 1000 steps at every=100, the loss x100 at step 777 (backpropagated, so the gradient
    norm jumps too), optionally only the logged value x100 at another step; logged after the step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    g = torch.Generator().manual_seed(2)
    xs = torch.randn(1000, 16, 4, generator=g)
    ys = xs[..., :1] * 0.5 - xs[..., 1:2]
    with trainscope.watch(model, tmp_path / "r", optimizer=opt, every=100, on_finding="ignore", **watch) as probe:
        if expect_grad_norm_every is not None:
            assert probe.params.grad_norm_every == expect_grad_norm_every
        for step in range(1000):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(xs[step]), ys[step])
            if step == 777:
                loss = loss * 100
            loss.backward()
            opt.step()
            probe.log(train_loss=loss * 100 if step == logged_spike_at else loss)
    return trainscope.load_run(tmp_path / "r")


def test_anomaly_capture_records_the_spike_step(tmp_path):
    """The issue's test: 1000 steps at every=100, the loss x100 at step 777 (backpropagated, so the gradient
    norm jumps too), and at step 555 only the logged value x100 (a logging-side spike)."""
    run = _spike_run(tmp_path, logged_spike_at=555, grad_norm_every=1)
    caps = _events(run, "anomaly_capture")
    by = {(s, d["trigger"]): d for s, d in caps}
    assert set(by) == {(777, "grad_norm"), (777, "loss"), (555, "loss")}, caps  # and no false alarm elsewhere
    assert by[777, "grad_norm"]["steps"] == [777, 778, 779] and not by[777, "grad_norm"]["late"]
    assert by[777, "loss"]["steps"] == [778, 779, 780] and by[777, "loss"]["late"]  # known after its step
    assert by[555, "loss"]["steps"] == [556, 557, 558]
    d = by[777, "grad_norm"]
    assert d["value"] > 10 * d["median"] and d["factor"] == 10.0
    kinds = {int(s): set(k) for s, k in run.layers.groupby("step").kind}
    full = {"grad", "weight", "update", "grad_norm"}
    assert kinds[777] >= full  # the spike step itself: gradients, weights, update
    for s in (778, 779, 780, 556, 557, 558):
        assert kinds[s] >= full | {"activation"}, s
    for s in (776, 781, 554, 555, 559):
        assert kinds[s] == {"grad_norm"}, s  # the usual cheap steps around them
    assert run.layers[(run.layers.step == 777) & (run.layers.kind == "grad")].norm.min() > 0


def test_anomaly_capture_at_the_cpu_defaults_is_one_step_late(tmp_path):
    """The same spike with CPU defaults (the global norm every 10th step, so not at 777): the logged loss
    triggers the capture, one step late (778-780), as on an accelerator; nothing else triggers."""
    run = _spike_run(tmp_path, expect_grad_norm_every=10)
    caps = {(s, d["trigger"]): d for s, d in _events(run, "anomaly_capture")}
    assert set(caps) == {(777, "loss")}, caps
    assert caps[777, "loss"]["steps"] == [778, 779, 780] and caps[777, "loss"]["late"]
    kinds = {int(s): set(k) for s, k in run.layers.groupby("step").kind}
    assert kinds[778] >= {"grad", "weight", "update", "grad_norm", "activation"}
    assert 777 not in kinds and kinds[770] == {"grad_norm"}  # cheap steps: norms every 10th


def test_anomaly_capture_nan_loss_and_budget(tmp_path):
    """A NaN loss triggers once (then the run stays NaN: no capture per step), and a loss logged before
    optimizer.step() is captured at its own step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    with trainscope.watch(model, tmp_path / "r", optimizer=opt, every=1000, on_finding="ignore") as probe:
        for step in range(60):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            probe.log(train_loss=float("nan") if step >= 40 else loss)  # logged before the step
            opt.step()
    run = trainscope.load_run(tmp_path / "r")
    caps = _events(run, "anomaly_capture")
    assert [(s, d["trigger"], d["nonfinite"], d["late"]) for s, d in caps] == [(40, "loss", True, False)]
    assert caps[0][1]["steps"] == [40, 41, 42]
    kinds = {int(s): set(k) for s, k in run.layers.groupby("step").kind}
    assert {"grad", "weight", "update"} <= kinds[40] and kinds[43] == {"grad_norm"}


def _tiny(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    return model, torch.optim.SGD(model.parameters(), lr=0.01), torch.randn(8, 3), torch.randint(0, 2, (8,))


def test_regular_flushes_write_on_a_background_thread_and_lose_nothing(tmp_path, monkeypatch):
    """The training thread hands rows over; the Parquet writes of the regular flushes run on the writer
    thread, a slow write never blocks a step (rows keep buffering meanwhile), and close() writes all."""
    import threading
    import time as _time

    from trainscope.store.writer import RunWriter

    threads: list[str] = []
    append = RunWriter.append

    def slow_append(self, table, columns):
        threads.append(threading.current_thread().name)
        if threading.current_thread().name == "trainscope-flush":
            _time.sleep(0.02)  # a slow disk
        return append(self, table, columns)

    monkeypatch.setattr(RunWriter, "append", slow_append)
    model, opt, x, y = _tiny()
    step_times = []
    with trainscope.watch(model, tmp_path / "r", optimizer=opt, flush_seconds=0.0, flush_rows=1) as probe:
        for step in range(60):
            t = _time.perf_counter()
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            probe.log(marker=float(step))
            step_times.append(_time.perf_counter() - t)
    assert "trainscope-flush" in threads  # the regular flushes were written by the writer thread
    assert sum(step_times) < 0.5  # steps do not wait for the 20 ms writes (60 x 20 ms if they did)
    run = trainscope.load_run(tmp_path / "r")
    markers = run.scalars[run.scalars.name == "marker"]
    assert sorted(markers.value) == [float(s) for s in range(60)]  # every value once
    assert list(run.scalar("grad_norm").index) == list(range(60))
    assert run.meta["status"] == "finished"


def test_background_write_errors_are_reported_and_retried(tmp_path, monkeypatch):
    from trainscope.store.writer import RunWriter

    append = RunWriter.append
    fails = {"n": 0}

    def flaky(self, table, columns):
        if table == "scalars" and fails["n"] < 2:
            fails["n"] += 1
            raise OSError(28, "No space left on device")
        return append(self, table, columns)

    monkeypatch.setattr(RunWriter, "append", flaky)
    model, opt, x, y = _tiny()
    with pytest.warns(RuntimeWarning, match=r"could not write the run store \(scalars: OSError.*retrying"):
        with trainscope.watch(model, tmp_path / "r", optimizer=opt, flush_seconds=0.0, flush_rows=1) as probe:
            for step in range(30):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
                probe.log(marker=float(step))
                probe.buffer.join()  # one regular flush per step: the first two fail, later ones retry them
    run = trainscope.load_run(tmp_path / "r")
    assert fails["n"] == 2
    assert sorted(run.scalars[run.scalars.name == "marker"].value) == [float(s) for s in range(30)]


def test_meta_json_rewritten_only_when_it_changed(tmp_path):
    model, opt, x, y = _tiny()
    probe = trainscope.watch(model, tmp_path / "r", optimizer=opt, flush_seconds=0.0, flush_rows=1)
    writer = probe.writer

    def steps(n):
        for _ in range(n):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            probe.buffer.join()  # that step's background flush is done: the next step flushes again

    steps(10)  # the first steps change it (layer order, data fingerprint, parameter status, ...)
    first, flushes = writer.meta_writes, writer._seq
    steps(30)
    assert writer._seq >= flushes + 30 and writer.meta_writes == first  # 30 more flushes, no rewrite
    opt.param_groups[0]["lr"] = 0.5  # the optimizer summary changes: written at the next regular flush
    steps(3)
    probe.buffer.join()
    assert writer.meta_writes == first + 1
    import json

    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    assert meta["optimizer"]["param_groups"][0]["lr"] == 0.5
    probe.close()
    assert json.loads((tmp_path / "r" / "meta.json").read_text())["steps"] == 43  # close always writes


# ---------------------------------------------------------------------------------------------- host copies
_COPY_METHODS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__", "__array__")


def _count_probe_host_copies(monkeypatch, counts, state) -> None:
    """Count every tensor-to-host read whose caller is the probe's own code (trainscope/probe/*.py)."""
    import os
    import sys

    import trainscope.probe as probe_pkg

    probe_dir = os.path.dirname(probe_pkg.__file__) + os.sep
    for name in _COPY_METHODS:
        orig = getattr(torch.Tensor, name)

        def counted(self, *a, _orig=orig, **k):
            f = sys._getframe(1)
            while f is not None and f.f_code.co_name == "__torch_function__":
                f = f.f_back  # the probe's TorchFunctionMode passes the user's own calls through
            if f is not None and f.f_code.co_filename.startswith(probe_dir):
                counts[state["step"]] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)


def _clipped_training(probe, model, opt, crit, state, steps, device="cpu", on_step=None):
    g = torch.Generator().manual_seed(3)
    xs = torch.randn(steps, 16, 4, generator=g).to(device)  # on the device before the loop: no copy in it
    ys = torch.randint(0, 3, (steps, 16), generator=g).to(device)
    for s in range(steps):
        x, y = xs[s], ys[s]
        state["step"] = s
        if on_step is not None:
            on_step(s)
        opt.zero_grad()
        loss = crit(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        probe.log(train_loss=loss)
    state["step"] = "close"


def test_cheap_steps_make_no_host_copy(tmp_path, monkeypatch):
    """With CPU reads treated as an accelerator's (host.FREE_ON_CPU off), the probe's own host copies
    happen at recorded steps and at the flush only: none on the cheap steps, which still record the loss,
    the gradient norms of every layer, lr and the loop facts."""
    from collections import Counter

    from trainscope.probe import host

    monkeypatch.setattr(host, "FREE_ON_CPU", False)
    counts: Counter = Counter()
    state: dict = {"step": "watch"}
    _count_probe_host_copies(monkeypatch, counts, state)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    crit = nn.CrossEntropyLoss()
    n = 300
    with trainscope.watch(model, tmp_path / "r", optimizer=opt, criterion=crit, every=1000, flush_seconds=1e9,
                          grad_norm_every=1, on_finding="ignore") as probe:
        _clipped_training(probe, model, opt, crit, state, n)
        recorded = {s for s in range(n) if probe.clock.recorded(s)}
        full = [s for s in range(n) if s < FULL_STEPS or s % SAMPLE_EVERY == 0 or s in recorded]
    cheap = [s for s in range(n) if s not in recorded]
    assert len(cheap) > 280
    assert {s: counts[s] for s in cheap if counts[s]} == {}
    assert sum(counts[s] for s in recorded) > 0 and counts["close"] > 0  # the counter does see the probe's copies
    run = trainscope.load_run(tmp_path / "r")
    for name in ("train_loss", "grad_norm", "grad_norm_clipped", "loop/clipped"):
        assert len(run.scalar(name)) == n, name
    assert list(run.scalar("lr/0").index) == full  # the loop facts: on the full steps (clock.py)
    assert (run.layers.kind == "grad_norm").sum() == 2 * n


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cheap_steps_do_not_sync_cuda(tmp_path):
    """The same on a GPU: torch.cuda.set_sync_debug_mode("warn") around every cheap step sees no sync."""
    import warnings

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    crit = nn.CrossEntropyLoss()
    state: dict = {"step": 0}
    n = 300
    synced: list[tuple[int, str]] = []
    with trainscope.watch(model, tmp_path / "r", optimizer=opt, criterion=crit, every=1000, flush_seconds=1e9,
                          on_finding="ignore") as probe:
        cheap = {s for s in range(n) if not probe.clock.recorded(s)}

        def on_step(s):
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn" if s in cheap else "default")

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                _clipped_training(probe, model, opt, crit, state, n, device="cuda", on_step=on_step)
            finally:
                torch.cuda.set_sync_debug_mode("default")
            synced = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    assert synced == []
    assert not probe.guard.disabled
    run = trainscope.load_run(tmp_path / "r")
    assert len(run.scalar("grad_norm")) == n and len(run.scalar("train_loss")) == n


def test_anomaly_capture_one_step_late_on_the_accelerator_path(tmp_path, monkeypatch):
    """The CUDA path, on CPU: values are not read at once (host.FREE_ON_CPU off) but copied without blocking and
    read when the copy has arrived (here: at the second poll, i.e. after the step). The gradient-norm jump of
    step 777 is then decided after that step's statistics were taken: captured at 778-780, `late`."""
    from trainscope.probe import anomaly, host

    class Delayed:
        """live.HostValue with a copy that arrives at the second look."""

        def __init__(self, t):
            self._v, self._event, self.looks = float(t), object(), 0

        def get(self):
            self.looks += 1
            return self._v if self.looks >= 2 else None

    monkeypatch.setattr(host, "FREE_ON_CPU", False)
    monkeypatch.setattr(host, "async_readable", lambda t: True)
    monkeypatch.setattr(anomaly, "HostValue", Delayed)
    run = _spike_run(tmp_path, grad_norm_every=1)
    by = {(s, d["trigger"]): d for s, d in _events(run, "anomaly_capture")}
    assert set(by) == {(777, "grad_norm"), (777, "loss")}, by
    assert by[777, "grad_norm"]["steps"] == [778, 779, 780] and by[777, "grad_norm"]["late"]
    assert by[777, "loss"]["steps"] == [779, 780, 781] and by[777, "loss"]["late"]  # its copy came a step later
    kinds = {int(s): set(k) for s, k in run.layers.groupby("step").kind}
    assert kinds[777] == {"grad_norm"} and kinds[778] >= {"grad", "weight", "update", "activation"}


def test_grad_norm_every_defaults_by_device(tmp_path):
    """Every step where the norms are one fused kernel (an accelerator), every 10th on CPU, where they are
    the arithmetic itself (benchmarks/probe_overhead.py); the first 200 steps always have them."""
    model, opt, x, y = _tiny()
    assert default_grad_norm_every(model) == 10
    assert default_grad_norm_every(nn.Linear(2, 2, device="meta")) == 10
    with trainscope.watch(model, tmp_path / "r", optimizer=opt, every=1000, on_finding="ignore") as probe:
        assert probe.params.grad_norm_every == 10
        for _ in range(230):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    steps = list(trainscope.load_run(tmp_path / "r").scalar("grad_norm").index)
    assert steps == list(range(200)) + [200, 210, 220]
