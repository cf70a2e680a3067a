"""Hugging Face `Trainer`: one line records the run.

    from trainscope.integrations.transformers import TrainscopeCallback
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[TrainscopeCallback("runs/gpt2")])
    trainer.train()            # then: trainscope diagnose runs/gpt2   (or the Trainer's output_dir)

What it records, and from where:
- attaches `trainscope.watch` at `on_train_begin` to the model, the real torch optimizer inside
  accelerate's `AcceleratedOptimizer` and the LR scheduler (so per-layer statistics, LR per group,
  loop facts and the update ratio of each optimizer step are the probe's usual ones);
- the training loss of every optimizer step from the model's own `outputs.loss` (the mean over the
  micro-batches of a gradient-accumulation step, or their sum when the Trainer passed
  `num_items_in_batch`, i.e. when each micro-batch loss is already divided by the whole step's token
  count). Only if no `outputs.loss` was seen (a custom `compute_loss`) is the Trainer's logged `loss`
  recorded instead; that one is a mean over `logging_steps` steps, and meta.json says so:
  `config.logged_mean_over = {"train_loss": logging_steps}`;
- evaluation metrics from `on_evaluate` (`eval_loss` -> `val_loss`, `eval_accuracy` -> `val_acc`, other
  `eval_x` -> `val_x`; runtime/throughput keys are dropped);
- epoch boundaries from the Trainer's state (`on_epoch_end`), in the probe's convention: epoch `e`
  (0-based) is logged when it ends;
- closes the run at `on_train_end`.

Without a `run_dir` the run goes to `<output_dir>/trainscope`, which every rank agrees on. The callback
never raises into the Trainer: a failure disables it with one warning.
"""
from __future__ import annotations

import math
import os
from typing import Any

import torch
from transformers import TrainerCallback

import trainscope
from trainscope.integrations._common import Guarded, as_number, guarded, loss_of, unwrap_optimizer, unwrap_scheduler
from trainscope.integrations._common import steps_done, val_metric_name

__all__ = ["TrainscopeCallback"]


class TrainscopeCallback(TrainerCallback, Guarded):
    """A `transformers.TrainerCallback` that records the run with `trainscope.watch`.

    run_dir: where the run store goes (default `<TrainingArguments.output_dir>/trainscope`).
    watch_options: passed to `trainscope.watch` (every, activations, grad_norm_every, criterion, name,
    config, ...); `optimizer` and `scheduler` default to the Trainer's own.
    """

    def __init__(self, run_dir: str | os.PathLike[str] | None = None, **watch_options: Any) -> None:
        self.run_dir = run_dir
        self.watch_options = watch_options
        self.probe: Any = None
        self._broken = None
        self._hook: Any = None
        self._micro: list[torch.Tensor] = []
        self._sum_micro = False
        self._step_in_progress = 0
        self._steps_with_loss = 0  # optimizer steps whose loss came from outputs.loss since the last on_log
        self._epoch_done = -1

    # ------------------------------------------------------------------ lifecycle
    @guarded
    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        if self.probe is not None or model is None:
            return
        run_dir = self.run_dir if self.run_dir is not None else os.path.join(args.output_dir, "trainscope")
        config = {
            "framework": "transformers",
            "transformers_version": _hf_version(),
            "logging_steps": args.logging_steps,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "max_grad_norm": args.max_grad_norm,
            "learning_rate": args.learning_rate,
            "weight_decay": args.weight_decay,
            "warmup_steps": getattr(args, "warmup_steps", None),
            "lr_scheduler_type": str(getattr(args, "lr_scheduler_type", "")),
            "num_train_epochs": args.num_train_epochs,
            "max_steps": args.max_steps,
            "logged_mean_over": {},
        }
        options = dict(self.watch_options)
        config.update(options.pop("config", None) or {})
        options = {"optimizer": unwrap_optimizer(optimizer), "scheduler": unwrap_scheduler(lr_scheduler),
                   **options, "config": config}
        self.probe = trainscope.watch(model, run_dir, **options)
        self._epoch_done = int(math.floor(float(state.epoch or 0.0) + 1e-6)) - 1  # resumed runs start later
        try:
            self._hook = model.register_forward_hook(self._on_model_output, with_kwargs=True)
        except TypeError:  # torch < 2.0: no kwargs hooks
            self._hook = model.register_forward_hook(lambda m, a, o: self._on_model_output(m, a, {}, o))

    @guarded
    def on_train_end(self, args, state, control, **kwargs):
        self._close("finished")

    def _close(self, status: str) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        probe, self.probe = self.probe, None
        if probe is not None:
            probe.close(status=status)

    # ------------------------------------------------------------------ per step
    def _on_model_output(self, module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        if self._broken is not None or self.probe is None or not torch.is_grad_enabled() or not module.training:
            return
        try:
            loss = loss_of(output)
            if loss is not None:
                self._micro.append(loss.detach())
                self._sum_micro = "num_items_in_batch" in kwargs and kwargs["num_items_in_batch"] is not None
        except Exception as e:
            self._fail("the model output hook", e)

    @guarded
    def on_step_begin(self, args, state, control, **kwargs):
        if self.probe is not None:
            self._step_in_progress = steps_done(self.probe)

    @guarded
    def on_step_end(self, args, state, control, **kwargs):
        if self.probe is None or not self._micro:
            return
        micro, self._micro = self._micro, []
        loss = torch.stack([m.float().reshape(()) for m in micro])
        loss = loss.sum() if self._sum_micro else loss.mean()
        self.probe.log(step=self._step_in_progress, train_loss=loss)
        self._steps_with_loss += 1

    @guarded
    def on_epoch_end(self, args, state, control, **kwargs):
        if self.probe is None:
            return
        done = int(math.floor(float(state.epoch or 0.0) + 1e-6)) - 1
        if done > self._epoch_done:
            self._epoch_done = done
            self.probe.log(step=self._last_step(), epoch=done)

    # ------------------------------------------------------------------ logged values
    @guarded
    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.probe is None or not logs or "loss" not in logs:
            return
        if self._steps_with_loss == 0:  # no outputs.loss: fall back to the Trainer's windowed mean
            value = as_number(logs["loss"])
            if value is not None:
                self.probe.log(step=self._last_step(), train_loss=value)
                mean_over = self.probe._meta.setdefault("config", {}).setdefault("logged_mean_over", {})
                mean_over["train_loss"] = int(args.logging_steps)
        self._steps_with_loss = 0

    @guarded
    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.probe is None or not metrics:
            return
        values = {}
        for key, v in metrics.items():
            name = val_metric_name(str(key))
            num = as_number(v) if name else None
            if name and num is not None:
                values[name] = num
        if values:
            self.probe.log(step=self._last_step(), **values)

    def _last_step(self) -> int:
        return max(steps_done(self.probe) - 1, 0)


def _hf_version() -> str:
    try:
        import transformers

        return str(transformers.__version__)
    except Exception:  # pragma: no cover
        return ""
