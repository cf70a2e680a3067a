"""StepClock: what a training step is, when it begins and ends, and which steps are recorded.

With an optimizer, a step is one `optimizer.step()` (its pre and post hooks); without one, a step
is one backward pass (its end is detected through the autograd engine's queue_callback). The
sentinel, the smallest trainable parameter, tells when a backward reaches the parameters.
Collectors are told `on_backward()`, `on_step_begin(step, record)` and `on_step_end(step)`, so a
framework callback can drive the same collectors by calling `step_begin()` / `step_end()` itself.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from trainscope.probe.guard import HookGuard


class Collector:
    """What the clock tells a collector; every method is optional (the defaults do nothing)."""

    def on_backward(self) -> None:
        """A backward pass reached the parameters (the sentinel's gradient hook fired)."""

    def on_step_begin(self, step: int, record: bool) -> None:
        """Gradients of `step` are final (optimizer pre-step, or backward end without an optimizer)."""

    def on_step_end(self, step: int) -> None:
        """The parameters of `step` were updated."""


def pick_sentinel(params: Sequence[Tensor]) -> Tensor | None:
    """The smallest trainable parameter (a bias or norm weight, later layers first): its hook tells
    when a backward reaches the parameters and whether .grad was reset since the last optimizer step,
    at the cost of one reduction over a few hundred numbers per step."""
    if not params:
        return None
    return min(reversed(list(params)), key=lambda p: p.numel())


class StepClock:
    """Counts steps, owns the recording schedule and calls the collectors at step boundaries."""

    def __init__(self, guard: HookGuard, *, every: int, optimizer: torch.optim.Optimizer | None,
                 sentinel: Tensor | None) -> None:
        self.guard = guard
        self.every = every
        self.optimizer = optimizer
        self.sentinel = sentinel
        self.step = 0  # optimizer steps completed
        self.fwd_step = 0  # step of the latest training (grad-enabled) forward
        self.epoch = float("nan")  # the latest epoch given to probe.log
        self.step_time = 0.0  # seconds since the start, taken once at each step_begin
        self.now: Callable[[], float] = lambda: 0.0  # the buffer's clock
        self.collectors: list[Collector] = []
        self.after_step: Callable[[], None] = lambda: None  # e.g. flush the buffer when due
        self.handles: list[Any] = []

    def install(self) -> None:
        if self.optimizer is not None:
            self.handles.append(self.optimizer.register_step_pre_hook(
                self.guard.wrap("step_pre", lambda opt, args, kwargs: self.step_begin())))
            self.handles.append(self.optimizer.register_step_post_hook(
                self.guard.wrap("step_post", lambda opt, args, kwargs: self.step_end())))
        if self.sentinel is not None:
            self.handles.append(self.sentinel.register_hook(self.guard.wrap("grad_sentinel", self._on_sentinel_grad)))

    def recorded(self, s: int) -> bool:
        """Per-layer statistics on steps 0, 1, 2, 4, 8, ... below `every`, then every `every` steps."""
        if s < 3 or s % self.every == 0:
            return True
        return s < self.every and (s & (s - 1)) == 0

    def _on_sentinel_grad(self, grad: Tensor) -> None:
        for c in self.collectors:
            c.on_backward()
        if self.optimizer is None:
            try:
                torch.autograd.Variable._execution_engine.queue_callback(
                    self.guard.wrap("backward_end", self._on_backward_end))
            except Exception:
                self._on_backward_end()

    def _on_backward_end(self) -> None:
        # Without an optimizer, a step is a backward pass.
        self.step_begin()
        self.step_end()

    def step_begin(self) -> None:
        s = self.step
        self.step_time = self.now()
        record = self.recorded(s)
        for c in self.collectors:
            c.on_step_begin(s, record)

    def step_end(self) -> None:
        s = self.step
        for c in self.collectors:
            c.on_step_end(s)
        self.step = s + 1
        self.after_step()
