"""ActivationHooks: per-leaf-module hooks armed for one forward pass, removed right after it.

On a recorded step they record each leaf module's output statistics (and the smallest batch a
BatchNorm layer saw in train mode); on the first forward they also note the execution order for
the ForwardTrace. Every other forward runs PyTorch's hook-free module fast path.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from trainscope.probe import stats as st
from trainscope.probe.buffer import RunBuffer
from trainscope.probe.guard import HookGuard
from trainscope.probe.util import first_tensor, module_type


class ActivationHooks:
    def __init__(self, model: nn.Module, weight_leaves: set[str], buffer: RunBuffer, guard: HookGuard,
                 note: Callable[[str, str, str], None]) -> None:
        self.buffer = buffer
        self.guard = guard
        self.note = note  # ForwardTrace.note(what, name, type): the first forward's execution order
        self.leaves = [(n, m, module_type(m)) for n, m in model.named_modules()
                       if n and not any(True for _ in m.children())]
        self.weight_leaves = weight_leaves
        self.handles: list[Any] = []
        self.armed_step = -1  # the step whose forward was last armed (one forward per step)
        self._bn_min_batch: dict[str, int] = {}

    def arm(self, step: int, trace: bool, stats: bool = True) -> None:
        self.armed_step = step
        for name, mod, typ in self.leaves:
            if trace:
                what = "weight" if name in self.weight_leaves else "module"
                self.handles.append(mod.register_forward_pre_hook(
                    self.guard.wrap("trace", lambda m, a, name=name, typ=typ, what=what: self.note(what, name, typ))))
            if stats:
                self.handles.append(mod.register_forward_hook(
                    self.guard.wrap("activation", lambda m, a, o, name=name, typ=typ:
                                    self._record(step, name, typ, m, a, o))))

    def disarm(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def _record(self, step: int, name: str, typ: str, module: nn.Module, args: Any, output: Any) -> None:
        out = first_tensor(output)
        if out is None or not out.is_floating_point():
            return
        raw, numel, units = st.raw_activation(out, typ)
        self.buffer.layer(step, name, "activation", typ, raw, (numel, units))
        if module.training and typ.startswith(("BatchNorm", "SyncBatchNorm")):
            x = first_tensor(args)
            if x is not None and x.dim() >= 2:
                n = int(x.shape[0])
                if n < self._bn_min_batch.get(name, 1 << 62):
                    self._bn_min_batch[name] = n
                    per_channel = int(x.numel() // max(1, x.shape[1]))
                    self.buffer.event(step, "batchnorm_batch", name, float(n), {"values_per_channel": per_channel})
