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
