"""The reference trainer and the training toolkit of the playbook (chapter 7.2-7.10).

    from trainscope.train import Trainer, TrainConfig, build, find_lr
    exp = build("streamrec-full", scale=0.25)
    Trainer(exp.model, exp.optimizer, exp.criterion, exp.splits.train, exp.splits.val,
            config=exp.train_config, schedule=exp.schedule, run_dir="runs/full").fit()

Modules: init (initialization by the following nonlinearity), models (MLP builder, case-study models),
optim (AdamW without decay on biases/norms, SGD, Adam), schedules (PyTorch schedulers stepped per
batch), lr_finder (range test), loop (Trainer), early_stopping, checkpoint, sanity (checklist
checks), data (case-study data), presets (presets + TOML configs), compare, progress, commands (CLI).
"""
from __future__ import annotations

import importlib
from typing import Any

# Lazy: `trainscope diagnose` mounts the trainer's CLI commands, and must not pay for importing torch
# and scipy.stats just to start.
_EXPORTS = {
    "EarlyStopping": "early_stopping", "init_weights": "init", "History": "loop", "TrainConfig": "loop",
    "Trainer": "loop", "LRFinderResult": "lr_finder", "find_lr": "lr_finder", "build_mlp": "models",
    "make_optimizer": "optim", "param_groups": "optim", "PRESETS": "presets", "build": "presets",
    "ScheduleSpec": "schedules", "make_scheduler": "schedules",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"trainscope.train.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'trainscope.train' has no attribute {name!r}")
