"""`trainscope.watch`: the probe that records a training run into a run store.

`Probe` composes small collectors, each in its own module:
  guard.HookGuard        every hook body runs guarded; a failure disables that hook, never the training
  clock.StepClock        optimizer step hooks / backward end, the recording schedule
  trace.ForwardTrace     the first forward: order, nonlinearities, init table, input/output facts
  activations.ActivationHooks  per-module output statistics, armed for one forward
  params.ParamStats      global grad norm, per-layer grad/weight/update statistics
  anomaly.AnomalyCapture records the steps where the loss or the gradient norm jumps
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
import multiprocessing
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
from trainscope.probe.anomaly import AnomalyCapture
from trainscope.probe.buffer import RunBuffer
from trainscope.probe.clock import StepClock, pick_sentinel
from trainscope.probe.criterion import LOSS_FUNCTIONS, CriterionWatch
from trainscope.probe.guard import HookGuard
from trainscope.probe.live import LiveFindings, is_finding
from trainscope.probe.loop_facts import LoopFacts
from trainscope.probe.model_loss import ModelLoss
from trainscope.probe.params import ParamStats, layers_with_params
from trainscope.probe.timing import Timing
from trainscope.probe.trace import ForwardTrace
from trainscope.probe.tracking import Tracking
from trainscope.probe.util import default_run_dir, dist_rank_world, first_input, first_tensor, jsonable, rank_known
from trainscope.probe.util import module_type, unwrap, unwrap_optimizer
from trainscope.probe.wiring import ForeignWeights, ParameterStatus
from trainscope.store.writer import RunWriter, new_meta


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
        grad_norm_every: int | None = None,
        flush_seconds: float = 10.0,
        flush_rows: int = 50_000,
        name: str | None = None,
        config: dict[str, Any] | None = None,
        resume: bool = False,
        on_finding: str = "warn",
        notes: str | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"trainscope.watch needs an nn.Module, got {type(model).__name__}")
        if on_finding not in ("warn", "raise", "ignore"):
            raise ValueError(f"on_finding must be 'warn', 'raise' or 'ignore', not {on_finding!r}")
        self.wrapped = model
        self.model, self.compiled = unwrap(model)
        optimizer = unwrap_optimizer(optimizer)  # accelerate's AcceleratedOptimizer, Lightning's wrapper
        self.optimizer = optimizer
        self.criterion = criterion
        self.scheduler = scheduler
        self.every = max(1, int(every))
        self.record_activations = activations and not self.compiled
        self.rank, self.world_size = dist_rank_world()
        # A spawned process that calls watch() before init_process_group (mp.spawn, RANK unset) learns its
        # rank later: its writer (which locks the rank's files) is created at first use.
        self._rank_known = rank_known() or multiprocessing.parent_process() is None
        if run_dir is None:
            run_dir = default_run_dir(module_type(self.model))  # always inside ./runs
        self.run_dir = Path(run_dir)
        self.writer: Any = (RunWriter(self.run_dir, rank=self.rank, resume=resume) if self._rank_known
                            else DeferredWriter(resume))
        self._closed = False
        self._handles: list[Any] = []
        self._post_handle: Any = None  # the model's forward hook, registered only for forwards that need it
        self._watch_output = False  # this forward's output gets a reached-flag (LoopFacts.watch_output)

        self.guard = HookGuard(on_error=self._on_hook_error)
        self.buffer = RunBuffer(self.writer, self.guard, flush_seconds=flush_seconds, flush_rows=flush_rows,
                                t0=time.monotonic())
        layers = layers_with_params(self.model)
        self.clock = StepClock(self.guard, every=self.every, optimizer=optimizer,
                               sentinel=pick_sentinel([p for _, _, _, ps in layers for p in ps], optimizer))
        self.clock.now = self.buffer.now
        self.clock.sentinel_owner = next((m for _, m, _, ps in layers if any(p is self.clock.sentinel for p in ps)),
                                         None)
        self.clock.step = self.clock.fwd_step = self.writer.start_step  # resume=True: continue the steps
        if grad_norm_every is None:
            grad_norm_every = default_grad_norm_every(self.model)
        self.params = ParamStats(layers, self.buffer, self.clock, grad_norm_every=max(1, int(grad_norm_every)),
                                 has_optimizer=optimizer is not None, world_size=self.world_size)
        self.anomaly = AnomalyCapture(self.buffer, self.clock)  # loss / grad-norm jumps: record those steps
        self.params.anomaly = self.anomaly
        self.loop = LoopFacts(self.buffer, self.clock, optimizer=optimizer, scheduler=scheduler, model=self.model)
        self.timing = Timing(self.buffer, self.clock, self.model)  # where the step's time goes
        self.criterion_watch = CriterionWatch(criterion, self.buffer, self.clock, self.guard, compiled=self.compiled)
        self.status = ParameterStatus(self.model, self.buffer, self.clock, optimizer)
        self.foreign = ForeignWeights(self.model, self.buffer)
        self.clock.collectors = [self.timing, self.params, self.loop, self.criterion_watch, self.status]
        self.clock.norm_due = self.params.norm_due
        self.clock.buffer = self.buffer
        self.clock.after_step = self._after_step
        # the init table goes through the buffer too: written at a flush, retried if the write fails
        self.trace = ForwardTrace(self.model, self.buffer, self.buffer, compiled=self.compiled,
                                  on_call=self.guard.wrap("first_forward", self._first_forward_call))
        self.activations = ActivationHooks(self.model, {n for n, _, _, _ in layers}, self.buffer, self.guard,
                                           self.trace.note)
        if self.compiled:
            # No hooks inside a compiled graph, so no traced forward: the layer order (and the activation
            # that follows each weight, for the init table) come from the uncompiled module tree instead,
            # in definition order. Functional activations (F.relu in forward) are not seen this way.
            weights = {n for n, _, _, _ in layers}
            for n, m in self.model.named_modules():
                if n and not any(True for _ in m.children()):
                    self.trace.note("weight" if n in weights else "module", n, module_type(m))
        self.buffer.meta_fn = self._write_meta
        self.tracking = Tracking(notes, self.world_size, self.rank, self.model)  # git, data, env, seeds
        self.tracking.install(criterion)

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
        if self.params.sharding is not None:  # FSDP2: the rows are per shard; load_run merges them
            self._meta["sharding"] = self.params.sharding
        self.live = LiveFindings(self.buffer, self.clock, on_finding=on_finding, stop=self._stop, loop=self.loop,
                                 run_dir=str(self.run_dir))
        self.loss_fallback = ModelLoss(self.buffer, self.clock)
        self._settled = False  # see _quiet_ok
        self.clock.quiet_ok = self._quiet_ok
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
            # Checked and detached now (a kept loss would keep its whole autograd graph alive); converted
            # at flush.
            values = self.buffer.log(s, self.clock.epoch, metrics)
            if not values:
                return
            if not self.loss_fallback.user_logs_loss and any("loss" in k.lower() for k in values):
                self.loss_fallback.stop()  # the user logs a loss: the model's own outputs.loss is not needed
            if self.live.reads_loss(s):
                self.live.on_logged(s, values)
            self.anomaly.on_logged(s, values)
        except Exception as e:  # never break the training loop over a bad metric
            if is_finding(e):
                raise
            self.guard.failed("log", e)

    def step(self) -> None:
        """Mark the end of a training step when no optimizer was given to `watch` (e.g. gradient
        accumulation, or a hand-written update): call it once per step, after the step's last backward
        (before or after the update: the statistics are those read at the end of that backward). From
        the first call on, only these calls end steps. With an optimizer, its own step hooks count the
        steps and this does nothing. (Without either, a step ends when an update of the parameters is
        seen, so accumulation is recognised even then.)"""
        if self._closed:
            return
        try:
            self.clock.mark_step()
        except Exception as e:
            if is_finding(e):
                raise
            self.guard.failed("step", e)

    def flush(self) -> None:
        """Write everything buffered so far (atomic chunks)."""
        try:
            self._resolve_rank(final=True)
            self.buffer.flush()
        except Exception as e:
            self.guard.failed("flush", e)

    def close(self, status: str = "finished") -> None:
        """Remove every hook, write what is buffered and mark the run finished. Idempotent."""
        if self._closed:
            return
        try:
            self.clock.finish()
        except Exception as e:
            self.guard.failed("step_end", e)
        if self._closed:  # a live finding (on_finding="raise") closed the run meanwhile
            return
        try:
            self.loop.check_unbacked(self.clock.step)  # a final validation pass: no backward will come
        except Exception as e:
            self.guard.failed("loop_facts", e)
        self.loss_fallback.commit()
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
        self.tracking.close()
        self.timing.close()
        self.params.close()
        self.criterion_watch.close()
        try:
            self.status.write(max(self.clock.step - 1, 0), at_close=True)  # the last step that ran
        except Exception as e:
            self.guard.failed("parameter_status", e)
        self.buffer.event(self.clock.fwd_step, "run", "", float("nan"), {"what": "close", "status": status})
        try:
            self._resolve_rank(final=True)
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
            self.guard.wrap("model_forward_pre", self._on_forward_pre), with_kwargs=True))
        try:
            self.clock.install()
        except Exception as e:  # e.g. an optimizer wrapper without the step hooks
            self.guard.failed("optimizer", RuntimeError(
                f"cannot hook {type(self.optimizer).__name__}.step ({type(e).__name__}: {e}); "
                "counting backward passes as steps instead"))
            self.clock.drop_optimizer()
            self.optimizer = self.loop.optimizer = self.status.optimizer = None
            self.params.has_optimizer = False
        self.params.install()
        self.criterion_watch.install()
        self._handles.append(self._top.register_forward_hook(
            self.guard.wrap("model_loss", self.loss_fallback.on_output)))
        self.loss_fallback.handle = self._handles[-1]

    def _on_hook_error(self, name: str, e: BaseException) -> None:
        self.buffer.event(self.clock.fwd_step, "hook_error", "", float("nan"),
                          {"hook": name, "error": f"{type(e).__name__}: {e}"})

    def _after_step(self) -> None:
        if self.anomaly.waiting:  # device values waiting for their copy
            self.anomaly.poll()
        if not self.clock.ended_quiet or self.live.waiting:
            self.live.after_step()  # a quiet step adds no event, scalar or flush for it to look at
        if self.buffer.due():  # live findings never ask for a flush (live.py)
            self._resolve_rank(final=True)
            self.buffer.flush(background=True)  # the training thread only hands over host rows
            self.timing.restart_wait()  # the probe's own flush is not the loop waiting for data

    def _resolve_rank(self, final: bool = False) -> None:
        """watch() ran before init_process_group in a spawned process: take the rank once torch.distributed
        knows it (or, at the first flush, the RANK variable / 0) and create the writer for it."""
        if self._rank_known or not (final or rank_known()):
            return
        self._rank_known = True
        self.rank, self.world_size = dist_rank_world()
        self._meta.update(rank=self.rank, world_size=self.world_size)
        self.writer.create(RunWriter(self.run_dir, rank=self.rank, resume=self.writer.resume))
        self._write_meta()

    def _stop(self, finding: Any) -> None:
        """on_finding="raise": keep what was recorded, then let the exception stop the run."""
        self.close(status="stopped")

    # ------------------------------------------------------------------ the watched model's forward
    def _quiet_ok(self) -> bool:
        """What a quiet step (clock.py) needs outside the clock: the first forward traced, the rank and the
        data fingerprint known (once true, true for good), no loss hook left armed."""
        if not self._settled:
            self._settled = self.trace.done and self._rank_known and self.tracking.done
        return self._settled and self.criterion_watch.idle()

    def _on_forward_pre(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        clock = self.clock
        if clock.quiet and torch.is_grad_enabled():  # a quiet step: only what every forward must see
            clock.fwd_step = clock.step
            loop = self.loop
            loop.on_forward_quiet(module)
            if not loop.unbacked_reported and loop.watch_output():
                self._watch_output = True
                self._arm_post_hook()
            return
        if not torch.is_grad_enabled():
            self.loop.on_eval_forward(module)  # validation / inference forwards are not training steps
            self.criterion_watch.on_eval_forward()
            return
        clock.on_forward()
        clock.fwd_step = step = clock.step
        self.timing.on_forward(args or tuple(kwargs.values()))
        if not self._rank_known:
            self._resolve_rank()
        x = first_tensor(args)
        if x is None and kwargs:  # model(**batch): input_ids / pixel_values / x / ...
            x = first_input(kwargs)
        if not self.tracking.done:
            self.tracking.on_batch((args, kwargs) if kwargs else args)
        self.loop.on_forward(module, x)
        if self.loop.watch_output():
            self._watch_output = True
            self._arm_post_hook()
        self.criterion_watch.on_forward_begin(step)
        first = not self.trace.done
        if first:
            self.trace.begin(step, x)
            self._check_sharded_later()
        if self.record_activations and self.activations.armed_step != step and clock.recorded(step):
            self.activations.arm(step, trace=first)
            self._arm_post_hook()
        elif first:
            if not self.compiled:
                self.activations.arm(step, trace=True, stats=False)
            self._arm_post_hook()
        elif self.criterion_watch.wants_window(step):
            self._arm_post_hook()

    def _check_sharded_later(self) -> None:
        """watch() before fully_shard: FSDP2 replaced the parameters the probe hooked by DTensors, so no
        gradient statistic would ever be recorded. Say so (a hook_error: the probe-degraded finding). The
        parameters themselves are unsharded during the forward; the modules' FSDP classes tell."""
        if self.params.sharding is None and any(module_type(m) != type(m).__name__ for m in self.model.modules()):
            self.guard.failed("parameters", RuntimeError(
                "the model's parameters were replaced after watch() (fully_shard / FSDP2 ran later): gradient "
                "and weight statistics are not recorded; call trainscope.watch() after fully_shard"))

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
            self.foreign.write(self.clock.step)
        if self._watch_output:
            self._watch_output = False
            out = first_tensor(output)
            if isinstance(out, torch.Tensor) and out.requires_grad:
                self.loop.on_output(out)
        self.criterion_watch.open_window(self.clock.step)

    def _first_forward_call(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        """Every torch call of the first training forward (through the trace's function mode)."""
        name = getattr(func, "__name__", "")
        if name in LOSS_FUNCTIONS:  # a model that computes its own loss (Hugging Face: outputs.loss)
            self.criterion_watch.functional_called(name, args, kwargs, out)
        self.foreign.on_call(func, args, kwargs)

    # ------------------------------------------------------------------ meta.json
    def _write_meta(self, status: str | None = None, force: bool = True) -> None:
        """meta.json; at the regular (background) flushes `force` is False: written only if it changed."""
        if not self._rank_known:
            return  # written once the rank (and so the file name) is known
        meta = self._meta
        meta.update(
            steps=self.clock.step,
            last_flush=time.time(),
            model=meta_mod.model_summary(self.model, self.trace.order),
            optimizer=meta_mod.optimizer_summary(self.optimizer),
            scheduler=meta_mod.scheduler_summary(self.scheduler),
            criterion=meta_mod.criterion_summary(self.criterion, self.criterion_watch.described),
            num_classes=self.criterion_watch.num_classes,
            bytes_written=self.writer.bytes_written,
            disabled_hooks=sorted(self.guard.disabled),
            tracking=self.tracking.summary(),
            notes=self.tracking.notes,
        )
        if status is not None:
            meta["status"] = status
            meta["ended"] = time.time()
        self.writer.write_meta(meta, force=force)


# On an accelerator the per-tensor norms are one fused kernel and a stack per step (no host sync): about
# free. On CPU they are the arithmetic itself, a pass over every gradient: +3.5% on the benchmark MLP's
# 1.7 ms step at every step (benchmarks/probe_overhead.py), so there every 10th step by default.
GRAD_NORM_EVERY_ACCELERATOR = 1
GRAD_NORM_EVERY_CPU = 10


def default_grad_norm_every(model: nn.Module) -> int:
    """`grad_norm_every`'s default for this model: 1 if its parameters are on an accelerator, else 10."""
    p = next(model.parameters(), None)
    on_cpu = p is None or p.device.type in ("cpu", "meta")
    return GRAD_NORM_EVERY_CPU if on_cpu else GRAD_NORM_EVERY_ACCELERATOR


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
    grad_norm_every: the global gradient norm and each layer's gradient norm at each of the first 200
        steps, then every this many steps and on recorded steps. Default: 1 (every step) when the model's
        parameters are on an accelerator, 10 on CPU (there the norms' own arithmetic is a few percent of
        a small model's step; `default_grad_norm_every`).
    flush_seconds, flush_rows: how often buffered rows are written (default 10 s / 50 000 rows).
    resume: continue the run already in `run_dir` (same attempt, steps go on from the last recorded
        step) instead of starting a new attempt next to it (docs/run-store.md).
    name, config: the run's name and any JSON-able dict to keep in meta.json.
    notes: a free-text note kept in meta.json (`notes`), shown by `trainscope compare`.
    meta.json also records `tracking`: the script's git commit and dirty flag, a fingerprint of the first
    training batches, the environment and the seeds (trainscope/probe/tracking.py).
    on_finding: what a live finding (a loop bug seen in the first steps, NaN/Inf, divergence) does:
        "warn" (default) prints one line to stderr per rule, "raise" stops the run with
        `trainscope.TrainscopeFinding`, "ignore" stays silent; everything is recorded either way.

    Attaching never stops the training: if the probe cannot be built (a bad option, an object it
    cannot hook), one RuntimeWarning says why and a disabled probe with the same methods is returned;
    it still writes meta.json (status "disabled", the error) when `run_dir` can be written.
    """
    try:
        return Probe(model, run_dir, **options)
    except Exception as e:
        warnings.warn(f"trainscope: watch() could not attach ({type(e).__name__}: {e}); this run is not "
                      "recorded, training continues unchanged", RuntimeWarning, stacklevel=2)
        return DisabledProbe(model, run_dir, e)  # type: ignore[return-value]


class DeferredWriter:
    """Stands in for the RunWriter until the rank is known; the collectors keep this object."""

    bytes_written = 0
    start_step = 0
    resumed = False
    attempt = 0

    def __init__(self, resume: bool = False) -> None:
        self.resume = resume
        self._real: Any = None
        self._early: list[tuple[str, Any]] = []  # tables appended before the rank was known

    def create(self, writer: RunWriter) -> None:
        self._real = writer
        early, self._early = self._early, []
        for table, columns in early:
            writer.append(table, columns)

    def append(self, table: str, columns: Any) -> None:
        if self._real is None:
            self._early.append((table, columns))
        else:
            self._real.append(table, columns)

    def __getattr__(self, name: str) -> Any:
        real = self.__dict__.get("_real")
        if real is None:
            raise AttributeError(f"the run writer is not created yet ({name})")
        return getattr(real, name)


class DisabledProbe:
    """What watch() returns when it could not attach: the Probe's methods, doing nothing."""

    def __init__(self, model: Any, run_dir: Any, error: BaseException) -> None:
        self.error = error
        self.run_dir = Path(run_dir) if run_dir is not None else None
        try:  # never over another run's metadata (e.g. a live run this second watch() collided with)
            if self.run_dir is not None and not (self.run_dir / "meta.json").exists():
                meta = new_meta(name=self.run_dir.name, rank=0, world_size=1, trainscope_version=meta_mod.version(),
                                torch_version=torch.__version__, python_version=platform.python_version())
                meta.update(status="disabled", error=f"{type(error).__name__}: {error}",
                            model={"class": type(model).__name__, "modules": []}, steps=0)
                RunWriter(self.run_dir).write_meta(meta)
        except Exception:
            pass

    def log(self, *args: Any, **kwargs: Any) -> None:
        pass

    def step(self) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self, status: str = "finished") -> None:
        pass

    def __enter__(self) -> "DisabledProbe":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass
