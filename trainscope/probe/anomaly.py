"""Capture on anomaly: full per-layer statistics of the step where the loss or the gradient norm jumps.

At `every=100` only 1% of steps have per-layer statistics; a loss spike at step 4,321 would have none.
So the probe watches two host values it already has or can get without a host sync:
  - the global gradient norm of each step (on CPU read from the step's norm vector at once; on CUDA a
    non-blocking copy to pinned memory, read once its event has completed: usually one step later), on
    the steps where it is computed (every step by default on an accelerator, every 10th on CPU),
  - the training loss given to `probe.log` (any metric with "loss" in its name that is not a
    validation/eval/test one; CPU values read at once, CUDA ones like the gradient norm).
A value *jumps* when it is NaN/Inf (the first time for that metric) or above `FACTOR` x the running
median of the metric's last `WINDOW` finite values (after `MIN_HISTORY` of them; the median is refreshed
every `REFRESH` values, so a step costs a comparison and an append).

A jump forces `CAPTURE_STEPS` recorded steps (gradient, weight and update statistics, and the
activations of every forward that starts afterwards): from the step of the value if that step's
statistics are still to be taken, else from the next step. The gradient norm is known inside the
step's own optimizer pre-hook, so on CPU a gradient jump is captured at its own step (gradients,
weights and update; its activations were not armed, those come with the next steps). A loss logged
after `optimizer.step()` (the usual order) is known only once its step's statistics are taken: that
capture starts one step late. Each capture writes an `anomaly_capture` event (detail: trigger, metric,
value, median, factor, steps). A metric triggers again only after `COOLDOWN` steps, and a run keeps at
most `MAX_CAPTURES` captures, so a diverging run cannot turn every step into a recorded one.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Any

from torch import Tensor

from trainscope.probe import host
from trainscope.probe.live import HostValue

FACTOR = 10.0  # a value above FACTOR x its running median is a jump
WINDOW = 64  # finite values the median is taken over
REFRESH = 8  # the median is recomputed every this many values
MIN_HISTORY = 8  # no ratio trigger before this many values
CAPTURE_STEPS = 3  # recorded steps per capture
COOLDOWN = 100  # steps before the same metric may trigger again
MAX_CAPTURES = 16  # per run
MAX_PENDING = 64  # CUDA values waiting for their copy (older ones are dropped, never waited for)


class _Series:
    __slots__ = ("values", "median", "n", "last_trigger", "nonfinite_seen")

    def __init__(self) -> None:
        self.values: deque[float] = deque(maxlen=WINDOW)
        self.median = math.nan
        self.n = 0
        self.last_trigger = -(1 << 60)
        self.nonfinite_seen = False

    def jump(self, v: float) -> float | None:
        """The median `v` jumped over (NaN for a NaN/Inf value), or None; then take `v` into the window."""
        if not math.isfinite(v):
            if self.nonfinite_seen:
                return None
            self.nonfinite_seen = True
            return math.nan
        med = self.median
        out = med if (self.n >= MIN_HISTORY and med > 0 and v > FACTOR * med) else None
        self.values.append(v)
        self.n += 1
        if self.n % REFRESH == 0 or self.n == MIN_HISTORY:
            s = sorted(self.values)
            k = len(s)
            self.median = s[k // 2] if k % 2 else 0.5 * (s[k // 2 - 1] + s[k // 2])
        return out


def is_train_loss(name: str) -> bool:
    low = name.lower()
    return "loss" in low and not any(t in low for t in ("val", "eval", "test"))


class AnomalyCapture:
    """Decides captures from host values and tells the clock which steps to record (see the module doc)."""

    def __init__(self, buffer: Any, clock: Any) -> None:
        self.buffer = buffer
        self.clock = clock
        self.series: dict[str, _Series] = {}
        self.captures = 0
        # device values whose copy has not arrived: (trigger, metric, step, value); the probe polls while any
        self.waiting: list[tuple[str, str, int, HostValue]] = []
        self._loss_series: dict[str, Any] = {}  # probe.log key -> its _Series if a training loss, else False

    # -------------------------------------------------------------- inputs
    def on_grad_norm(self, step: int, value: Any) -> bool:
        """The global gradient norm of `step`, inside that step's pre-hook. A float is decided now (True:
        record this step); a device tensor is copied without blocking and decided when it has arrived."""
        if isinstance(value, Tensor) and not host.free(value):
            self._defer("grad_norm", "grad_norm", step, value)
            return False
        v = float(value)
        return self._decide("grad_norm", "grad_norm", step, v, current=True)

    def on_logged(self, step: int, values: dict[str, Any]) -> None:
        """Values given to probe.log for `step`, as the buffer kept them (str keys; floats or detached
        0-d tensors)."""
        if self.captures >= MAX_CAPTURES:
            return
        if self.waiting:
            self.poll()
        for key, v in values.items():
            series = self._loss_series.get(key)
            if series is None:  # first time: a training loss gets its series, any other metric False
                series = self._loss_series[key] = is_train_loss(key) and self._series(key)
            if series is False:
                continue
            if isinstance(v, Tensor) and not (host.FREE_ON_CPU and v.is_cpu):
                self._defer("loss", key, step, v)
                continue
            f = float(v)
            med = series.jump(f)  # inlined _decide: this runs at every logged step
            if med is not None:
                self._trigger(series, "loss", key, step, f, med, current=False)

    def poll(self) -> None:
        """Decide the deferred (CUDA) values whose copy has completed; never waits."""
        if not self.waiting:
            return
        keep = []
        for trigger, name, step, hv in self.waiting:
            v = hv.get()
            if v is None:
                if hv._event is not None:
                    keep.append((trigger, name, step, hv))
                continue
            self._decide(trigger, name, step, v, current=False)
        self.waiting = keep

    def _defer(self, trigger: str, name: str, step: int, t: Tensor) -> None:
        if self.captures >= MAX_CAPTURES or not host.async_readable(t):
            return  # other devices: not read live
        if len(self.waiting) >= MAX_PENDING:
            self.waiting.pop(0)
        self.waiting.append((trigger, name, step, HostValue(t)))

    # -------------------------------------------------------------- decision
    def _series(self, name: str) -> _Series:
        series = self.series.get(name)
        if series is None:
            series = self.series[name] = _Series()
        return series

    def _decide(self, trigger: str, name: str, step: int, v: float, current: bool) -> bool:
        series = self._series(name)
        med = series.jump(v)
        return med is not None and self._trigger(series, trigger, name, step, v, med, current)

    def _trigger(self, series: _Series, trigger: str, name: str, step: int, v: float, med: float,
                 current: bool) -> bool:
        if self.captures >= MAX_CAPTURES or step - series.last_trigger < COOLDOWN:
            return False
        clock = self.clock
        # the first step whose statistics are still to be taken: this one (inside its own pre-hook), the
        # value's step if it has not begun yet (a loss logged before optimizer.step()), else the next one
        first = step if current else max(step, clock.begun + 1)
        steps = list(range(first, first + CAPTURE_STEPS))
        if clock.forced.issuperset(steps):
            return False  # an earlier capture holds these steps already (a spike seen in the norm and the loss)
        series.last_trigger = step
        self.captures += 1
        clock.force(steps)
        self.buffer.event(step, "anomaly_capture", "", v, {
            "trigger": trigger, "metric": name, "value": v, "median": med, "factor": FACTOR,
            "nonfinite": not math.isfinite(v), "steps": steps, "late": first != step})
        return current
