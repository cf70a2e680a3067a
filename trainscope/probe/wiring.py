"""Is every trainable parameter wired into the training? (issue 8: parameters-not-updated)

ParameterStatus writes a `parameter_status` event after step 2 and at close: parameters that never
got a gradient, got only all-zero gradients, are in no optimizer param group, or never changed
since `watch()` (a cheap fingerprint: a strided sample of the elements and their sum, not a clone),
and the optimizer's parameters that are not in the model. Gradients are looked at on steps 0-2,
recorded steps that are multiples of 100, and at close (one fused norm per device each time, copied
when the event is written).

ForeignWeights notes, during the first forward, weight ops (F.linear, F.conv2d, F.embedding, ...)
that used a leaf tensor requiring grad that is not a parameter of the watched model: layers kept
in a Python list instead of an nn.ModuleList, for instance.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import Tensor, nn

from trainscope.probe import sharded
from trainscope.probe import stats as st
from trainscope.probe.buffer import RunBuffer
from trainscope.probe.clock import Collector, StepClock

STATUS_AFTER_STEP = 2
FINGERPRINT_SAMPLES = 8
OBSERVE_EVERY = 100  # after step 2, gradients are looked at on recorded steps that are multiples of this

WEIGHT_OPS = {"linear", "bilinear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
              "conv_transpose3d", "embedding", "embedding_bag", "layer_norm", "group_norm", "batch_norm",
              "instance_norm", "rms_norm", "prelu", "matmul", "mm", "bmm", "addmm", "__matmul__", "__rmatmul__"}


def fingerprint(p: Tensor) -> Tensor:
    """A strided sample of the elements and their sum (float32, on p's device)."""
    flat = st.values_of(sharded.local(p)).reshape(-1)  # complex: magnitudes; FSDP2: the rank's shard
    if flat.numel() == 0:
        return torch.zeros(FINGERPRINT_SAMPLES + 1, device=p.device)
    stride = max(1, flat.numel() // FINGERPRINT_SAMPLES)
    sample = flat[::stride][:FINGERPRINT_SAMPLES].float()
    if sample.numel() < FINGERPRINT_SAMPLES:
        sample = torch.cat([sample, sample.new_zeros(FINGERPRINT_SAMPLES - sample.numel())])
    return torch.cat([sample, flat.float().sum().reshape(1)])


def _host(tensors: list[Tensor]) -> list[list[float]]:
    """Rows of equal-length vectors, one host copy per device."""
    out: list[list[float]] = [[] for _ in tensors]
    by_dev: dict[torch.device, list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        by_dev[t.device].append(i)
    for idx in by_dev.values():
        host = torch.stack([tensors[i].reshape(-1) for i in idx]).cpu().tolist()
        for j, i in enumerate(idx):
            out[i] = host[j]
    return out


class ParameterStatus(Collector):
    def __init__(self, model: nn.Module, buffer: RunBuffer, clock: StepClock,
                 optimizer: torch.optim.Optimizer | None) -> None:
        self.buffer = buffer
        self.clock = clock
        self.optimizer = optimizer
        self.model_ids = {id(p) for p in model.parameters()}
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        # a rank holding no element of a shard cannot see it change
        self._fingerprints = [fingerprint(p) if p.device.type != "meta" and sharded.local(p).numel() else None
                              for p in self.params]
        self._seen_grad: set[int] = set()
        self._nonzero: set[int] = set()
        self._pending: list[tuple[list[int], list[Tensor]]] = []  # (param indices, their grad norms on device)
        self._written_after_step = False

    def _observe(self) -> None:
        idx = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not idx:
            return
        self._seen_grad.update(idx)
        grads = [sharded.local(self.params[i].grad) for i in idx]
        dense = [i for i, g in zip(idx, grads) if not g.is_sparse]
        for i, g in zip(idx, grads):
            if g.is_sparse:  # rare; a sparse gradient with stored values counts as nonzero
                self._nonzero.add(i) if g._nnz() else None
        if dense:
            self._pending.append((dense, [n.float() for n in torch._foreach_norm(
                [sharded.local(self.params[i].grad) for i in dense])]))

    def on_step_begin(self, step: int, record: bool) -> None:
        if step <= STATUS_AFTER_STEP or (record and step % OBSERVE_EVERY == 0):
            self._observe()

    def on_step_end(self, step: int) -> None:
        if step == STATUS_AFTER_STEP and not self._written_after_step:
            self._written_after_step = True
            self.write(step)

    def write(self, step: int, at_close: bool = False) -> None:
        if at_close:
            self._observe()
        pending, self._pending = self._pending, []
        norms = _host([torch.stack(ns) for _, ns in pending]) if pending else []
        for (idx, _), host in zip(pending, norms):
            self._nonzero.update(i for i, v in zip(idx, host) if v != 0)
        known = [(i, f) for i, f in enumerate(self._fingerprints) if f is not None]
        now = _host([fingerprint(self.params[i]) for i, _ in known] + [f for _, f in known])
        half = len(known)
        unchanged = [self.names[i] for k, (i, _) in enumerate(known) if now[k] == now[half + k]]
        opt_ids: set[int] = set()
        if self.optimizer is not None:
            opt_ids = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        detail: dict[str, Any] = {
            "never_grad": [n for i, n in enumerate(self.names) if i not in self._seen_grad],
            "all_zero_grad": [n for i, n in enumerate(self.names) if i in self._seen_grad and i not in self._nonzero],
            "not_in_optimizer": ([n for n, p in zip(self.names, self.params) if id(p) not in opt_ids]
                                 if self.optimizer is not None else []),
            "unchanged": unchanged,
            "optimizer_foreign": sum(1 for i in opt_ids if i not in self.model_ids),
            "n_trainable": len(self.params),
            "optimizer": self.optimizer is not None,
            "at_close": at_close,
        }
        flagged = set(detail["never_grad"]) | set(detail["all_zero_grad"]) | set(detail["not_in_optimizer"]) | set(unchanged)
        self.buffer.event(step, "parameter_status", "", float(len(flagged)), detail)


class ForeignWeights:
    """First forward only: weight ops fed a grad-requiring leaf that is not a model parameter."""

    def __init__(self, model: nn.Module, buffer: RunBuffer) -> None:
        self.buffer = buffer
        self.model: nn.Module | None = model
        self.model_ids = {id(p) for p in model.parameters()}
        self.sharded = any(sharded.is_dtensor(p) for p in model.parameters())
        self._ops: dict[str, dict[int, list[int]]] = defaultdict(dict)  # op -> tensor id -> shape
        self._calls: dict[str, int] = defaultdict(int)

    def on_call(self, func: Any, args: tuple, kwargs: dict) -> None:
        name = getattr(func, "__name__", "")
        if name not in WEIGHT_OPS:
            return
        operands = list(args[1:]) + list(kwargs.values())
        found = False
        for t in operands:
            if isinstance(t, Tensor) and t.requires_grad and t.is_leaf and id(t) not in self.model_ids:
                if self._registered_now(t):
                    continue
                self._ops[name].setdefault(id(t), list(t.shape))
                found = True
        if found:
            self._calls[name] += 1

    def _registered_now(self, t: Tensor) -> bool:
        """FSDP2 swaps each module's sharded parameters for full ones during its forward: a tensor
        registered in the model at this moment is a parameter, not a foreign weight."""
        if self.model is None or not self.sharded:
            return False
        return any(q is t for q in self.model.parameters())

    def write(self, step: int) -> None:
        for op, tensors in self._ops.items():
            shapes = list(tensors.values())
            self.buffer.event(step, "foreign_weight", "", float(len(shapes)),
                              {"op": op, "shapes": shapes, "count": len(shapes), "calls": self._calls[op]})
        self._ops.clear()
