"""LiveFindings: the findings that can be decided while the run is still going, printed as they fire.

Decided from values that are already on the host (the probe never syncs with the device for them):
- TS601 softmax-before-cross-entropy: the `criterion_input` event of the first loss call (its
  detail was computed on the host when the event was made);
- TS603 eval-mode-during-training: the model's `training` flag at a training forward of steps 0-2;
- TS604 missing-zero-grad: `.grad` not reset before the first backward of steps 1 and 2, with one
  backward per step (the reset flag is a 0-d tensor: read at once on CPU; on a GPU copied to pinned
  memory without blocking and read once the copy's CUDA event has completed);
- TS205 nan-or-inf: a logged loss or the global gradient norm is NaN/Inf (same host rule), or, for
  values the probe only copies at a flush, the buffer's first `nonfinite` tags after a flush;
- TS102 divergence: a logged training loss at least `DIVERGENCE_FACTOR` times its first finite value.

Live findings never force a flush: CPU values are read at once, CUDA ones through pinned copies and
events, and what only a flush copies is looked at after the regular flushes.

Each rule fires at most once per run, as one line on stderr
(`trainscope: TS601 softmax before CrossEntropyLoss (step 0): ...`) with on_finding="warn" (the default);
on_finding="raise" closes the probe (status "stopped", everything recorded is kept) and raises
`trainscope.TrainscopeFinding` from the hook that decided it (the loss call, `optimizer.step()` or
`probe.log`); on_finding="ignore" stays silent. The offline rules (`trainscope diagnose`) remain the
judges of record: a live finding is an early warning, not a substitute.
"""
from __future__ import annotations

import math
import sys
from typing import Any, Callable

import torch
from torch import Tensor

from trainscope.errors import TrainscopeFinding
from trainscope.probe import host
from trainscope.probe.buffer import RunBuffer
from trainscope.probe.clock import StepClock
from trainscope.store import schema

EARLY_STEPS = 3  # loop bugs are judged on steps 0, 1, 2
DIVERGENCE_FACTOR = 10.0
# The logged loss is read live on every one of the first steps, then on every LIVE_LOSS_EVERY-th:
# a blow-up is still said within a few steps, at a fraction of the per-step Python cost.
LIVE_LOSS_DENSE_STEPS = 32
LIVE_LOSS_EVERY = 8
CE_LIKE = ("CrossEntropyLoss", "cross_entropy")

TITLES = {
    "softmax-before-cross-entropy": ("TS601", "softmax before CrossEntropyLoss"),
    "eval-mode-during-training": ("TS603", "model in eval mode while training"),
    "missing-zero-grad": ("TS604", "missing zero_grad()"),
    "nan-or-inf": ("TS205", "NaN/Inf"),
    "divergence": ("TS102", "training loss diverges"),
}


def is_finding(e: BaseException) -> bool:
    return isinstance(e, TrainscopeFinding)


