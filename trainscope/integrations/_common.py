"""What the framework callbacks share: a guard that never lets trainscope break the framework's loop,
unwrapping of framework optimizer/scheduler wrappers, and metric names."""
from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from trainscope.probe.util import unwrap_optimizer  # noqa: F401  (re-exported for the callbacks)

# Keys a framework logs about its own bookkeeping, not the model's quality.
_NOT_METRICS = {"epoch", "step", "global_step", "runtime", "samples_per_second", "steps_per_second", "total_flos",
                "train_runtime", "train_samples_per_second", "train_steps_per_second", "learning_rate", "grad_norm"}


def unwrap_scheduler(sched: Any) -> Any:
    """The torch LR scheduler inside accelerate's AcceleratedScheduler."""
    for _ in range(3):
        inner = getattr(sched, "scheduler", None)
        if sched is None or inner is None or inner is sched or type(sched).__name__ != "AcceleratedScheduler":
            return sched
        sched = inner
    return sched


def val_metric_name(name: str) -> str | None:
    """trainscope's name for a validation metric a framework reports (eval_loss -> val_loss,
    eval_accuracy -> val_acc, eval_bleu -> val_bleu), or None for bookkeeping keys (runtime, epoch)."""
    from trainscope.store.importers import normalize_name

    rest = name.strip()
    for prefix in ("eval_", "eval/", "validation_", "validation/", "valid_", "valid/", "val_", "val/"):
        if rest.lower().startswith(prefix):
            rest = rest[len(prefix):]
            break
    if not rest or rest.lower() in _NOT_METRICS:
        return None
    norm = normalize_name("val_" + rest)
    return norm if norm in ("val_loss", "val_acc") else "val_" + rest


def as_number(v: Any) -> Any:
    """A float or a 0-d detached tensor for probe.log, or None if `v` is not a number."""
    if isinstance(v, Tensor):
        if v.numel() != 1:
            return None
        return v.detach().reshape(())
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f


def loss_of(output: Any) -> Tensor | None:
    """The loss a model or training_step returned: `outputs.loss`, `outputs["loss"]` or a scalar tensor."""
    if isinstance(output, Tensor):
        return output if output.numel() == 1 else None
    loss = None
    if isinstance(output, Mapping):
        loss = output.get("loss")
    if loss is None:
        loss = getattr(output, "loss", None)
    if isinstance(loss, Tensor) and loss.numel() == 1:
        return loss
    return None


class Guarded:
    """Mixin: `self._guarded(name, fn, *args)` runs fn, and a failure disables the callback with one warning
    (and closes the probe) instead of raising into the framework's training loop."""

    probe: Any = None
    _broken: str | None = None

    def _fail(self, where: str, e: BaseException) -> None:
        if self._broken is not None:
            return
        self._broken = where
        warnings.warn(f"trainscope: the {type(self).__module__.rsplit('.', 1)[-1]} callback failed in {where} "
                      f"({type(e).__name__}: {e}); recording stops, training continues unchanged",
                      RuntimeWarning, stacklevel=3)
        probe, self.probe = self.probe, None
        if probe is not None:
            try:
                probe.close(status="incomplete")
            except Exception:
                pass


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for callback methods: never raise, return None (the framework then keeps its own control)."""

    @functools.wraps(fn)
    def wrapper(self: Guarded, *args: Any, **kwargs: Any) -> Any:
        if self._broken is not None:
            return None
        try:
            fn(self, *args, **kwargs)
        except Exception as e:
            if type(e).__name__ == "TrainscopeFinding":  # on_finding="raise": stopping is what the user asked
                raise
            self._fail(fn.__name__, e)
        return None

    return wrapper


def steps_done(probe: Any) -> int:
    """Optimizer steps the probe has counted (its step clock's count)."""
    clock = getattr(probe, "clock", None)
    return int(clock.step if clock is not None else probe.step)
