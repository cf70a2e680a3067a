"""Lightning: one line records the run.

    from trainscope.integrations.lightning import TrainscopeCallback
    trainer = lightning.Trainer(max_epochs=10, callbacks=[TrainscopeCallback("runs/digits")])
    trainer.fit(model, train_loader, val_loader)       # then: trainscope diagnose runs/digits

`TrainscopeCallback` subclasses `lightning.pytorch.Callback`, or `pytorch_lightning.Callback` when only
`pytorch_lightning` is installed (`trainscope.integrations.pytorch_lightning.TrainscopeCallback` is the
`pytorch_lightning` one when both are). What it records, and from where:
- attaches `trainscope.watch` at `on_fit_start` to the LightningModule, the torch optimizer (unwrapped
  from `LightningOptimizer`) and the first LR scheduler;
- the training loss of every optimizer step from `on_train_batch_end`'s `outputs["loss"]` (what
  `training_step` returned; with `accumulate_grad_batches=N` Lightning divides each micro-batch loss by
  N, so their sum is the step's loss), on the step the framework counted, also when `training_step`
  calls a submodule (`self.net(x)`) instead of `self(x)`;
- validation metrics from `trainer.callback_metrics` at `on_validation_epoch_end` (names normalised:
  `val_loss`, `val_acc`, other `val_*` kept), ignoring the sanity-check validation;
- epochs from `trainer.current_epoch`, in the probe's convention (epoch `e` is logged when it ends);
- each rank its own shard (`trainer.global_rank`), all in one run dir.

Without a `run_dir` the run goes to `<trainer.log_dir or default_root_dir>/trainscope`. The callback never
raises into Lightning: a failure disables it with one warning.
"""
from __future__ import annotations

import os
from typing import Any

from trainscope.integrations._lightning import LightningRecorder

try:
    from lightning.pytorch import Callback as _Callback
except ImportError:  # only the standalone package
    from pytorch_lightning import Callback as _Callback

__all__ = ["TrainscopeCallback"]


class TrainscopeCallback(LightningRecorder, _Callback):
    """A Lightning `Callback` that records the run with `trainscope.watch`.

    run_dir: where the run store goes (default `<trainer.log_dir>/trainscope`).
    watch_options: passed to `trainscope.watch` (every, activations, criterion, name, config, ...);
    `optimizer` and `scheduler` default to the trainer's first ones, `criterion` to the module's loss
    attribute (an `nn.modules.loss._Loss`) when it has exactly one.
    """

    def __init__(self, run_dir: str | os.PathLike[str] | None = None, **watch_options: Any) -> None:
        LightningRecorder.__init__(self, run_dir, **watch_options)
