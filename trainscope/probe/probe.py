"""`trainscope.watch`: the probe that records a training run into a run store.

`Probe` composes small collectors, each in its own module:
  guard.HookGuard        every hook body runs guarded; a failure disables that hook, never the training
  clock.StepClock        optimizer step hooks / backward end, the recording schedule
  trace.ForwardTrace     the first forward: order, nonlinearities, init table, input/output facts
  activations.ActivationHooks  per-module output statistics, armed for one forward
  params.ParamStats      global grad norm, per-layer grad/weight/update statistics
  loop_facts.LoopFacts   mode, grad reset, backwards, scheduler count, batch size, lr/momentum
  criterion.CriterionWatch  what reaches the loss
  buffer.RunBuffer       buffered rows, one host copy per flush, nonfinite detection, writer
  meta                   model/optimizer/scheduler/criterion summaries for meta.json
This module owns the model's forward hooks (they dispatch to the collectors) and the lifecycle.

Cost model: every step records a few cheap scalars as device tensors or Python numbers; every
`every`-th step (and a few early steps) also per-layer statistics. Nothing syncs with the device
before a flush.
"""
from __future__ import annotations

import atexit
import os
import platform
import time
import warnings
import weakref
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from trainscope.probe import meta as meta_mod
from trainscope.probe.activations import ActivationHooks
from trainscope.probe.buffer import RunBuffer
from trainscope.probe.clock import StepClock, pick_sentinel
from trainscope.probe.criterion import CriterionWatch
from trainscope.probe.guard import HookGuard
from trainscope.probe.loop_facts import LoopFacts
from trainscope.probe.params import ParamStats, layers_with_params
from trainscope.probe.trace import ForwardTrace
from trainscope.probe.util import dist_rank_world, first_tensor, jsonable, unwrap
from trainscope.store.writer import RunWriter, default_run_dir, new_meta


