"""ModelLoss: the model's own loss as `train_loss`, for loops that never log one.

Hugging Face models compute the loss inside `forward` (`outputs.loss`, or `outputs["loss"]`); a user
who only calls `watch(model)` logs nothing. A forward hook on the watched model keeps that loss
(detached, on its device) and writes it for the step when the next step's forward starts or the run
closes, so a loss the user logs after `optimizer.step()` still wins: the first `probe.log` with a
"loss" in a metric's name removes the hook and drops what it kept. Micro-batches of one step are
averaged. Grad-disabled (evaluation) forwards and eval-mode forwards are ignored.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from trainscope.probe.buffer import RunBuffer
from trainscope.probe.clock import StepClock

NAME = "train_loss"


def loss_of(output: Any) -> Tensor | None:
    """`outputs.loss` / `outputs["loss"]` when it is a single-element tensor."""
    loss = output.get("loss") if isinstance(output, Mapping) else None
    if loss is None:
        loss = getattr(output, "loss", None)
    return loss if isinstance(loss, Tensor) and loss.numel() == 1 else None


class ModelLoss:
    def __init__(self, buffer: RunBuffer, clock: StepClock) -> None:
        self.buffer = buffer
        self.clock = clock
        self.user_logs_loss = False
        self.handle: Any = None
        self.used = False  # some train_loss came from the model's output
        self._step: int | None = None
        self._pending: list[Tensor] = []

    def on_output(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self.user_logs_loss or not torch.is_grad_enabled() or not module.training:
            return
        loss = loss_of(output)
        if loss is None:
            return
        step = self.clock.fwd_step
        if self._step is not None and step != self._step:
            self.commit()
        self._step = step
        self._pending.append(loss.detach().float().reshape(()))

    def commit(self) -> None:
        """Write the kept loss of the step before (the user had every chance to log one)."""
        pending, self._pending = self._pending, []
        if not pending or self.user_logs_loss or self._step is None:
            return
        value = pending[0] if len(pending) == 1 else torch.stack(pending).mean()
        self.buffer.log(self._step, self.clock.epoch, {NAME: value})
        self.used = True

    def stop(self) -> None:
        self.user_logs_loss = True
        self._pending = []
        if self.handle is not None:
            try:
                self.handle.remove()
            except Exception:
                pass
            self.handle = None
