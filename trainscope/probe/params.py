"""ParamStats: the global gradient norm and per-layer gradient, weight and update statistics.

The global norm is one fused `torch._foreach_norm` per device, at every one of the first
DENSE_GRAD_NORM_STEPS steps (short runs need enough points), then every `grad_norm_every` steps
and on every recorded step. Shared (tied) parameters count once. When the loop clips with
`clip_grad_norm_` (seen through clipping.py), the norm and the per-layer gradient statistics are
taken *before* the clip, and the clipped norm, `max_norm` and whether the clip was active are
recorded as well. Per-layer statistics are raw moments on the device (stats.py). The update ratio
needs the weights before the step: they are copied only on recorded steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from trainscope.probe import clipping
from trainscope.probe import stats as st
from trainscope.probe.buffer import RunBuffer
from trainscope.probe.clock import Collector, StepClock
from trainscope.store import schema

DENSE_GRAD_NORM_STEPS = 200  # the global grad norm is recorded at every one of the first steps

# (layer name, module, module type, its trainable parameters)
LayerParams = tuple[str, nn.Module, str, list[Tensor]]
# (layer name, module type, parameters with a .grad, their grads)
LayerGrads = tuple[str, str, list[Tensor], list[Tensor]]


def layers_with_params(model: nn.Module) -> list[LayerParams]:
    """Every module that owns trainable parameters directly, in `named_modules()` order.

    A tied parameter (GPT-2's embedding = output layer) is listed under each module that holds it;
    the global norm counts it once."""
    return [
        (n, m, type(m).__name__, [p for p in m.parameters(recurse=False) if p.requires_grad])
        for n, m in model.named_modules()
        if any(p.requires_grad for p in m.parameters(recurse=False))
    ]


@dataclass
class _PreClip:
    """Gradient facts read when clip_grad_norm_ was called, before it scaled anything."""

    step: int
    norm: Tensor | None = None  # our global L2 norm (None: not a step that records the norm)
    grad_raw: dict[str, tuple[Tensor, Any]] = field(default_factory=dict)  # layer -> raw moments (recorded steps)
    max_norm: Any = None
    active: Any = None  # 1.0 if total_norm > max_norm (0-d device tensor)
    used: bool = False


class ParamStats(Collector):
    def __init__(self, layers: list[LayerParams], buffer: RunBuffer, clock: StepClock, *,
                 grad_norm_every: int, has_optimizer: bool) -> None:
        self.layers = layers
        self.buffer = buffer
        self.clock = clock
        self.grad_norm_every = grad_norm_every
        self.has_optimizer = has_optimizer
        self._snapshots: dict[str, list[Tensor]] = {}  # weights before a recorded step, for the update ratio
        n_refs = sum(len(ps) for _, _, _, ps in layers)
        self._shared = n_refs != len({id(p) for _, _, _, ps in layers for p in ps})  # tied weights present
        self._pre: _PreClip | None = None
        self._on_clip = clock.guard.wrap("clip", self._clip_seen)
        clipping.attach(self._on_clip)

    def close(self) -> None:
        clipping.detach(self._on_clip)

    def wants_norm(self, s: int, record: bool) -> bool:
        return record or s < DENSE_GRAD_NORM_STEPS or s % self.grad_norm_every == 0

    def params_with_grad(self) -> list[LayerGrads]:
        out = []
        for name, _, typ, params in self.layers:
            ps = [p for p in params if p.grad is not None]
            if ps:
                out.append((name, typ, ps, [p.grad for p in ps]))
        return out

    def _global_norm(self, layers: list[LayerGrads]) -> Tensor:
        if not self._shared:
            return st.global_norm([g for _, _, _, gs in layers for g in gs])
        seen: set[int] = set()
        grads = []
        for _, _, ps, gs in layers:
            for p, g in zip(ps, gs):
                if id(p) not in seen:
                    seen.add(id(p))
                    grads.append(g)
        return st.global_norm(grads)

    # -------------------------------------------------------------- clip_grad_norm_ seen
    def on_backward(self) -> None:
        self._pre = None  # a new backward: facts read at an earlier clip are stale

    def _clip_seen(self, max_norm: Any, total_norm: Tensor | None) -> None:
        pre = self._pre
        if not self.has_optimizer:
            # Without an optimizer the step ended at backward end, so its norm was pre-clip already.
            self._clip_rows(self.clock.step - 1, max_norm, total_norm, clipped=True)
            return
        s = self.clock.step
        if pre is not None and pre.step == s:  # a second clip in one step (e.g. per parameter group)
            if pre.active is not None and total_norm is not None:
                pre.active = torch.maximum(pre.active, clipping.clip_active(total_norm, max_norm))
            return
        record = self.clock.recorded(s)
        if not self.wants_norm(s, record):
            self._pre = None
            return
        pre = self._pre = _PreClip(step=s, max_norm=max_norm)
        layers = self.params_with_grad()
        if layers:
            pre.norm = self._global_norm(layers)
            pre.active = clipping.clip_active(total_norm if total_norm is not None else pre.norm, max_norm)
            if record:
                pre.grad_raw = {name: st.raw_moments(gs) for name, _, _, gs in layers}

    def _clip_rows(self, s: int, max_norm: Any, total_norm: Tensor | None, clipped: bool) -> None:
        if s < 0 or not self.wants_norm(s, self.clock.recorded(s)):
            return
        buf, epoch, now = self.buffer, self.clock.epoch, self.buffer.now()
        if isinstance(max_norm, (int, float, Tensor)):
            buf.scalar((s, schema.CLIP_MAX_NORM, max_norm if isinstance(max_norm, Tensor) else float(max_norm),
                        epoch, now))
        if total_norm is not None:
            buf.scalar((s, schema.LOOP_CLIPPED, clipping.clip_active(total_norm, max_norm), epoch, now))
            if clipped:  # what clip_grad_norm_ leaves: total * min(1, max_norm / (total + 1e-6))
                coef = torch.clamp(max_norm / (total_norm.detach().float() + 1e-6), max=1.0)
                buf.scalar((s, schema.GRAD_NORM_CLIPPED, total_norm.detach().float() * coef, epoch, now))

    # -------------------------------------------------------------- step boundaries
    def on_step_begin(self, step: int, record: bool) -> None:
        s, buf = step, self.buffer
        pre = self._pre if self._pre is not None and self._pre.step == s else None
        layers = self.params_with_grad() if self.wants_norm(s, record) else []
        if layers:
            now_norm = self._global_norm(layers)
            gn = now_norm
            epoch, t = self.clock.epoch, self.clock.step_time
            if pre is not None and pre.norm is not None:
                pre.used = True
                gn = pre.norm
                buf.scalars.append((s, schema.GRAD_NORM_CLIPPED, now_norm, epoch, t))
                if isinstance(pre.max_norm, (int, float, Tensor)):
                    mx = pre.max_norm if isinstance(pre.max_norm, Tensor) else float(pre.max_norm)
                    buf.scalars.append((s, schema.CLIP_MAX_NORM, mx, epoch, t))
                if pre.active is not None:
                    buf.scalars.append((s, schema.LOOP_CLIPPED, pre.active, epoch, t))
                buf.pending_rows += 3
            buf.scalars.append((s, schema.GRAD_NORM, gn, epoch, t))
            if gn.device.type == "cpu" and not math.isfinite(float(gn)) and "grad" not in buf.seen_nonfinite:
                record = True  # free on CPU: catch the first bad step exactly
        if record:
            grad_raw = pre.grad_raw if pre is not None else {}
            for name, typ, ps, gs in layers:
                raw = grad_raw.get(name)
                buf.layers.append((s, name, "grad", typ, *(raw if raw is not None else st.raw_moments(gs))))
                buf.layers.append((s, name, "weight", typ, *st.raw_moments(ps)))
                if self.has_optimizer:
                    self._snapshots[name] = [p.detach().clone() for p in ps]
            buf.pending_rows += 2 * len(layers)

    def on_step_end(self, step: int) -> None:
        pre, self._pre = self._pre, None
        if pre is not None and pre.step == step and not pre.used:
            # clip_grad_norm_ ran after the step began (inside a closure): keep what it said.
            self._clip_rows(step, pre.max_norm, pre.norm, clipped=False)
        if not self._snapshots:
            return
        for name, _, typ, params in self.layers:
            before = self._snapshots.get(name)
            if before is not None:
                numel = sum(p.numel() for p in before)
                self.buffer.layers.append((step, name, "update", typ, st.raw_update(before, params), numel))
        self.buffer.pending_rows += len(self._snapshots)
        self._snapshots = {}
