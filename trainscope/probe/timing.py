"""Timing: where a training step's time goes ("training is slow", production checklist §5/§7).

From the timestamps the probe's hooks already see, per optimizer step:
  time/data       the previous optimizer step's end -> this step's first training forward
                  (waiting for the DataLoader, host-side preprocessing, and whatever the loop does
                  between steps: logging, `.item()`, validation at an epoch boundary)
  time/forward    first training forward -> the backward reaching the last layers (forward + loss)
  time/backward   -> the optimizer's step pre-hook (backward, clipping, unscaling; with gradient
                  accumulation the later micro-batches' forwards count here)
  time/optimizer  step pre-hook -> step post-hook
  time/step       the previous step's end -> this step's end
Seconds. On CPU these are `time.perf_counter()` differences. When the model is on a CUDA device each
boundary also records a CUDA event (no synchronization: events are read at a flush once `query()` says
they completed), and the four segments are the GPU timeline's: time/data is then the GPU waiting
between steps. GPU runs add `time/gpu_caught_up`: 1.0 when the previous step's work had already
finished on the GPU by the time the host began the next forward (`Event.query()`, non-blocking) — the
GPU idled waiting for the host.

Recorded on each of the first `dense_steps` steps, then every `every` steps (the clock's full steps). Without an optimizer a
step is a backward pass (optimizer time 0). An event `perf_facts` (first training forward) holds what the
performance hints need: device, device name and memory, bf16 support, autocast state and dtype, batch
size, and Linear/Conv widths that are not multiples of 8.
"""
from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from trainscope.probe.buffer import RunBuffer, ScalarRow
from trainscope.probe.clock import FULL_STEPS, SAMPLE_EVERY, Collector, StepClock
from trainscope.probe.util import module_type

DATA, FORWARD, BACKWARD, OPTIMIZER, STEP = "time/data", "time/forward", "time/backward", "time/optimizer", "time/step"
GPU_CAUGHT_UP = "time/gpu_caught_up"
SEGMENTS = (DATA, FORWARD, BACKWARD, OPTIMIZER)
_MARKS = ("end_prev", "fwd", "bwd", "opt", "end")


def perf_facts(model: nn.Module, x: Any) -> dict[str, Any]:
    """What the checklist's performance hints need, read once at the first training forward."""
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    facts: dict[str, Any] = {"device": dev.type, "batch_size": int(x.shape[0]) if isinstance(x, torch.Tensor)
                             and x.dim() else None}
    for device_type in ("cuda", "cpu"):
        try:
            if torch.is_autocast_enabled(device_type):
                facts["autocast"] = True
                facts["autocast_dtype"] = str(torch.get_autocast_dtype(device_type)).replace("torch.", "")
                break
        except (TypeError, RuntimeError, AttributeError):  # older torch: no device argument
            if device_type == "cuda" and torch.is_autocast_enabled():
                facts["autocast"] = True
                break
    facts.setdefault("autocast", False)
    facts["params_dtype"] = str(next((p.dtype for p in model.parameters()), torch.float32)).replace("torch.", "")
    if dev.type == "cuda":
        try:
            props = torch.cuda.get_device_properties(dev)
            facts["device_name"] = props.name
            facts["device_memory_gb"] = round(props.total_memory / 2**30, 1)
            facts["bf16_supported"] = bool(torch.cuda.is_bf16_supported())
            facts["compute_capability"] = f"{props.major}.{props.minor}"
        except Exception:  # pragma: no cover
            pass
    odd = []
    for name, m in model.named_modules():
        dims = ()
        if isinstance(m, nn.Linear):
            dims = (m.in_features, m.out_features)
        elif isinstance(m, nn.modules.conv._ConvNd):
            dims = (m.in_channels, m.out_channels)
        if dims and any(d % 8 for d in dims):
            odd.append({"layer": name, "type": module_type(m), "dims": list(dims)})
    facts["dims_not_multiple_of_8"] = odd[:32]
    facts["n_layers_with_dims"] = sum(1 for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)))
    return facts


