"""StepClock: the recording schedule, and step boundaries with and without an optimizer."""
from __future__ import annotations

import torch
from torch import nn

from trainscope.probe.clock import Collector, StepClock, pick_sentinel
from trainscope.probe.guard import HookGuard


class Log(Collector):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_backward(self) -> None:
        self.events.append(("backward",))

    def on_step_begin(self, step: int, record: bool) -> None:
        self.events.append(("begin", step, record))

    def on_step_end(self, step: int) -> None:
        self.events.append(("end", step))


def test_recording_schedule():
    clock = StepClock(HookGuard(), every=100, optimizer=None, sentinel=None)
    rec = [s for s in range(450) if clock.recorded(s)]
    assert rec == [0, 1, 2, 4, 8, 16, 32, 64, 100, 200, 300, 400]


def _clock(model: nn.Module, opt) -> tuple[StepClock, Log]:
    clock = StepClock(HookGuard(), every=2, optimizer=opt, sentinel=pick_sentinel(list(model.parameters())))
    log = Log()
    clock.collectors = [log]
    clock.install()
    return clock, log


def test_steps_are_optimizer_steps_with_accumulation():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    clock, log = _clock(model, opt)
    assert clock.sentinel is model[2].bias  # the smallest parameter, later layers first
    for _ in range(2):
        opt.zero_grad()
        for _ in range(2):
            model(torch.randn(5, 3)).sum().backward()
        opt.step()
    assert log.events == [("backward",), ("backward",), ("begin", 0, True), ("end", 0),
                          ("backward",), ("backward",), ("begin", 1, True), ("end", 1)]
    assert clock.step == 2


def test_without_optimizer_a_step_ends_at_an_update():
    model = nn.Linear(3, 1)
    clock, log = _clock(model, None)
    for _ in range(3):
        model(torch.randn(5, 3)).sum().backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
        model.zero_grad()
    clock.finish()  # the run closes: the last step ends
    assert [e for e in log.events if e[0] == "begin"] == [("begin", 0, True), ("begin", 1, True), ("begin", 2, True)]
    assert [e for e in log.events if e[0] == "end"] == [("end", 0), ("end", 1), ("end", 2)]
    assert clock.step == 3
    for h in clock.handles:
        h.remove()
    model(torch.randn(5, 3)).sum().backward()
    assert clock.step == 3


def test_without_optimizer_backwards_before_an_update_are_one_step():
    model = nn.Linear(3, 1)
    clock, log = _clock(model, None)
    for _ in range(3):  # accumulation: no update in between
        model(torch.randn(5, 3)).sum().backward()
    assert clock.accumulating and clock.step == 0  # the step is still open
    clock.mark_step()  # probe.step(): the user marks its end
    assert clock.step == 1 and clock.manual
    assert [e for e in log.events if e[0] == "end"] == [("end", 0)]
    # the statistics of the open step were read at each backward's end, the last reading is kept
    assert [e for e in log.events if e[0] == "begin"] == [("begin", 0, True)] * 3


def test_quiet_steps_keep_the_loop_facts_that_every_step_can_change(tmp_path):
    """After the first 200 steps most steps are quiet (only every 10th and the recorded ones are full), yet
    a mode change, a validation pass in train mode and a missing zero_grad on quiet steps are all seen,
    and the facts of a full step count that step alone (not the quiet steps before it)."""
    import json

    import trainscope
    from trainscope.probe.clock import FULL_STEPS, SAMPLE_EVERY

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.1), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    quiet = []
    with trainscope.watch(model, tmp_path / "r", optimizer=opt, every=1000, on_finding="ignore") as probe:
        for s in range(280):
            model.train(not 233 <= s < 236)  # eval() for three quiet steps
            if s < 265:
                opt.zero_grad()  # from step 265 on, the gradients are never reset
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            quiet.append(probe.clock.quiet)
            if s == 245:
                model.train()
                with torch.no_grad():  # a validation pass that forgot model.eval()
                    model(x)
        recorded = [s for s in range(280) if probe.clock.recorded(s)]
    assert FULL_STEPS == 200 and SAMPLE_EVERY == 10
    assert sum(quiet[201:]) > 60 and not any(quiet[:199])  # quiet[s]: whether step s + 1 is quiet
    run = trainscope.load_run(tmp_path / "r")
    ev = run.events
    modes = [(int(r.step), r.value) for r in ev[ev.kind == "mode"].itertuples()]
    assert modes == [(233, 0.0), (236, 1.0)]
    evals = [json.loads(r.detail) for r in ev[ev.kind == "eval_forward"].itertuples()]
    assert evals and evals[0]["training"] is True and evals[0]["step"] == 245
    backwards = run.scalar("loop/backwards")
    # full: every 10th, 256 (powers of 2 below `every` are recorded), and any step an anomaly capture forced
    # (the never-reset gradients grow tenfold in a few steps: the norm of step 270 may trigger one)
    assert 256 in recorded and 233 not in recorded
    # (a capture decided inside its own step records that step's statistics; its loop facts were not counted)
    have = set(backwards.loc[200:].index)
    assert set(range(200, 280, 10)) | {256} <= have <= set(range(200, 280, 10)) | set(recorded)
    assert set(backwards) == {1.0}
    reset = run.scalar("loop/grad_reset")
    assert reset.loc[260] == 1.0 and reset.loc[270] == 0.0  # stale .grad seen on the full step after 265
    assert run.scalar("loop/training").loc[230:240].tolist() == [1.0, 1.0]
