"""The Lightning callback's logic, shared by `lightning.pytorch` and `pytorch_lightning` (see lightning.py)."""
from __future__ import annotations

import os
from typing import Any

import torch

import trainscope
from trainscope.integrations._common import Guarded, as_number, guarded, loss_of, steps_done, unwrap_optimizer
from trainscope.integrations._common import val_metric_name

__all__ = ["LightningRecorder"]


class LightningRecorder(Guarded):
    """The callback's logic, independent of which Lightning package's `Callback` it is mixed into."""

    def __init__(self, run_dir: str | os.PathLike[str] | None = None, **watch_options: Any) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.watch_options = watch_options
        self.probe: Any = None
        self._broken = None
        self._micro: list[torch.Tensor] = []
        self._step_in_progress = 0
        self._global_step = 0

    # ------------------------------------------------------------------ lifecycle
    @guarded
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self.probe is not None:
            return
        run_dir = self.run_dir
        if run_dir is None:
            base = getattr(trainer, "log_dir", None) or trainer.default_root_dir
            run_dir = os.path.join(base, "trainscope")
        optimizers = list(getattr(trainer, "optimizers", []) or [])
        scheds = list(getattr(trainer, "lr_scheduler_configs", []) or [])
        options = dict(self.watch_options)
        config = {
            "framework": "lightning",
            "lightning_version": _pl_version(),
            "accumulate_grad_batches": getattr(trainer, "accumulate_grad_batches", None),
            "gradient_clip_val": getattr(trainer, "gradient_clip_val", None),
            "max_epochs": getattr(trainer, "max_epochs", None),
            "precision": str(getattr(getattr(trainer, "precision_plugin", None), "precision",
                                     getattr(trainer, "precision", ""))),
            "strategy": type(getattr(trainer, "strategy", None)).__name__,
            "n_optimizers": len(optimizers),
            "automatic_optimization": bool(getattr(pl_module, "automatic_optimization", True)),
        }
        config.update(options.pop("config", None) or {})
        options.setdefault("optimizer", unwrap_optimizer(optimizers[0]) if optimizers else None)
        options.setdefault("scheduler", scheds[0].scheduler if scheds else None)
        if "criterion" not in options:
            options["criterion"] = _find_criterion(pl_module)
        self.probe = trainscope.watch(pl_module, run_dir, **options, config=config)
        self._global_step = int(trainer.global_step)

    @guarded
    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._close("finished")

    @guarded
    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._close("crashed")

    def _close(self, status: str) -> None:
        probe, self.probe = self.probe, None
        if probe is not None:
            probe.close(status=status)

    # ------------------------------------------------------------------ per step
    @guarded
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.probe is not None and not self._micro:
            self._step_in_progress = steps_done(self.probe)

    @guarded
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.probe is None:
            return
        loss = loss_of(outputs)
        if loss is not None:
            self._micro.append(loss.detach().float().reshape(()))
        stepped = int(trainer.global_step) != self._global_step
        self._global_step = int(trainer.global_step)
        if stepped and self._micro:
            micro, self._micro = self._micro, []
            value = micro[0] if len(micro) == 1 else torch.stack(micro).sum()
            self.probe.log(step=self._step_in_progress, train_loss=value)
        elif stepped:
            self._micro = []

    @guarded
    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._before_val = _snapshot(trainer.callback_metrics)

    @guarded
    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.probe is None or trainer.sanity_checking:
            return
        values = {}
        for key, v in _validation_metrics(trainer, getattr(self, "_before_val", {})).items():
            name = val_metric_name(key)
            num = as_number(v) if name else None
            if num is not None and not (key.endswith("_step") and key[:-5] + "_epoch" in trainer.callback_metrics):
                values[name.removesuffix("_epoch")] = num
        step = max(steps_done(self.probe) - 1, 0)
        self.probe.log(step=step, epoch=int(trainer.current_epoch), **values)

    @guarded
    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.probe is not None:
            self.probe.log(step=max(steps_done(self.probe) - 1, 0), epoch=int(trainer.current_epoch))


def _find_criterion(module: torch.nn.Module) -> Any:
    losses = [m for m in module.modules() if isinstance(m, torch.nn.modules.loss._Loss)]
    return losses[0] if len(losses) == 1 else None


def _snapshot(metrics: Any) -> dict[str, float]:
    out = {}
    for k, v in dict(metrics or {}).items():
        num = as_number(v)
        if num is not None:
            out[str(k)] = float(num)
    return out


def _validation_metrics(trainer: Any, before: dict[str, float]) -> dict[str, Any]:
    """The metrics logged during this validation: those in the evaluation loop's own result collection
    when this Lightning exposes it, else those that changed since validation started."""
    metrics = dict(trainer.callback_metrics or {})
    try:
        results = trainer._results  # the running loop's ResultCollection: during validation, the val one
        own = set(results.metrics(False)["callback"]) if results is not None else set()
    except Exception:
        own = set()
    if own:
        return {str(k): metrics[k] for k in own if k in metrics}
    now = _snapshot(metrics)
    return {k: metrics[k] for k, v in now.items() if before.get(k) != v}


def _pl_version() -> str:
    try:
        import lightning

        return str(lightning.__version__)
    except ImportError:
        try:
            import pytorch_lightning

            return str(pytorch_lightning.__version__)
        except ImportError:  # pragma: no cover
            return ""
