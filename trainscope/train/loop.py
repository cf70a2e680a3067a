"""The reference trainer: the playbook's production loop, readable top to bottom.

One optimizer step = `accumulation_steps` micro-batches, each loss weighted by its share of the
samples (so k micro-batches give exactly the large batch's gradient, uneven last group included),
then unscale (fp16), clip, step, scheduler step. Validation once per epoch, early stopping on the
validation loss with the best weights cloned, checkpoints that resume bit-for-bit (the shuffle order
of epoch e depends only on (seed, e), and the RNG state is saved), and the whole run recorded with
`trainscope.watch` when a run directory is given.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from trainscope.errors import TrainscopeError
from trainscope.train.checkpoint import Checkpointer, load_checkpoint, rng_state, set_rng_state
from trainscope.train.early_stopping import EarlyStopping
from trainscope.train.metrics import accuracy, roc_auc
from trainscope.train.progress import Progress
from trainscope.train.schedules import ScheduleSpec, make_scheduler

PRECISIONS = ("fp32", "bf16", "fp16")



def _grad_scaler(device_type: str) -> Any:
    """torch.amp.GradScaler (torch >= 2.3), or the older CUDA-only spelling on torch 2.2."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device_type)
    if device_type == "cuda":
        return torch.cuda.amp.GradScaler()
    raise TrainscopeError(f"fp16 with loss scaling on {device_type} needs torch >= 2.3 (use bf16, or a GPU)")

@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    accumulation_steps: int = 1  # micro-batches per optimizer step
    clip_norm: float | None = None  # clip_grad_norm_ max_norm
    clip_value: float | None = None  # clip_grad_value_ clip_value
    precision: str = "fp32"  # fp32 | bf16 (autocast) | fp16 (autocast + GradScaler)
    device: str = "cpu"
    seed: int = 0
    shuffle: bool = True
    early_stopping: bool = False
    patience: int = 5
    min_delta: float = 0.0
    restore_best: bool = True
    checkpoint_dir: str | None = None
    keep_last: int = 2
    stop_on_nonfinite: bool = True
    watch_every: int = 10  # probe sampling period (optimizer steps) for the heavy statistics
    eval_batch_size: int = 1024
    # The document-classifier case study's loop bugs, reproducible on purpose (all True = correct loop).
    validate: bool = True
    zero_grad: bool = True
    train_mode: bool = True

    def validate_fields(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.accumulation_steps < 1:
            raise TrainscopeError("epochs, batch_size and accumulation_steps must be >= 1")
        if self.precision not in PRECISIONS:
            raise TrainscopeError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise TrainscopeError("clip_norm must be positive")
        if self.clip_value is not None and self.clip_value <= 0:
            raise TrainscopeError("clip_value must be positive")
        if self.early_stopping and not self.validate:
            raise TrainscopeError("early stopping needs validation (validate = true)")


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    step: int  # optimizer steps done after this epoch
    train_loss: float
    lr: float
    time_s: float  # wall time of the epoch, validation included
    val_loss: float = math.nan
    val_acc: float = math.nan
    val_auc: float = math.nan
    grad_norm: float = math.nan  # mean pre-clip global gradient norm


@dataclass
class History:
    epochs: list[EpochRecord] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_epoch: int | None = None
    stop_reason: str = ""
    restored_best: bool = False
    final: dict[str, float] = field(default_factory=dict)  # metrics of the returned model
    time_s: float = 0.0

    def column(self, name: str) -> list[float]:
        return [getattr(r, name) for r in self.epochs]

    def to_frame(self):  # type: ignore[no-untyped-def]
        import pandas as pd

        return pd.DataFrame([asdict(r) for r in self.epochs])

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": [asdict(r) for r in self.epochs], "best_epoch": self.best_epoch,
                "stopped_epoch": self.stopped_epoch, "stop_reason": self.stop_reason,
                "restored_best": self.restored_best, "final": self.final, "time_s": self.time_s}


def _total_norm(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """Global L2 norm of the gradients (what clip_grad_norm_ would return), without clipping."""
    if not params:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.detach()) for p in params]))


def _task_of(criterion: nn.Module) -> str:
    if isinstance(criterion, (nn.BCEWithLogitsLoss, nn.BCELoss)):
        return "binary"
    if isinstance(criterion, (nn.CrossEntropyLoss, nn.NLLLoss)):
        return "multiclass"
    return "regression"


