"""Early stopping on a validation metric, restoring the best weights (playbook 7.4.4).

The best weights are *cloned* tensor by tensor: `model.state_dict().copy()` (as printed in the
module) is a shallow copy whose tensors are the live parameters, so "restore best" would restore the
latest weights.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


class EarlyStopping:
    """Stop when `metric` has not improved by more than `min_delta` for `patience` epochs.

    mode "min" for losses, "max" for accuracy/AUC. Records why it stopped (`reason`).
    """

    def __init__(self, patience: int = 5, min_delta: float = 0.0, restore_best: bool = True, mode: str = "min") -> None:
        if patience < 1:
            raise ValueError("patience must be >= 1")
        if mode not in ("min", "max"):
            raise ValueError("mode must be 'min' or 'max'")
        self.patience = patience
        self.min_delta = min_delta
        self.restore_best = restore_best
        self.mode = mode
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch: int | None = None
        self.counter = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.stopped_epoch: int | None = None
        self.reason = ""

    def improved(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def step(self, value: float, model: nn.Module, epoch: int) -> bool:
        """Record this epoch's metric; True when training should stop (weights restored if asked)."""
        if self.improved(value):
            self.best, self.best_epoch, self.counter = value, epoch, 0
            if self.restore_best:
                self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return False
        self.counter += 1
        if self.counter >= self.patience:
            self.stopped_epoch = epoch
            self.reason = (f"no improvement of more than {self.min_delta:g} in {self.patience} epochs; "
                           f"best {self.best:.4f} at epoch {self.best_epoch}")
            self.restore(model)
            return True
        return False

    def restore(self, model: nn.Module) -> bool:
        """Load the best weights back into `model` (if kept); True if it did."""
        if self.restore_best and self.best_state is not None:
            model.load_state_dict(self.best_state)
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("patience", "min_delta", "restore_best", "mode", "best", "best_epoch",
                                               "counter", "best_state", "stopped_epoch", "reason")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)