class Probe:
    """Records a training run; `trainscope.watch(model, run_dir, **options)` makes one (options there)."""

    def __init__(
        self,
        model: nn.Module,
        run_dir: str | os.PathLike[str] | None = None,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        criterion: Callable[..., Tensor] | None = None,
        scheduler: Any = None,
        every: int = 100,
        activations: bool = True,
        grad_norm_every: int = 10,
        flush_seconds: float = 10.0,
        flush_rows: int = 50_000,
        name: str | None = None,
        config: dict[str, Any] | None = None,
        resume: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"trainscope.watch needs an nn.Module, got {type(model).__name__}")
        self.wrapped = model
        self.model, self.compiled = unwrap(model)
        self.optimizer = optimizer
        self.criterion = criterion
        self.scheduler = scheduler
        self.every = max(1, int(every))
        self.record_activations = activations and not self.compiled
        self.rank, self.world_size = dist_rank_world()
        if run_dir is None:
            run_dir = default_run_dir(type(self.model).__name__)  # always inside ./runs
        self.run_dir = Path(run_dir)
        self.writer = RunWriter(self.run_dir, rank=self.rank, resume=resume)
        self._closed = False
        self._handles: list[Any] = []
        self._post_handle: Any = None  # the model's forward hook, registered only for forwards that need it

        self.guard = HookGuard(on_error=self._on_hook_error)
        self.buffer = RunBuffer(self.writer, self.guard, flush_seconds=flush_seconds, flush_rows=flush_rows,
                                t0=time.monotonic())
        layers = layers_with_params(self.model)
        self.clock = StepClock(self.guard, every=self.every, optimizer=optimizer,
                               sentinel=pick_sentinel([p for _, _, _, ps in layers for p in ps]))
        self.clock.now = self.buffer.now
        self.clock.step = self.clock.fwd_step = self.writer.start_step  # resume=True: continue the steps
        self.params = ParamStats(layers, self.buffer, self.clock, grad_norm_every=max(1, int(grad_norm_every)),
                                 has_optimizer=optimizer is not None)
        self.loop = LoopFacts(self.buffer, self.clock, optimizer=optimizer, scheduler=scheduler)
        self.clock.collectors = [self.params, self.loop]
        self.clock.after_step = self._after_step
        # the init table goes through the buffer too: written at a flush, retried if the write fails
        self.trace = ForwardTrace(self.model, self.buffer, self.buffer, compiled=self.compiled)
        self.activations = ActivationHooks(self.model, {n for n, _, _, _ in layers}, self.buffer, self.guard,
                                           self.trace.note)
        self.criterion_watch = CriterionWatch(criterion, self.buffer, self.clock, self.guard)
        self.buffer.meta_fn = self._write_meta

        self._meta = new_meta(
            name=name or self.run_dir.name,
            rank=self.rank,
            world_size=self.world_size,
            trainscope_version=meta_mod.version(),
            torch_version=torch.__version__,
            python_version=platform.python_version(),
            every=self.every,
            compiled=self.compiled,
            config=jsonable(config or {}),
        )
        self._install()
        self._write_meta()
        self.buffer.event(self.clock.step, "run", "", float("nan"),
                          {"what": "resume" if self.writer.resumed else "start", "attempt": self.writer.attempt})
        _LIVE.add(self)

    # ------------------------------------------------------------------ public API
    def log(self, step: int | None = None, epoch: float | int | None = None, **metrics: Any) -> None:
        """Log metrics (floats or 0-d tensors; tensors are not synced until the next flush)."""
        if self._closed:
            return
        try:
            s = self.clock.fwd_step if step is None else int(step)
            if epoch is not None:
                e = float(epoch)
                if not (e == self.clock.epoch):
                    self.buffer.event(s, "epoch", "", e, {})
                    self.clock.epoch = e
            # Detach now (a kept loss would keep its whole autograd graph alive); convert at flush.
            values = {k: (v.detach() if isinstance(v, Tensor) else v) for k, v in metrics.items()}
            self.buffer.log(s, self.clock.epoch, values)
        except Exception as e:  # never break the training loop over a bad metric
            self.guard.failed("log", e)

    def flush(self) -> None:
        """Write everything buffered so far (atomic chunks)."""
        try:
            self.buffer.flush()
        except Exception as e:
            self.guard.failed("flush", e)

    def close(self, status: str = "finished") -> None:
        """Remove every hook, write what is buffered and mark the run finished. Idempotent."""
        if self._closed:
            return
        self._closed = self.guard.closed = True
        handles = (self._handles + self.clock.handles + self.criterion_watch.handles + self.activations.handles
                   + ([self._post_handle] if self._post_handle else []))
        for h in handles:
            try:
                h.remove()
            except Exception:
                pass
        self._handles, self.clock.handles, self.criterion_watch.handles, self.activations.handles = [], [], [], []
        self.trace.exit_fn_mode()
        self.buffer.event(self.clock.fwd_step, "run", "", float("nan"), {"what": "close", "status": status})
        try:
            self.trace.write_init_table()  # a run whose model never ran forward still gets its init table
            self.buffer.flush(final_status=status)
        except Exception as e:  # pragma: no cover - disk full and the like
            warnings.warn(f"trainscope: could not write the run store: {e}", stacklevel=2)
        _LIVE.discard(self)

    def __enter__(self) -> "Probe":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("finished" if exc_type is None else "crashed")

    # ------------------------------------------------------------------ installation
    def _install(self) -> None:
        # A compiled model's own hooks would be traced into its graph: hook the wrapper instead.
        self._top = self.wrapped if self.compiled else self.model
        self._handles.append(self._top.register_forward_pre_hook(
            self.guard.wrap("model_forward_pre", self._on_forward_pre)))
        self.clock.install()
        self.criterion_watch.install()

    def _on_hook_error(self, name: str, e: BaseException) -> None:
        self.buffer.event(self.clock.fwd_step, "hook_error", "", float("nan"),
                          {"hook": name, "error": f"{type(e).__name__}: {e}"})

    def _after_step(self) -> None:
        if self.buffer.due():
            self.buffer.flush()

    # ------------------------------------------------------------------ the watched model's forward
    def _on_forward_pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if not torch.is_grad_enabled():
            return  # validation / inference forwards are not training steps
        clock = self.clock
        clock.fwd_step = step = clock.step
        x = first_tensor(args)
        self.loop.on_forward(module, x)
        first = not self.trace.done
        if first:
            self.trace.begin(step, x)
        if self.record_activations and self.activations.armed_step != step and clock.recorded(step):
            self.activations.arm(step, trace=first)
            self._arm_post_hook()
        elif first:
            if not self.compiled:
                self.activations.arm(step, trace=True, stats=False)
            self._arm_post_hook()

    def _arm_post_hook(self) -> None:
        if self._post_handle is None:
            self._post_handle = self._top.register_forward_hook(self.guard.wrap("model_forward", self._on_forward),
                                                                always_call=True)

    def _on_forward(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not torch.is_grad_enabled():
            return
        self.activations.disarm()
        if self._post_handle is not None:
            self._post_handle.remove()
            self._post_handle = None
        if not self.trace.done:
            self.trace.end(self.clock.step, output)

    # ------------------------------------------------------------------ meta.json
    def _write_meta(self, status: str | None = None) -> None:
        meta = self._meta
        meta.update(
            steps=self.clock.step,
            last_flush=time.time(),
            model=meta_mod.model_summary(self.model, self.trace.order),
            optimizer=meta_mod.optimizer_summary(self.optimizer),
            scheduler=meta_mod.scheduler_summary(self.scheduler),
            criterion=meta_mod.criterion_summary(self.criterion),
            num_classes=self.criterion_watch.num_classes,
            bytes_written=self.writer.bytes_written,
            disabled_hooks=sorted(self.guard.disabled),
        )
        if status is not None:
            meta["status"] = status
            meta["ended"] = time.time()
        self.writer.write_meta(meta)


_LIVE: "weakref.WeakSet[Probe]" = weakref.WeakSet()


@atexit.register
def _close_live_probes() -> None:
    # A script that never called close(): keep the data, and say the run did not end cleanly.
    for probe in list(_LIVE):
        try:
            probe.close(status="incomplete")
        except Exception:
            pass


def watch(model: nn.Module, run_dir: str | os.PathLike[str] | None = None, **options: Any) -> Probe:
    """Attach the probe to `model` and record into `run_dir`; returns the `Probe`.

    Options (keyword-only, see `Probe`):
    optimizer: hooked to count steps and read lr/momentum; without it a step is a backward pass.
    criterion: an nn.Module loss; its inputs tell whether logits or probabilities reach it.
    scheduler: read (never stepped) to check its cadence against optimizer steps and epochs.
    every: per-layer statistics every `every` optimizer steps (plus steps 0, 1, 2, 4, 8, ...), default 100.
    activations: record per-module activation statistics on recorded steps (default True).
    grad_norm_every: the global gradient norm at each of the first 200 steps, then every this many
        steps (default 10) and on recorded steps.
    flush_seconds, flush_rows: how often buffered rows are written (default 10 s / 50 000 rows).
    resume: continue the run already in `run_dir` (same attempt, steps go on from the last recorded
        step) instead of starting a new attempt next to it (docs/run-store.md).
    name, config: the run's name and any JSON-able dict to keep in meta.json.
    """
    return Probe(model, run_dir, **options)