class Trainer:
    """Train `model` on `train_data` (a Dataset of (input, target) pairs).

    schedule: a ScheduleSpec/name (built here, stepped per optimizer step) or None.
    run_dir: record the run there with `trainscope.watch` (train_loss per step; val_loss, val_acc,
    val_auc per epoch with epoch=; test metrics and the best epoch at the end).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion: nn.Module,
        train_data: Dataset,
        val_data: Dataset | None = None,
        *,
        config: TrainConfig | None = None,
        schedule: ScheduleSpec | str | None = None,
        test_data: Dataset | None = None,
        run_dir: str | Path | None = None,
        run_name: str | None = None,
        run_config: dict[str, Any] | None = None,
        quiet: bool = True,
    ) -> None:
        self.config = config or TrainConfig()
        self.config.validate_fields()
        for what, d in (("train_data", train_data), ("val_data", val_data), ("test_data", test_data)):
            if isinstance(d, DataLoader):
                raise TrainscopeError(f"{what}: pass the Dataset, not a DataLoader; the Trainer builds its own "
                                      "loaders (batch_size in TrainConfig) so that resuming replays the same order")
        self.device = torch.device(self.config.device)
        self.model = model.to(self.device)
        self.optimizer = optimizer
        self.criterion = criterion
        self.train_data = train_data
        self.val_data = val_data if self.config.validate else None
        self.test_data = test_data
        self.task = _task_of(criterion)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.run_name = run_name
        self.run_config = run_config
        self.quiet = quiet
        n_batches = math.ceil(len(train_data) / self.config.batch_size)  # type: ignore[arg-type]
        self.steps_per_epoch = math.ceil(n_batches / self.config.accumulation_steps)
        self.total_steps = self.steps_per_epoch * self.config.epochs
        spec = ScheduleSpec(name=schedule) if isinstance(schedule, str) else schedule
        self.schedule_spec = spec
        self.scheduler = make_scheduler(optimizer, spec, self.total_steps, self.steps_per_epoch) if spec else None
        self.scaler = _grad_scaler(self.device.type) if self.config.precision == "fp16" else None
        self.early = (EarlyStopping(self.config.patience, self.config.min_delta, self.config.restore_best)
                      if self.config.early_stopping else None)
        self.checkpointer = (Checkpointer(self.config.checkpoint_dir, self.config.keep_last)
                             if self.config.checkpoint_dir else None)
        self.history = History()
        self.global_step = 0
        self.start_epoch = 1
        self.probe: Any = None

    # -- pieces -------------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.config.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.precision == "bf16" else torch.float16
        return torch.amp.autocast(self.device.type, dtype=dtype)

    def epoch_loader(self, epoch: int) -> DataLoader:
        """The shuffle order of an epoch depends only on (seed, epoch): resume replays it exactly."""
        gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        return DataLoader(self.train_data, batch_size=self.config.batch_size, shuffle=self.config.shuffle,
                          generator=gen)

    def _groups(self, loader: DataLoader) -> Iterator[list[Any]]:
        k = self.config.accumulation_steps
        group: list[Any] = []
        for batch in loader:
            group.append(batch)
            if len(group) == k:
                yield group
                group = []
        if group:
            yield group

    def _loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.criterion(outputs.float(), targets)

    def train_step(self, group: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over `group` micro-batches; returns (loss, pre-clip grad norm)."""
        cfg = self.config
        if cfg.zero_grad:
            self.optimizer.zero_grad(set_to_none=True)
        n_total = sum(len(b[0]) for b in group)
        loss_total = torch.zeros((), device=self.device)
        for inputs, targets in group:
            inputs, targets = inputs.to(self.device), targets.to(self.device)
            with self.autocast():
                outputs = self.model(inputs)
            loss = self._loss(outputs, targets)
            # weight by the micro-batch's share of the samples: sum = the large batch's mean loss
            scaled = loss * (len(inputs) / n_total)
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            loss_total += scaled.detach()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)  # clip true gradients, not scaled ones
        params = [p for p in self.model.parameters() if p.grad is not None]
        if cfg.clip_norm is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)
        else:
            grad_norm = _total_norm(params)
        if cfg.clip_value is not None:
            torch.nn.utils.clip_grad_value_(params, cfg.clip_value)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return loss_total, grad_norm.detach()

    @torch.no_grad()
    def evaluate(self, data: Dataset) -> dict[str, float]:
        """Loss and accuracy (and AUC for binary) of the model in eval mode over `data`."""
        was_training = self.model.training
        self.model.eval()
        outs, tgts = [], []
        for inputs, targets in DataLoader(data, batch_size=self.config.eval_batch_size):
            with self.autocast():
                outs.append(self.model(inputs.to(self.device)).float())
            tgts.append(targets.to(self.device))
        self.model.train(was_training)
        outputs, targets = torch.cat(outs), torch.cat(tgts)
        result = {"loss": float(self._loss(outputs, targets))}
        if self.task in ("binary", "multiclass"):
            result["acc"] = accuracy(outputs, targets)
        if self.task == "binary":
            result["auc"] = roc_auc(targets.cpu().numpy(), outputs.cpu().numpy())
        return result

    # -- state --------------------------------------------------------------------------------------
    def state_dict(self, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "global_step": self.global_step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "early_stopping": self.early.state_dict() if self.early else None,
            "best_epoch": self.history.best_epoch,
            "history": self.history.to_dict(),
            "rng": rng_state(),
            "config": asdict(self.config),
        }

    def load_state(self, path: str | Path) -> None:
        """Restore everything a checkpoint holds; `fit` then continues with the next epoch."""
        state = load_checkpoint(path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        if self.early is not None and state.get("early_stopping") is not None:
            self.early.load_state_dict(state["early_stopping"])
        h = state.get("history") or {}
        self.history = History(epochs=[EpochRecord(**r) for r in h.get("epochs", [])],
                               best_epoch=h.get("best_epoch"), time_s=h.get("time_s", 0.0))
        self.global_step = int(state["global_step"])
        self.start_epoch = int(state["epoch"]) + 1
        set_rng_state(state["rng"])

    # -- recording ----------------------------------------------------------------------------------
    def _open_probe(self) -> None:
        if self.run_dir is None:
            return
        import trainscope

        config = {"trainer": asdict(self.config),
                  "schedule": asdict(self.schedule_spec) if self.schedule_spec else None,
                  **({"experiment": self.run_config} if self.run_config else {})}
        self.probe = trainscope.watch(self.model, self.run_dir, optimizer=self.optimizer, criterion=self.criterion,
                                      scheduler=self.scheduler, every=self.config.watch_every,
                                      name=self.run_name, config=config)

    def _log(self, **values: Any) -> None:
        if self.probe is not None:
            self.probe.log(**values)

    # -- the loop -----------------------------------------------------------------------------------
    def fit(self, resume_from: str | Path | None = None, until_epoch: int | None = None) -> History:
        """Train (or continue from a checkpoint) to `config.epochs`.

        until_epoch: return after this epoch as if interrupted (schedules still span all epochs), e.g.
        to split training across jobs; resume with `fit(resume_from=checkpoint_dir)`.
        """
        cfg = self.config
        if resume_from is not None:
            self.load_state(resume_from)
        else:
            torch.manual_seed(cfg.seed)
        progress = Progress(cfg.epochs, self.steps_per_epoch, quiet=self.quiet)
        self._open_probe()
        t_fit = time.perf_counter()
        try:
            self._fit_epochs(progress, until_epoch or cfg.epochs)
        except BaseException:
            if self.probe is not None:
                with contextlib.suppress(Exception):
                    self.probe.close("crashed")
                self.probe = None
            raise
        done = self.history.stopped_epoch is not None or (self.history.epochs and
                                                           self.history.epochs[-1].epoch >= cfg.epochs)
        self._finish(progress, time.perf_counter() - t_fit, interrupted=not done)
        return self.history

    def _fit_epochs(self, progress: Progress, last_epoch: int) -> None:
        cfg = self.config
        for epoch in range(self.start_epoch, min(cfg.epochs, last_epoch) + 1):
            t0 = time.perf_counter()
            progress.start_epoch(epoch)
            self.model.train(cfg.train_mode)  # train_mode=False reproduces the eval()-in-the-loop bug
            loss_sum = torch.zeros(())
            norm_sum = torch.zeros(())
            n_steps = 0
            nonfinite = False
            for i, group in enumerate(self._groups(self.epoch_loader(epoch))):
                loss, grad_norm = self.train_step(group)
                self._log(step=self.global_step, epoch=epoch, train_loss=loss)
                self.global_step += 1
                n_steps += 1
                loss_sum += loss.cpu()
                norm_sum += grad_norm.float().cpu()
                if not progress.quiet and progress.tty:
                    progress.step(i + 1, float(loss), self.optimizer.param_groups[0]["lr"])
                if cfg.stop_on_nonfinite and not torch.isfinite(loss):
                    nonfinite = True
                    break
            rec = EpochRecord(epoch=epoch, step=self.global_step, train_loss=float(loss_sum / max(1, n_steps)),
                              lr=float(self.optimizer.param_groups[0]["lr"]), time_s=0.0,
                              grad_norm=float(norm_sum / max(1, n_steps)))
            stop = False
            if nonfinite:
                self.history.stopped_epoch = epoch
                self.history.stop_reason = f"non-finite training loss at step {self.global_step - 1}"
                stop = True
            elif self.val_data is not None:
                val = self.evaluate(self.val_data)
                rec.val_loss, rec.val_acc = val["loss"], val.get("acc", math.nan)
                rec.val_auc = val.get("auc", math.nan)
                metrics = {"val_loss": rec.val_loss}
                if self.task in ("binary", "multiclass"):
                    metrics["val_acc"] = rec.val_acc
                if self.task == "binary":
                    metrics["val_auc"] = rec.val_auc
                self._log(step=self.global_step - 1, epoch=epoch, **metrics)
                best_so_far = min((r.val_loss for r in self.history.epochs if math.isfinite(r.val_loss)),
                                  default=math.inf)
                if rec.val_loss < best_so_far:
                    self.history.best_epoch = epoch
                if self.early is not None and self.early.step(rec.val_loss, self.model, epoch):
                    self.history.stopped_epoch = epoch
                    self.history.stop_reason = "early stopping: " + self.early.reason
                    self.history.restored_best = self.early.restore_best and self.early.best_state is not None
                    stop = True
            rec.time_s = time.perf_counter() - t0
            self.history.epochs.append(rec)
            progress.end_epoch(self._summary(rec))
            if self.checkpointer is not None:
                self.checkpointer.save(self.state_dict(epoch), epoch, is_best=self.history.best_epoch == epoch)
            if stop:
                progress.message(self.history.stop_reason)
                break

    def _summary(self, rec: EpochRecord) -> str:
        parts = [f"train {rec.train_loss:.4f}"]
        if not math.isnan(rec.val_loss):
            parts.append(f"val {rec.val_loss:.4f}")
        if not math.isnan(rec.val_auc):
            parts.append(f"auc {rec.val_auc:.4f}")
        elif not math.isnan(rec.val_acc):
            parts.append(f"acc {rec.val_acc:.4f}")
        parts.append(f"lr {rec.lr:.2e} ({rec.time_s:.1f}s)")
        return " | ".join(parts)

    def _finish(self, progress: Progress, elapsed: float, interrupted: bool = False) -> None:
        """Restore the best weights at the end too (early stopping may not have fired), log finals."""
        h = self.history
        h.time_s += elapsed
        if self.early is not None and not h.restored_best and h.stopped_epoch is None and not interrupted:
            h.restored_best = self.early.restore(self.model)
        final: dict[str, float] = {}
        if self.val_data is not None and h.epochs:
            kept = self.early.best_epoch if (h.restored_best and self.early is not None) else None
            rec = next((r for r in h.epochs if r.epoch == kept), h.epochs[-1])
            final.update(val_loss=rec.val_loss, train_loss=rec.train_loss, epoch=float(rec.epoch))
            if self.task == "binary":
                final["val_auc"] = rec.val_auc
            if self.task in ("binary", "multiclass"):
                final["val_acc"] = rec.val_acc
        elif h.epochs:
            final.update(train_loss=h.epochs[-1].train_loss, epoch=float(h.epochs[-1].epoch))
        if self.test_data is not None:
            test = self.evaluate(self.test_data)
            final.update({f"test_{k}": v for k, v in test.items()})
        final["time_s"] = h.time_s
        h.final = final
        if self.probe is not None:
            last = max(0, self.global_step - 1)
            logged = {k: v for k, v in final.items() if k.startswith("test_")}
            if h.best_epoch is not None:
                logged["best_epoch"] = float(h.best_epoch)
            if h.restored_best and self.early is not None and self.early.best_epoch is not None:
                logged["restored_epoch"] = float(self.early.best_epoch)  # the returned model is this epoch's
            logged["train_time_s"] = h.time_s
            self._log(step=last, **logged)
            self.probe.close()
            self.probe = None
        if h.restored_best:
            progress.message(f"restored the weights of epoch {h.best_epoch} (best val_loss)")
