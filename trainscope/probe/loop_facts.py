"""LoopFacts: how the training loop drives the model, one tuple per step (expanded at flush).

train/eval mode at the step (and a `mode` event when it changes), whether `.grad` was reset
before the step's first backward (read on the sentinel: None or all zeros), backward passes per
step, the scheduler's step count, the batch size, and lr/momentum per param group.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from trainscope.probe.buffer import RunBuffer, ScalarRow
from trainscope.probe.clock import Collector, StepClock
from trainscope.probe.util import module_type
from trainscope.store import schema


class LoopFacts(Collector):
    def __init__(self, buffer: RunBuffer, clock: StepClock, *, optimizer: torch.optim.Optimizer | None,
                 scheduler: Any, model: torch.nn.Module | None = None) -> None:
        self.buffer = buffer
        self.clock = clock
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.last_mode: bool | None = None
        self.batch_size: int | None = None
        self.backwards = 0
        self._check_reset = False
        self._grad_reset: Any = None  # 1.0, or a 0-d bool tensor (copied at flush)
        self._loop: list[tuple] = []  # one tuple per step, see on_step_begin
        self.last_row: tuple | None = None  # the latest of them (live findings read it)
        buffer.scalar_sources.append(self._expand)
        types = [module_type(m) for m in model.modules()] if model is not None else []
        self._has_dropout = any(t.startswith(("Dropout", "AlphaDropout", "FeatureAlphaDropout")) for t in types)
        self._has_batchnorm = any(t.startswith(("BatchNorm", "SyncBatchNorm")) for t in types)
        self._eval_training: bool | None = None  # training flag of the latest grad-disabled forward
        # forwards that no backward reached (validation without torch.no_grad): counted from the second
        # forward in a row without a backward; `pending` holds one reached-flag per watched output
        self.fwd_since_backward = 0
        self.pending: list[list[bool]] = []
        self.unbacked_reported = not (self._has_dropout or self._has_batchnorm)  # harmless without them

    def on_eval_forward(self, module: torch.nn.Module) -> None:
        """A grad-disabled forward (validation, inference_mode): written first and when its mode changes."""
        training = bool(module.training)
        if training == self._eval_training:
            return
        self._eval_training = training
        step = self.clock.fwd_step  # like probe.log: the step of the latest training forward
        self.buffer.event(step, "eval_forward", "", 1.0 if training else 0.0,
                          {"training": training, "has_dropout": self._has_dropout,
                           "has_batchnorm": self._has_batchnorm, "step": step})

    def on_forward(self, module: torch.nn.Module, x: Tensor | None) -> None:
        """A training forward of the watched model (grad enabled) with its first input tensor."""
        self.on_forward_quiet(module)
        if x is not None and x.dim() > 0:
            self.batch_size = int(x.shape[0])

    def on_forward_quiet(self, module: torch.nn.Module) -> None:
        """The part of `on_forward` that quiet steps do too: a change of mode is an event at once."""
        mode = module.training
        if mode != self.last_mode:
            if self.last_mode is not None:
                self.buffer.event(self.clock.step, "mode", "", 1.0 if mode else 0.0, {"training": bool(mode)})
            self.last_mode = bool(mode)
        self.fwd_since_backward += 1

    def watch_output(self) -> bool:
        """Whether the current training forward's output should get a reached-flag: the second forward
        (or later) since the last backward, in train mode, on a model with Dropout/BatchNorm."""
        # at most 64 flags wait for a step: an inference pass with gradients on is judged by its first ones
        return (not self.unbacked_reported and self.fwd_since_backward >= 2 and bool(self.last_mode)
                and len(self.pending) < 64)

    def on_output(self, out: Tensor) -> None:
        cell = [False]

        def reached(grad: Tensor) -> None:
            cell[0] = True

        out.register_hook(reached)
        self.pending.append(cell)

    def check_unbacked(self, step: int) -> None:
        if not self.pending:
            return
        missed = sum(1 for c in self.pending if not c[0])
        self.pending.clear()
        if missed >= 2:  # a validation pass, not one stray forward
            self.unbacked_reported = True
            self.buffer.event(step, "eval_forward", "", 1.0,
                              {"training": True, "grad_enabled": True, "forwards": missed,
                               "has_dropout": self._has_dropout, "has_batchnorm": self._has_batchnorm,
                               "step": step})

    every_step = frozenset({"on_backward"})  # the forwards-since-backward count; the rest on full steps

    def on_backward(self) -> None:
        self.fwd_since_backward = 0
        if not self.clock.full():
            return  # backwards and the reset are counted on full steps (the step before reset them)
        self.backwards += 1
        if self._check_reset:
            self._check_reset = False
            if self.clock.accumulating:  # no update since the last backward: accumulation, not stale .grad
                return
            if self.clock.grad_was_reset is not None:  # FSDP2: read before the gradient arrived (clock.py)
                self._grad_reset, self.clock.grad_was_reset = self.clock.grad_was_reset, None
                return
            g = self.clock.sentinel.grad if self.clock.sentinel is not None else None
            # .grad is None (set_to_none) or all zeros once zero_grad ran; anything else is stale.
            self._grad_reset = 1.0 if g is None else (g == 0).all()

    def on_step_begin(self, step: int, record: bool) -> None:
        self.check_unbacked(step)
        groups = self.optimizer.param_groups if self.optimizer is not None else ()
        sched = self.scheduler
        count = None
        if sched is not None:
            count = getattr(sched, "_step_count", None)
            if count is None:
                count = getattr(sched, "last_epoch", None)
        self._loop.append((step, self.clock.epoch, self.clock.step_time, [g.get("lr") for g in groups],
                           [g.get("momentum", g.get("betas", (None,))[0]) for g in groups],
                           self.last_mode, self._grad_reset, self.backwards, count, self.batch_size))
        self.last_row = self._loop[-1]
        self._grad_reset = None
        self.buffer.pending_rows += 6

    def on_step_end(self, step: int) -> None:
        self.backwards = 0
        self._check_reset = True

    def mark(self) -> Any:
        return (len(self._loop), self._grad_reset, self.last_row)

    def rollback(self, token: Any) -> None:
        n, self._grad_reset, self.last_row = token
        del self._loop[n:]

    def _expand(self) -> list[ScalarRow]:
        rows: list[ScalarRow] = []
        add = rows.append
        loop, self._loop = self._loop, []
        for s, epoch, now, lrs, moms, mode, reset, backwards, count, batch in loop:
            for i, lr in enumerate(lrs):
                if lr is not None:
                    add((s, f"{schema.LR_PREFIX}{i}", lr, epoch, now))
            for i, mom in enumerate(moms):
                if mom is not None:
                    add((s, f"{schema.MOMENTUM_PREFIX}{i}", mom, epoch, now))
            if mode is not None:
                add((s, schema.LOOP_TRAINING, 1.0 if mode else 0.0, epoch, now))
            if reset is not None:
                add((s, schema.LOOP_GRAD_RESET, reset, epoch, now))
            add((s, schema.LOOP_BACKWARDS, float(backwards), epoch, now))
            if count is not None:
                add((s, schema.LOOP_SCHEDULER_STEPS, float(count) - 1.0, epoch, now))
            if batch is not None:
                add((s, schema.LOOP_BATCH_SIZE, float(batch), epoch, now))
        return rows
