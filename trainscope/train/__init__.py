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
from trainscope.train.early_stopping import EarlyStopping
from trainscope.train.init import init_weights
from trainscope.train.loop import History, TrainConfig, Trainer
from trainscope.train.lr_finder import LRFinderResult, find_lr
from trainscope.train.models import build_mlp
from trainscope.train.optim import make_optimizer, param_groups
from trainscope.train.presets import PRESETS, build
from trainscope.train.schedules import ScheduleSpec, make_scheduler

__all__ = ["EarlyStopping", "History", "LRFinderResult", "PRESETS", "ScheduleSpec", "TrainConfig", "Trainer",
           "build", "build_mlp", "find_lr", "init_weights", "make_optimizer", "make_scheduler", "param_groups"]
