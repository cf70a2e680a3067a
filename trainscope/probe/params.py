"""ParamStats: the global gradient norm and per-layer gradient, weight and update statistics.

The global norm is one fused `torch._foreach_norm` per device, at every one of the first
DENSE_GRAD_NORM_STEPS steps (short runs need enough points), then every `grad_norm_every` steps
and on every recorded step. Per-layer statistics are raw moments on the device (stats.py). The
update ratio needs the weights before the step: they are copied only on recorded steps.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from trainscope.probe import stats as st
from trainscope.probe.buffer import RunBuffer
from trainscope.probe.clock import Collector, StepClock
from trainscope.store import schema

DENSE_GRAD_NORM_STEPS = 200  # the global grad norm is recorded at every one of the first steps

# (layer name, module, module type, its trainable parameters)
LayerParams = tuple[str, nn.Module, str, list[Tensor]]


def layers_with_params(model: nn.Module) -> list[LayerParams]:
    """Every module that owns trainable parameters directly, in `named_modules()` order."""
    return [
        (n, m, type(m).__name__, [p for p in m.parameters(recurse=False) if p.requires_grad])
        for n, m in model.named_modules()
        if any(p.requires_grad for p in m.parameters(recurse=False))
    ]


class ParamStats(Collector):
    def __init__(self, layers: list[LayerParams], buffer: RunBuffer, clock: StepClock, *,
                 grad_norm_every: int, has_optimizer: bool) -> None:
        self.layers = layers
        self.buffer = buffer
        self.clock = clock
        self.grad_norm_every = grad_norm_every
        self.has_optimizer = has_optimizer
        self._snapshots: dict[str, list[Tensor]] = {}  # weights before a recorded step, for the update ratio

    def params_with_grad(self) -> list[tuple[str, str, list[Tensor], list[Tensor]]]:
        out = []
        for name, _, typ, params in self.layers:
            ps = [p for p in params if p.grad is not None]
            if ps:
                out.append((name, typ, ps, [p.grad for p in ps]))
        return out

    def on_step_begin(self, step: int, record: bool) -> None:
        s, buf = step, self.buffer
        dense = s < DENSE_GRAD_NORM_STEPS or s % self.grad_norm_every == 0
        layers = self.params_with_grad() if record or dense else []
        if layers:
            gn = st.global_norm([g for _, _, _, gs in layers for g in gs])
            buf.scalars.append((s, schema.GRAD_NORM, gn, self.clock.epoch, self.clock.step_time))
            if gn.device.type == "cpu" and not math.isfinite(float(gn)) and "grad" not in buf.seen_nonfinite:
                record = True  # free on CPU: catch the first bad step exactly
        if record:
            for name, typ, ps, gs in layers:
                buf.layers.append((s, name, "grad", typ, *st.raw_moments(gs)))
                buf.layers.append((s, name, "weight", typ, *st.raw_moments(ps)))
                if self.has_optimizer:
                    self._snapshots[name] = [p.detach().clone() for p in ps]
            buf.pending_rows += 2 * len(layers)

    def on_step_end(self, step: int) -> None:
        if not self._snapshots:
            return
        for name, _, typ, params in self.layers:
            before = self._snapshots.get(name)
            if before is not None:
                numel = sum(p.numel() for p in before)
                self.buffer.layers.append((step, name, "update", typ, st.raw_update(before, params), numel))
        self.buffer.pending_rows += len(self._snapshots)
        self._snapshots = {}
