"""ActivationHooks: per-leaf-module hooks armed for one forward pass, removed right after it.

On a recorded step they record each leaf module's output statistics (and the smallest batch a
BatchNorm layer saw in train mode); on the first forward they also note the execution order for
the ForwardTrace. Every other forward runs PyTorch's hook-free module fast path.

On CPU (reading is free) each output is measured at its hook, through numpy views, while it is still
in cache. On an accelerator the hooks only keep a reference to each output (and its `_version`); all
outputs of the forward are reduced together when it ends (`disarm`, from the model's forward hook):
one batched reduction (stats.MomentReducer) instead of a dozen small kernels per module. An output changed in place after
its hook (a Linear followed by ReLU(inplace=True)) would be measured after the change, so a module is
batched only once a forward has shown its output unchanged at the end: on the first recorded forward
every output is measured at its hook (and checked), and a module whose output changes later stays on
that immediate path. Kept outputs are bounded by the reducer's scratch budget: past it, the batch is
reduced at once, inside the hook.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import Tensor, nn

from trainscope.probe import host
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
        params = {id(p): p for p in model.parameters()}
        self.reducer = st.MomentReducer(st.scratch_bytes(sum(p.numel() * p.element_size() for p in params.values())))
        # (step, name, type, output, its _version at the hook, measured already at the hook)
        self._pending: list[tuple[int, str, str, Tensor, int, bool]] = []
        self._pending_bytes = 0
        self._batched: set[str] = set()  # outputs seen unchanged at the forward's end: reduced in the batch
        self._immediate: set[str] = set()  # outputs changed in place after the hook: measured at the hook
        self._reduce = guard.wrap("activation", self._reduce_pending)
        self._stat_hooks = [guard.wrap("activation", lambda m, a, o, name=name, typ=typ:
                                       self._record(self.armed_step, name, typ, m, a, o))
                            for name, _, typ in self.leaves]

    def arm(self, step: int, trace: bool, stats: bool = True) -> None:
        self.armed_step = step
        for name, mod, typ in self.leaves:
            if trace:
                what = "weight" if name in self.weight_leaves else "module"
                self.handles.append(mod.register_forward_pre_hook(
                    self.guard.wrap("trace", lambda m, a, name=name, typ=typ, what=what: self.note(what, name, typ))))
        if stats:  # the guarded hooks are made once: they read the armed step
            for (_, mod, _), hook in zip(self.leaves, self._stat_hooks):
                self.handles.append(mod.register_forward_hook(hook))

    def disarm(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        if self._pending:
            self._reduce()

    def _record(self, step: int, name: str, typ: str, module: nn.Module, args: Any, output: Any) -> None:
        out = first_tensor(output)
        if out is None or not out.is_floating_point():
            return
        if host.free(out):  # CPU: measured at once, while the output is still in cache
            raw, numel, units = st.raw_activation(out, typ, self.reducer)
            self.buffer.layer(step, name, "activation", typ, raw, (numel, units))
        else:
            self._keep(step, name, typ, out)
        if module.training and typ.startswith(("BatchNorm", "SyncBatchNorm")):
            self._bn_batch(step, name, args)

    def _keep(self, step: int, name: str, typ: str, out: Tensor) -> None:
        """The accelerator path: keep the output to the forward's end (measured here too until checked)."""
        now = name not in self._batched or out.numel() == 0
        if now:
            raw, numel, units = st.raw_activation(out, typ, self.reducer)
            self.buffer.layer(step, name, "activation", typ, raw, (numel, units))
        if name not in self._immediate and out.numel() > 0:  # to the forward's end: reduced there, or checked
            self._pending.append((step, name, typ, out, out._version, now))
            self._pending_bytes += out.numel() * out.element_size()
            if self._pending_bytes > self.reducer.budget:
                self._reduce_pending()

    def _bn_batch(self, step: int, name: str, args: Any) -> None:
        """The smallest batch a BatchNorm layer saw in train mode (an event when it gets smaller)."""
        x = first_tensor(args)
        if x is not None and x.dim() >= 2:
            n = int(x.shape[0])
            if n < self._bn_min_batch.get(name, 1 << 62):
                self._bn_min_batch[name] = n
                per_channel = int(x.numel() // max(1, x.shape[1]))
                self.buffer.event(step, "batchnorm_batch", name, float(n), {"values_per_channel": per_channel})

    def _reduce_pending(self) -> None:
        """Statistics of the kept outputs, all in one batch (outputs changed since their hook are left out)."""
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        batch = []
        for step, name, typ, out, version, measured in pending:
            if out._version != version:  # changed in place after the hook: measure this module there from now on
                self._immediate.add(name)
                self._batched.discard(name)
            elif measured:
                self._batched.add(name)
            else:
                batch.append((step, name, typ, out))
        if not batch:
            return
        rows, info = self.reducer.activation_rows([b[3] for b in batch], [b[2] for b in batch])
        for (step, name, typ, _), raw, nu in zip(batch, rows, info):
            self.buffer.layer(step, name, "activation", typ, raw, nu)