class HostValue:
    """A 0-d tensor's value without a host sync: now on CPU; on CUDA a non-blocking copy to pinned
    memory and an event, read once the event has completed (`get()` is None until then)."""

    __slots__ = ("_value", "_host", "_event")

    def __init__(self, t: Any) -> None:
        self._value: float | None = None
        self._host = self._event = None
        if not isinstance(t, Tensor):
            self._value = float(t)
        elif host.free(t):
            self._value = float(t.detach().float().reshape(-1)[0]) if t.numel() else None
        elif t.device.type == "cuda":
            self._host = torch.empty((), dtype=torch.float32, pin_memory=True)
            self._host.copy_(t.detach().float().reshape(()), non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        # other devices (and CPU with host.FREE_ON_CPU off): never read live (the flush-time checks still run)

    def get(self) -> float | None:
        if self._value is None and self._event is not None and self._event.query():
            self._value, self._event = float(self._host), None
        return self._value


class LiveFindings:
    def __init__(self, buffer: RunBuffer, clock: StepClock, *, on_finding: str,
                 stop: Callable[[TrainscopeFinding], None], loop: Any = None, run_dir: str = "") -> None:
        self.buffer = buffer
        self.clock = clock
        self.on_finding = on_finding
        self.stop = stop
        self.loop = loop
        self.run_dir = run_dir
        self.fired: dict[str, int] = {}  # rule -> step
        self._events_seen = (None, 0)  # (the buffer's event list, how many of it were looked at)
        self._scalars_seen = (None, 0)
        # values not yet read (device copies on their way): (what, step, metric, value); looked at while any
        self.waiting: list[tuple[str, int, str, HostValue]] = []
        self._first_loss: dict[str, float] = {}
        self._nonfinite_seen: set[str] = set()
        self._stale: dict[int, bool] = {}  # steps whose .grad was not reset (read on the host)

    # ------------------------------------------------------------------ inputs
    def reads_loss(self, step: int) -> bool:
        """Whether the loss logged at `step` is read live (module constants)."""
        return step < LIVE_LOSS_DENSE_STEPS or step % LIVE_LOSS_EVERY == 0

    def on_logged(self, step: int, values: dict[str, Any]) -> None:
        if self.on_finding == "ignore" and len(self.fired) == len(TITLES):
            return
        if not self.reads_loss(step):
            return
        for key, v in values.items():
            name = str(key)
            low = name.lower()
            if "loss" not in low or any(t in low for t in ("val", "eval", "test")):
                continue
            if isinstance(v, Tensor) and v.numel() != 1:
                continue
            try:
                self.waiting.append(("loss", step, name, HostValue(v)))
            except (TypeError, ValueError):
                continue
        self._check_pending()

    def after_step(self) -> None:
        """After each optimizer step (and each step the clock counts)."""
        step = self.clock.step - 1
        buf = self.buffer
        (events, n_events), (scalars, n_scalars) = self._events_seen, self._scalars_seen
        if (step >= EARLY_STEPS and not self.waiting and events is buf.events and n_events == len(events)
                and scalars is buf.scalars and n_scalars == len(scalars)
                and len(buf.seen_nonfinite) == len(self._nonfinite_seen)):
            return  # nothing new to look at (the usual step): a few length comparisons
        self._scan_events()
        self._scan_scalars()
        if step < EARLY_STEPS and self.loop is not None:
            self._check_loop(step)
        self._check_pending()
        self._check_flushed_nonfinite()

    # ------------------------------------------------------------------ checks
    def _scan_events(self) -> None:
        events = self.buffer.events
        lst, n = self._events_seen
        start = n if lst is events else 0
        for step, kind, layer, value, detail in events[start:]:
            if kind == "criterion_input" and isinstance(detail, dict):
                crit = str(detail.get("criterion", ""))
                producer = str(detail.get("producer", "")).lower()
                is_prob = bool(detail.get("is_prob")) and not bool(detail.get("is_log_prob"))
                softmax = "softmax" in producer and "logsoftmax" not in producer
                if crit in CE_LIKE and (softmax or is_prob):
                    why = "produced by softmax" if softmax else "its rows are probabilities"
                    self.fire("softmax-before-cross-entropy", step,
                              f"{crit} receives probabilities ({why}); it expects raw logits: remove the "
                              "final softmax (CrossEntropyLoss applies log_softmax itself)")
            elif kind == "nonfinite" and isinstance(detail, dict):
                self._nonfinite(step, str(detail.get("tensor", "")), str(detail.get("metric", "") or layer))
        self._events_seen = (events, len(events))

    def _scan_scalars(self) -> None:
        rows = self.buffer.scalars
        lst, n = self._scalars_seen
        start = n if lst is rows else 0
        for step, name, value, _, _ in rows[start:]:
            if name == schema.GRAD_NORM and "nan-or-inf" not in self.fired:
                hv = HostValue(value) if not isinstance(value, Tensor) or value.device.type == "cpu" else None
                v = hv.get() if hv is not None else None
                if v is not None and not math.isfinite(v):
                    self._nonfinite(step, "grad", name)
        self._scalars_seen = (rows, len(rows))

    def _check_loop(self, step: int) -> None:
        loop = self.loop
        if loop.last_mode is False and "eval-mode-during-training" not in self.fired:
            self.fire("eval-mode-during-training", step,
                      "the model ran its training forward with model.training == False (model.eval() was "
                      "called and model.train() not after it): Dropout and BatchNorm behave as in inference")
        row = loop.last_row
        if row is None or step < 1 or row[0] != step:
            return
        reset, backwards = row[6], row[7]
        if reset is None or backwards != 1:
            return
        self.waiting.append(("reset", step, "", HostValue(reset)))

    def _check_pending(self) -> None:
        keep = []
        for what, step, name, hv in self.waiting:
            v = hv.get()
            if v is None:
                if hv._event is not None:
                    keep.append((what, step, name, hv))
                continue
            if what == "reset":
                if v < 0.5:
                    self._stale[step] = True
                    if sum(self._stale.values()) >= 2 and "missing-zero-grad" not in self.fired:
                        self.fire("missing-zero-grad", step,
                                  ".grad was not reset before backward at steps 1 and 2 (one backward per step): "
                                  "gradients of all past batches add up; call optimizer.zero_grad() every step")
            elif what == "loss":
                self._loss(step, name, v)
        self.waiting = keep

    def _loss(self, step: int, name: str, v: float) -> None:
        if not math.isfinite(v):
            self._nonfinite(step, "loss", name)
            return
        first = self._first_loss.setdefault(name, v)
        if first > 0 and v >= DIVERGENCE_FACTOR * first and "divergence" not in self.fired:
            self.fire("divergence", step, f"{name} {v:.4g} is {v / first:.0f}x its first value {first:.4g}; "
                      "lower the learning rate (or add warmup and gradient clipping)")

    def _nonfinite(self, step: int, tensor: str, metric: str) -> None:
        what = {"grad": "the gradient norm", "loss": f"the loss ({metric})"}.get(tensor, f"{tensor} statistics")
        self.fire("nan-or-inf", step, f"{what} is NaN/Inf; the first non-finite step is where to look "
                  "(learning rate, log/division of zero, fp16 overflow)")

    def _check_flushed_nonfinite(self) -> None:
        new = set(self.buffer.seen_nonfinite) - self._nonfinite_seen
        if not new:
            return
        self._nonfinite_seen |= new
        if "nan-or-inf" not in self.fired:
            tag = sorted(new)[0]
            self._nonfinite(self.clock.step - 1, tag.replace("layer:", ""), tag)

    # ------------------------------------------------------------------ output
    def fire(self, rule: str, step: int, message: str) -> None:
        if rule in self.fired:
            return
        self.fired[rule] = int(step)
        code, title = TITLES[rule]
        self.buffer.event(int(step), "live_finding", "", float("nan"),
                          {"rule": rule, "code": code, "message": message})
        if self.on_finding == "ignore":
            return
        if self.on_finding == "raise":
            exc = TrainscopeFinding(rule, code, int(step), f"{title}: {message}", self.run_dir)
            self.stop(exc)
            raise exc
        print(f"trainscope: {code} {title} (step {step}): {message}", file=sys.stderr, flush=True)
