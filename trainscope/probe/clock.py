"""StepClock: what a training step is, when it begins and ends, and which steps are recorded.

With an optimizer, a step is one `optimizer.step()` (its pre and post hooks); without one, a step
is one backward pass (its end is detected through the autograd engine's queue_callback), unless
the user marks steps with `probe.step()` (then only those count). The sentinel, the smallest
trainable parameter, tells when a backward reaches the parameters.

`optimizer.step(closure)` (Lightning's automatic optimization, LBFGS) runs the forward and backward
inside the step: the pre-step hook sees last step's gradients. So for a closure step the gradient
statistics wait for the end of the closure's first backward (after DDP's own end-of-backward
callback: ours re-queues itself once), and are attributed to the step that backward belongs to.

Without an optimizer, gradient accumulation (several backwards, one update) is told apart from a
missing `zero_grad()` by the sentinel: if it was not modified in place since the previous backward
(its version counter, or on CPU its values), no update happened in between, so gradients that were
not reset are accumulating, not stale (`accumulating` is True for that backward), and that backward
belongs to the same step: the statistics taken at the previous backward's end are taken back and
read again at this one's. On a GPU a `.data`-style update (not versioned) looks like accumulation.
Collectors are told `on_backward()`, `on_step_begin(step, record)` and `on_step_end(step)`, so a
framework callback can drive the same collectors by calling `step_begin()` / `step_end()` itself.

Full and quiet steps: the loop facts and most collectors are read on every one of the first
`FULL_STEPS` steps, then on every `SAMPLE_EVERY`-th step and on recorded steps ("full" steps). On the
other ("quiet") steps only the callbacks a collector names in `every_step` are called: a quiet step
costs a counter and a few comparisons, so the probe's fixed cost per step stays a small fraction of a
small model's step. The loop bugs the facts show (a missing zero_grad, eval mode, the scheduler's
cadence) last for many steps, so every tenth step sees them.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from trainscope.probe import sharded
from trainscope.probe.guard import HookGuard

FULL_STEPS = 200  # every step is a full step below this
SAMPLE_EVERY = 10  # then every this many steps (and the recorded steps)


class Collector:
    """What the clock tells a collector; every method is optional (the defaults do nothing).

    On quiet steps (module doc) only the callbacks named in `every_step` are called."""

    every_step: frozenset[str] = frozenset()

    def on_backward(self) -> None:
        """A backward pass reached the parameters (the sentinel's gradient hook fired)."""

    def on_step_begin(self, step: int, record: bool) -> None:
        """Gradients of `step` are final (optimizer pre-step, or backward end without an optimizer)."""

    def on_step_end(self, step: int) -> None:
        """The parameters of `step` were updated."""

    def mark(self) -> Any:
        """Before a step_begin that may be taken back (no optimizer: the next backward may belong to the
        same step); return what `rollback` needs to undo that step_begin, or None."""
        return None

    def rollback(self, token: Any) -> None:
        """Undo the step_begin that followed `mark()` (its rows in the buffer are removed by the clock)."""


def pick_sentinel(params: Sequence[Tensor], optimizer: torch.optim.Optimizer | None = None) -> Tensor | None:
    """The smallest trainable parameter (a bias or norm weight, later layers first): its hook tells
    when a backward reaches the parameters and whether .grad was reset since the last optimizer step,
    at the cost of one reduction over a few hundred numbers per step. With an optimizer, one that it
    holds: optimizer.zero_grad() never resets a parameter outside it, which would read as a missing
    zero_grad (the real bug there is the parameter left out: parameters-not-updated)."""
    if not params:
        return None
    candidates = list(params)
    if optimizer is not None:
        try:
            held = {id(p) for g in optimizer.param_groups for p in g.get("params", [])}
        except Exception:  # an optimizer-like object without param_groups
            held = set()
        candidates = [p for p in candidates if id(p) in held] or candidates
    return min(reversed(candidates), key=lambda p: p.numel())


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
        self._collectors: list[Collector] = []
        self._quiet: dict[str, list[Collector]] = {}  # callback -> the collectors called on quiet steps
        self._full_step, self._full = -1, True  # full(): cached for one step
        # The current step is quiet and nothing outside the clock needs it (the probe's `quiet_ok`): the
        # hooks take their shortest path. Decided at the end of the step before; a capture can undo it.
        self.quiet = False
        self.ended_quiet = False  # the step that just ended (in after_step) was quiet
        self.quiet_ok: Callable[[], bool] = lambda: False
        self.norm_due: Callable[[int], bool] = lambda s: True  # the gradient norms are taken at step s
        self.after_step: Callable[[], None] = lambda: None  # e.g. flush the buffer when due
        self.handles: list[Any] = []
        self.manual = False  # probe.step() marks the steps (no optimizer known)
        self.accumulating = False  # this backward adds to gradients of a step not yet applied
        self._closure_step = False  # inside optimizer.step(closure), before its first backward ended
        self._closure_begun = False
        self._queued = False
        self._sentinel_version: int | None = None
        self._sentinel_copy: Tensor | None = None
        self.buffer: Any = None  # the RunBuffer (set by the probe): rows of a taken-back step_begin go
        self._open: tuple | None = None  # no optimizer: the step whose statistics a later backward may redo
        self.forced: set[int] = set()  # steps recorded in full because of an anomaly (anomaly.py)
        self.begun = -1  # the latest step whose step_begin ran (its statistics are taken)
        self.sentinel_owner: Any = None  # the module holding the sentinel (set by the probe)
        # FSDP2: whether the sentinel's .grad was reset, read before this backward reached it (None:
        # LoopFacts reads the sentinel at its hook, as usual)
        self.grad_was_reset: Any = None

    def install(self) -> None:
        """Hook the optimizer (if any) and the sentinel. An optimizer that cannot be hooked (no
        `register_step_pre_hook`, e.g. a wrapper) raises here; the probe then counts backwards."""
        if self.optimizer is not None:
            pre = self.optimizer.register_step_pre_hook(self.guard.wrap("step_pre", self._on_step_pre))
            self.handles.append(pre)
            self.handles.append(self.optimizer.register_step_post_hook(
                self.guard.wrap("step_post", self._on_step_post)))
        if self.sentinel is not None:
            self.handles.append(self._hook_sentinel())

    def _hook_sentinel(self) -> Any:
        p, hook = self.sentinel, self.guard.wrap("grad_sentinel", self._on_sentinel_grad)
        if sharded.is_dtensor(p):
            # FSDP2 never runs autograd on the sharded parameter (the gradient arrives by reduce-scatter),
            # so a tensor hook would not fire; FSDP2 calls the post-accumulate hooks instead. By then .grad
            # holds the new gradient, so whether it had been reset is read earlier: when the backward
            # reaches the output of the sentinel's module (a hook on that output tensor).
            if self.sentinel_owner is not None:
                self.handles.append(self.sentinel_owner.register_forward_hook(
                    self.guard.wrap("grad_reset_sharded", self._watch_owner_output)))
            return p.register_post_accumulate_grad_hook(lambda q: hook(q.grad))
        return p.register_hook(hook)

    def _watch_owner_output(self, module: Any, args: Any, output: Any) -> None:
        out = output if isinstance(output, Tensor) else next(
            (t for t in (output if isinstance(output, (tuple, list)) else ()) if isinstance(t, Tensor)), None)
        if out is not None and out.requires_grad:
            out.register_hook(self.guard.wrap("grad_reset_sharded", self._before_sentinel_grad))

    def _before_sentinel_grad(self, grad: Tensor) -> None:
        g = self.sentinel.grad if self.sentinel is not None else None
        self.grad_was_reset = 1.0 if g is None else (sharded.local(g) == 0).all()

    def drop_optimizer(self) -> None:
        """Fall back to counting backwards (the optimizer could not be hooked)."""
        for h in self.handles:
            h.remove()
        self.handles = []
        self.optimizer = None
        if self.sentinel is not None:
            self.handles.append(self._hook_sentinel())

    def mark_step(self) -> None:
        """`probe.step()`: one step is over. Its statistics are those taken at the end of its last
        backward (so the call may come before or after the update). With an optimizer hooked, its own
        hooks count the steps and this does nothing."""
        if self.optimizer is not None:
            return
        self.manual = True
        if self._open is None:  # no backward since the last step: take what there is now
            self.step_begin()
        self._open = None
        self.step_end()

    def finish(self) -> None:
        """The run closes: end a step still open (no optimizer)."""
        if self._open is not None:
            self._open = None
            self.step_end()

    # -------------------------------------------------------------- optimizer hooks
    def _on_step_pre(self, optimizer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.quiet and not self.norm_due(self.step) and len(args) < 2 and not kwargs:
            self.begun = self.step  # a quiet step without norms: nothing to take
            return
        # the hook's args are step()'s own, self included: step(self, closure=None)
        closure = args[1] if len(args) > 1 else kwargs.get("closure")
        if closure is not None:
            self._closure_step, self._closure_begun = True, False  # statistics wait for its backward
            self.quiet = False  # the closure's backward ends the step's statistics (the sentinel's full path)
        else:
            self.step_begin()

    def _on_step_post(self, optimizer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self._closure_step:
            self._closure_step = False
            if not self._closure_begun:  # a closure without a backward (or one we did not see)
                self.step_begin()
        self.step_end()

    def _closure_backward_end(self, requeue: bool) -> None:
        self._queued = False
        if requeue:  # run once more, after the callbacks queued meanwhile (DDP's gradient sync)
            try:
                torch.autograd.Variable._execution_engine.queue_callback(
                    self.guard.wrap("closure_backward_end", lambda: self._closure_backward_end(False)))
                self._queued = True
                return
            except Exception:
                pass
        if self._closure_step and not self._closure_begun:
            self._closure_begun = True
            self.step_begin()

    @property
    def collectors(self) -> list[Collector]:
        return self._collectors

    @collectors.setter
    def collectors(self, value: list[Collector]) -> None:
        self._collectors = list(value)
        self._quiet = {name: [c for c in self._collectors if name in c.every_step]
                       for name in ("on_backward", "on_step_begin", "on_step_end")}

    def full(self) -> bool:
        """Whether the current step is a full step (module doc). Decided once per step, at its first
        question, so a capture decided during the step does not change it halfway."""
        s = self.step
        if self._full_step != s:
            self._full_step = s
            self._full = s < FULL_STEPS or s % SAMPLE_EVERY == 0 or self.recorded(s)
        return self._full

    def _is_quiet(self, s: int) -> bool:
        return (s % SAMPLE_EVERY != 0 and s >= FULL_STEPS and self.optimizer is not None and not self.manual
                and not self._closure_step and s % self.every != 0 and s not in self.forced
                and not (s < self.every and (s & (s - 1)) == 0) and self.quiet_ok())  # not recorded(s), inlined

    def force(self, steps: list[int]) -> None:
        """Record these steps in full (an anomaly capture); the current one too if it has not begun."""
        self.forced.update(steps)
        if self.step in steps:
            # its statistics are taken in full (the hooks leave the quiet path); whether it is a full step
            # for the loop facts was decided at its start and stays so (its backwards were not counted)
            self.quiet = False

    def recorded(self, s: int) -> bool:
        """Per-layer statistics on steps 0, 1, 2, 4, 8, ... below `every`, then every `every` steps, and on
        the steps an anomaly capture asked for."""
        if s < 3 or s % self.every == 0 or s in self.forced:
            return True
        return s < self.every and (s & (s - 1)) == 0

    def _on_sentinel_grad(self, grad: Tensor) -> None:
        if self.quiet:  # with an optimizer, and no closure: only what every backward must say
            for c in self._quiet["on_backward"]:
                c.on_backward()
            return
        self.accumulating = self.optimizer is None and not self.manual and self._sentinel_unchanged()
        if self.optimizer is None and not self.manual and self._open is not None and not self.accumulating:
            self._open = None  # the parameters changed since the last backward: that step is over
            self.step_end()
        for c in (self._collectors if self.full() else self._quiet["on_backward"]):
            c.on_backward()
        if self._closure_step:
            if not self._closure_begun and not self._queued:
                try:
                    torch.autograd.Variable._execution_engine.queue_callback(
                        self.guard.wrap("closure_backward_end", lambda: self._closure_backward_end(True)))
                    self._queued = True
                except Exception:
                    self._closure_backward_end(False)
            return
        if self.optimizer is None and not self.manual:
            try:
                torch.autograd.Variable._execution_engine.queue_callback(
                    self.guard.wrap("backward_end", self._on_backward_end))
            except Exception:
                self._on_backward_end()

    def on_forward(self) -> None:
        """A training forward of the watched model: without an optimizer, an update since the open step's
        backward (seen on the sentinel) means that step is over and this forward starts the next."""
        if self._open is None or self.optimizer is not None or self.manual:
            return
        p = self.sentinel
        if p is None:
            return
        if int(getattr(p, "_version", -1)) != self._sentinel_version or (
                p.device.type == "cpu" and self._sentinel_copy is not None
                and not torch.equal(self._sentinel_copy, sharded.local(p).detach())):
            self._open = None
            self.step_end()

    def _sentinel_unchanged(self) -> bool:
        """No in-place update of the sentinel since the previous backward (so no optimizer step)."""
        p = self.sentinel
        if p is None:
            return False
        version = int(getattr(p, "_version", -1))
        p = sharded.local(p)  # a DTensor's own shard: comparing DTensors would be a collective
        prev, self._sentinel_version = self._sentinel_version, version
        if prev is None:
            if p.device.type == "cpu":
                self._sentinel_copy = p.detach().clone()
            return False
        if version != prev:
            if p.device.type == "cpu":
                self._sentinel_copy = p.detach().clone()
            return False
        if p.device.type != "cpu":  # comparing values would sync; `.data` updates are not versioned
            return True
        same = self._sentinel_copy is not None and torch.equal(self._sentinel_copy, p.detach())
        if not same:
            self._sentinel_copy = p.detach().clone()
        return same

    def _on_backward_end(self) -> None:
        """Without an optimizer: the gradients so far are this step's. The step stays open: a further
        backward before any update (accumulation) takes these statistics back and reads them again; an
        update (seen on the sentinel at the next backward), probe.step() or close() ends it."""
        if self._open is not None:
            self._take_back(self._open)
        buf = self.buffer
        n_layers, n_scalars = (len(buf.layers), len(buf.scalars)) if buf is not None else (0, 0)
        tokens = [c.mark() for c in self.collectors]
        self.step_begin()
        if buf is not None:
            self._open = (n_layers, len(buf.layers), n_scalars, len(buf.scalars), tokens)
        else:
            self._open = (0, 0, 0, 0, tokens)

    def _take_back(self, opened: tuple) -> None:
        a_l, b_l, a_s, b_s, tokens = opened
        buf = self.buffer
        if buf is not None:
            if len(buf.layers) >= b_l:
                del buf.layers[a_l:b_l]
            if len(buf.scalars) >= b_s:
                del buf.scalars[a_s:b_s]
        for c, token in zip(self.collectors, tokens):
            if token is not None:
                c.rollback(token)

    def step_begin(self) -> None:
        s = self.begun = self.step
        self.step_time = self.now()
        record = self.recorded(s)
        for c in (self._collectors if self.full() else self._quiet["on_step_begin"]):
            c.on_step_begin(s, record)

    def step_end(self) -> None:
        s = self.step
        for c in (self._collectors if self.full() else self._quiet["on_step_end"]):
            c.on_step_end(s)
        self.step = s + 1
        self.ended_quiet, self.quiet = self.quiet, self._is_quiet(s + 1)
        self.after_step()
