"""CriterionWatch: what reaches the loss (logits or probabilities, the target's range and dtype).

One look at the first grad-enabled call of the given `nn.Module` criterion, then its hook is
removed so the loss stays on PyTorch's fast path.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from trainscope.probe.buffer import RunBuffer
from trainscope.probe.clock import StepClock
from trainscope.probe.guard import HookGuard
from trainscope.probe.util import distribution_facts, first_tensor


class CriterionWatch:
    def __init__(self, criterion: Callable[..., Tensor] | None, buffer: RunBuffer, clock: StepClock,
                 guard: HookGuard) -> None:
        self.criterion = criterion
        self.buffer = buffer
        self.clock = clock
        self.guard = guard
        self.num_classes: int | None = None
        self.handles: list[Any] = []
        self._handle: Any = None

    def install(self) -> None:
        if isinstance(self.criterion, nn.Module):
            self._handle = self.criterion.register_forward_hook(self.guard.wrap("criterion", self._on_criterion))
            self.handles.append(self._handle)

    def _on_criterion(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not torch.is_grad_enabled():
            return
        self._handle.remove()  # one look is enough; keep the loss on PyTorch's fast path
        x = first_tensor(args)
        if x is None or not x.is_floating_point():
            return
        detail: dict[str, Any] = {"criterion": type(module).__name__,
                                  "producer": type(x.grad_fn).__name__ if x.grad_fn is not None else "",
                                  "shape": list(x.shape)}
        detail.update(distribution_facts(x))
        loss = first_tensor(output)
        if loss is not None and loss.numel() == 1:
            detail["loss"] = float(loss.detach().float())
        target = args[1] if len(args) > 1 and isinstance(args[1], Tensor) else None
        if target is not None:
            detail["target_dtype"] = str(target.dtype).replace("torch.", "")
            if target.numel():
                detail["target_min"], detail["target_max"] = (float(v) for v in torch.aminmax(target.detach().float()))
        ce_like = type(module).__name__ in ("CrossEntropyLoss", "NLLLoss")
        if ce_like and x.dim() >= 2:
            self.num_classes = int(x.shape[1])
        elif type(module).__name__ in ("BCELoss", "BCEWithLogitsLoss"):
            self.num_classes = 2
        detail["num_classes"] = self.num_classes
        self.buffer.event(self.clock.fwd_step, "criterion_input", "", detail.get("loss", float("nan")), detail)