class Timing(Collector):
    every_step = frozenset({"on_step_end"})  # the end of the step before a timed one starts its data wait

    def __init__(self, buffer: RunBuffer, clock: StepClock, model: nn.Module, *, dense_steps: int = FULL_STEPS,
                 every: int = SAMPLE_EVERY) -> None:
        self.buffer, self.clock, self.model = buffer, clock, model
        self.dense_steps, self.every = dense_steps, max(1, every)
        self.cuda = any(p.is_cuda for p in model.parameters())
        self.host: dict[str, float] = {}
        self.events: dict[str, Any] = {}
        self._end_prev_host: float | None = None
        self._end_prev_event: Any = None
        self._rows: list[tuple] = []  # (step, epoch, now, {mark: host time}, {mark: event} | None, caught_up)
        self._in_step = False
        self._facts_done = False
        buffer.scalar_sources.append(self._expand)

    def timed(self, step: int) -> bool:
        return step < self.dense_steps or step % self.every == 0

    def _event(self) -> Any:
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    # the probe calls this from its forward pre-hook (training forwards only)
    def on_forward(self, args: Any) -> None:
        if not self._facts_done:
            self._facts_done = True
            x = args[0] if args else None
            self.buffer.event(self.clock.step, "perf_facts", "", float("nan"), perf_facts(self.model, x))
        if self._in_step:
            return  # a later micro-batch of the same step
        self._in_step = True
        s = self.clock.step
        if not self.timed(s):
            self.host = {}
            return
        self.host = {"fwd": time.perf_counter()}
        self.events = {}
        if self.cuda:
            caught_up = None
            if self._end_prev_event is not None:
                caught_up = bool(self._end_prev_event.query())
            self.events = {"fwd": self._event(), "end_prev": self._end_prev_event, "caught_up": caught_up}

    def on_backward(self) -> None:
        if self.host and "bwd" not in self.host:
            self.host["bwd"] = time.perf_counter()
            if self.cuda:
                self.events["bwd"] = self._event()

    def on_step_begin(self, step: int, record: bool) -> None:
        if self.host and "opt" not in self.host:
            self.host["opt"] = time.perf_counter()
            if self.cuda:
                self.events["opt"] = self._event()

    def on_step_end(self, step: int) -> None:
        nxt = step + 1
        if not self.host and nxt >= self.dense_steps and nxt % self.every:
            self._in_step = False  # untimed, and so is the next step: no data wait to start
            return
        now = time.perf_counter()
        ev = self._event() if self.cuda and (self.host or self.timed(step + 1)) else None
        if self.host:
            self.host["end"] = now
            self.host["end_prev"] = self._end_prev_host  # type: ignore[assignment]
            if self.cuda:
                self.events["end"] = ev
            self._rows.append((step, self.clock.epoch, self.buffer.now(), self.host,
                               self.events if self.cuda else None))
            self.host, self.events = {}, {}
        self._end_prev_host, self._end_prev_event = now, ev
        self._in_step = False

    def restart_wait(self) -> None:
        """After the probe flushed between two steps: the data wait starts now, not at the step's end."""
        if self._end_prev_host is not None:
            self._end_prev_host = time.perf_counter()
            if self.cuda and self._end_prev_event is not None:
                self._end_prev_event = self._event()

    # -------------------------------------------------------------- flush
    def _expand(self, final: bool = False) -> list[ScalarRow]:
        rows: list[ScalarRow] = []
        keep = []
        for i, (s, epoch, now, host, events) in enumerate(self._rows):
            if events is not None:
                end = events.get("end")
                if end is not None and not end.query():
                    keep = self._rows[i:]  # the GPU has not got there yet: next flush
                    break
                seg = self._gpu_segments(events)
                if events.get("caught_up") is not None:
                    rows.append((s, GPU_CAUGHT_UP, 1.0 if events["caught_up"] else 0.0, epoch, now))
            else:
                seg = self._host_segments(host)
            for name, value in seg.items():
                if value is not None and value >= 0:
                    rows.append((s, name, value, epoch, now))
        self._rows = keep
        return rows

    @staticmethod
    def _host_segments(h: dict[str, Any]) -> dict[str, float | None]:
        def d(a: str, b: str) -> float | None:
            return h[b] - h[a] if h.get(a) is not None and h.get(b) is not None else None

        fwd_end = "bwd" if "bwd" in h else "opt"
        return {DATA: d("end_prev", "fwd"), FORWARD: d("fwd", fwd_end),
                BACKWARD: d("bwd", "opt") if "bwd" in h else None, OPTIMIZER: d("opt", "end"),
                STEP: d("end_prev", "end")}

    @staticmethod
    def _gpu_segments(e: dict[str, Any]) -> dict[str, float | None]:
        def d(a: str, b: str) -> float | None:
            ea, eb = e.get(a), e.get(b)
            if ea is None or eb is None:
                return None
            try:
                return ea.elapsed_time(eb) / 1000.0
            except RuntimeError:
                return None

        fwd_end = "bwd" if "bwd" in e else "opt"
        return {DATA: d("end_prev", "fwd"), FORWARD: d("fwd", fwd_end),
                BACKWARD: d("bwd", "opt") if "bwd" in e else None, OPTIMIZER: d("opt", "end"),
                STEP: d("end_prev", "end")}

    def close(self) -> None:
        """At close: wait for the GPU once so the last steps' events can be read."""
        if self.cuda and self._rows:
            try:
                torch.cuda.synchronize()
            except Exception:  # pragma: no cover
                pass
