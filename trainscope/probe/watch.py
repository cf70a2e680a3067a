"""`trainscope.watch`: the probe that records a training run into a run store.

Cost model: every optimizer step records a few cheap scalars (loss, lr, global grad norm, loop
facts) as device tensors or Python numbers; every `every`-th step (and a few early steps) it also
records per-layer gradient, weight, update and activation statistics. All device values are
stacked and copied to the host once per flush, never with a per-layer `.item()`. Activation
hooks exist only during the forward pass of a recorded step, so unrecorded steps run the
module fast path. Every hook is guarded: an exception disables that hook, once, with a warning
and an event, and training goes on unchanged.
"""
from __future__ import annotations

import atexit
import json
import math
import os
import platform
import time
import warnings
import weakref
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from trainscope.probe import init_table as init_mod
from trainscope.probe import stats as st
from trainscope.store import schema
from trainscope.store.writer import RunWriter, new_meta

DENSE_GRAD_NORM_STEPS = 200  # the global grad norm is recorded at every one of the first steps

_OPTIMIZER_HPARAMS = ("lr", "weight_decay", "momentum", "nesterov", "betas", "eps", "dampening", "amsgrad",
                      "alpha", "centered", "maximize", "foreach", "fused")


def _jsonable(v: Any) -> Any:
    if isinstance(v, (bool, int, str)) or v is None:
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, Tensor):
        return _jsonable(v.item()) if v.numel() == 1 else f"tensor{tuple(v.shape)}"
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return repr(v)


def _first_tensor(x: Any) -> Tensor | None:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (list, tuple)):
        for y in x:
            t = _first_tensor(y)
            if t is not None:
                return t
    if isinstance(x, dict):
        for key in ("logits", "out", "output"):
            if isinstance(x.get(key), Tensor):
                return x[key]
        for y in x.values():
            t = _first_tensor(y)
            if t is not None:
                return t
    return None


def _unwrap(model: nn.Module) -> tuple[nn.Module, bool]:
    """The module whose submodules we hook: inside DDP/DataParallel and torch.compile wrappers."""
    compiled = False
    for _ in range(4):
        if hasattr(model, "_orig_mod"):
            model, compiled = model._orig_mod, True
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            break
    return model, compiled


def _dist_rank_world() -> tuple[int, int]:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except Exception:  # pragma: no cover - exotic builds
        pass
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class _ActivationTrace(TorchFunctionMode):
    """During the first forward only: note functional activations (F.relu, torch.tanh, ...)."""

    def __init__(self, trace: list[tuple[str, str, str]]) -> None:
        super().__init__()
        self.trace = trace

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        name = getattr(func, "__name__", "")
        if name in init_mod.FUNCTIONAL_ACTIVATIONS:
            self.trace.append(("fn", name, name))
        return func(*args, **(kwargs or {}))


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
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"trainscope.watch needs an nn.Module, got {type(model).__name__}")
        self.wrapped = model
        self.model, self.compiled = _unwrap(model)
        self.optimizer = optimizer
        self.criterion = criterion
        self.scheduler = scheduler
        self.every = max(1, int(every))
        self.record_activations = activations and not self.compiled
        self.grad_norm_every = max(1, int(grad_norm_every))
        self.flush_seconds = flush_seconds
        self.flush_rows = flush_rows
        self.rank, self.world_size = _dist_rank_world()
        if run_dir is None:
            run_dir = Path("runs") / f"{type(self.model).__name__}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.run_dir = Path(run_dir)
        self.writer = RunWriter(self.run_dir, rank=self.rank)
        self.step = 0  # optimizer steps completed
        self._fwd_step = 0  # step of the latest training (grad-enabled) forward
        self._epoch = float("nan")
        self._t0 = time.monotonic()
        self._last_flush = self._t0
        self._closed = False
        self._disabled: set[str] = set()
        self._handles: list[Any] = []
        self._act_handles: list[Any] = []
        # Buffers, converted to host values at flush.
        self._scalars: list[tuple[int, str, Any, float, float]] = []
        self._logged: list[tuple[int, float, float, dict[str, Any]]] = []  # probe.log calls
        self._loop: list[tuple] = []  # one tuple of loop facts per optimizer step (see _step_begin)
        # (step, layer, kind, module type, raw device vector, element counts); see stats.py
        self._layers: list[tuple[int, str, str, str, Tensor, Any]] = []
        self._events: list[tuple[int, str, str, float, dict[str, Any]]] = []
        self._pending_rows = 0
        # Loop facts.
        self._last_mode: bool | None = None
        self._batch_size: int | None = None
        self._backwards = 0
        self._check_reset = False
        self._grad_reset: Any = None
        self._act_done_step = -1
        self._snapshots: dict[str, list[Tensor]] = {}
        self._force_record = False
        self._seen_nonfinite: set[str] = set()
        self._bn_min_batch: dict[str, int] = {}
        # First forward: execution order and the nonlinearity after each weight.
        self._trace: list[tuple[str, str, str]] = []
        self._order: dict[str, int] = {}
        self._first_forward_done = False
        self._fn_mode: _ActivationTrace | None = None
        self._init_snaps = init_mod.snapshot_weights(self.model)
        self._init_written = False
        self._num_classes: int | None = None
        self._user_config = config or {}
        self._name = name or self.run_dir.name

        self._layers_with_params = [
            (n, m, type(m).__name__, [p for p in m.parameters(recurse=False) if p.requires_grad])
            for n, m in self.model.named_modules()
            if any(p.requires_grad for p in m.parameters(recurse=False))
        ]
        self._leaves = [(n, m, type(m).__name__) for n, m in self.model.named_modules()
                        if n and not any(True for _ in m.children())]
        self._weight_leaves = {n for n, _, _, ps in self._layers_with_params}

        self._meta = new_meta(
            name=self._name,
            rank=self.rank,
            world_size=self.world_size,
            trainscope_version=_version(),
            torch_version=torch.__version__,
            python_version=platform.python_version(),
            every=self.every,
            compiled=self.compiled,
            config=_jsonable(self._user_config),
        )
        self._install()
        self._write_meta()
        self._event(0, "run", "", float("nan"), {"what": "start"})
        _LIVE.add(self)

    # ------------------------------------------------------------------ public API
    def log(self, step: int | None = None, epoch: float | int | None = None, **metrics: Any) -> None:
        """Log metrics (floats or 0-d tensors; tensors are not synced until the next flush)."""
        if self._closed:
            return
        try:
            s = self._fwd_step if step is None else int(step)
            if epoch is not None:
                e = float(epoch)
                if not (e == self._epoch):
                    self._event(s, "epoch", "", e, {})
                    self._epoch = e
            # Detach now (a kept loss would keep its whole autograd graph alive); convert at flush.
            values = {k: (v.detach() if isinstance(v, Tensor) else v) for k, v in metrics.items()}
            self._logged.append((s, self._epoch, time.monotonic() - self._t0, values))
            self._pending_rows += len(values)
        except Exception as e:  # never break the training loop over a bad metric
            self._hook_failed("log", e)

    def flush(self) -> None:
        """Write everything buffered so far (atomic chunks)."""
        try:
            self._flush()
        except Exception as e:
            self._hook_failed("flush", e)

    def close(self, status: str = "finished") -> None:
        """Remove every hook, write what is buffered and mark the run finished. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for h in self._handles + self._act_handles + ([self._post_handle] if self._post_handle else []):
            try:
                h.remove()
            except Exception:
                pass
        self._handles, self._act_handles = [], []
        self._exit_fn_mode()
        self._event(self._fwd_step, "run", "", float("nan"), {"what": "close", "status": status})
        try:
            self._flush(final_status=status)
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
        m = self.wrapped if self.compiled else self.model
        self._handles.append(m.register_forward_pre_hook(self._guard("model_forward_pre", self._on_forward_pre)))
        self._top = m
        self._post_handle: Any = None  # registered only for forwards that need it (_arm_post_hook)
        if self.optimizer is not None:
            self._handles.append(self.optimizer.register_step_pre_hook(self._guard("step_pre", self._on_step_pre)))
            self._handles.append(self.optimizer.register_step_post_hook(self._guard("step_post", self._on_step_post)))
        sentinel = self._pick_sentinel()
        if sentinel is not None:
            self._sentinel = sentinel
            self._handles.append(sentinel.register_hook(self._guard("grad_sentinel", self._on_sentinel_grad)))
        if isinstance(self.criterion, nn.Module):
            self._criterion_handle = self.criterion.register_forward_hook(self._guard("criterion", self._on_criterion))
            self._handles.append(self._criterion_handle)

    def _pick_sentinel(self) -> Tensor | None:
        """The smallest trainable parameter (a bias or norm weight, later layers first): its hook tells
        when a backward reaches the parameters and whether .grad was reset since the last optimizer step,
        at the cost of one reduction over a few hundred numbers per step."""
        params = [p for _, _, _, ps in self._layers_with_params for p in ps]
        if not params:
            return None
        return min(reversed(params), key=lambda p: p.numel())

    def _guard(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        probe_ref = weakref.ref(self)

        def guarded(*args: Any, **kwargs: Any) -> None:
            probe = probe_ref()
            if probe is None or name in probe._disabled or probe._closed:
                return None
            try:
                fn(*args, **kwargs)
            except Exception as e:
                probe._hook_failed(name, e)
            return None

        return guarded

    def _hook_failed(self, name: str, e: BaseException) -> None:
        if name in self._disabled:
            return
        self._disabled.add(name)
        warnings.warn(f"trainscope: the {name!r} hook failed and is now disabled ({type(e).__name__}: {e}); "
                      "training continues unchanged", RuntimeWarning, stacklevel=3)
        self._event(self._fwd_step, "hook_error", "", float("nan"), {"hook": name, "error": f"{type(e).__name__}: {e}"})

    # ------------------------------------------------------------------ forward side
    def _recorded(self, s: int) -> bool:
        if s < 3 or s % self.every == 0:
            return True
        return s < self.every and (s & (s - 1)) == 0  # 4, 8, 16, ... early on

    def _on_forward_pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if not torch.is_grad_enabled():
            return  # validation / inference forwards are not training steps
        self._fwd_step = self.step
        mode = bool(module.training)
        if self._last_mode is not None and mode != self._last_mode:
            self._event(self.step, "mode", "", 1.0 if mode else 0.0, {"training": mode})
        self._last_mode = mode
        x = _first_tensor(args)
        if x is not None and x.dim() > 0:
            self._batch_size = int(x.shape[0])
        if not self._first_forward_done:
            if x is not None and x.is_floating_point():
                self._input_scale_event(x)
            if not self.compiled:
                self._fn_mode = _ActivationTrace(self._trace)
                self._fn_mode.__enter__()
        if self.record_activations and self._act_done_step != self.step and self._recorded(self.step):
            self._arm_activation_hooks(trace=not self._first_forward_done)
            self._arm_post_hook()
        elif not self._first_forward_done:
            if not self.compiled:
                self._arm_activation_hooks(trace=True, stats=False)
            self._arm_post_hook()

    def _arm_post_hook(self) -> None:
        if self._post_handle is None:
            self._post_handle = self._top.register_forward_hook(self._guard("model_forward", self._on_forward),
                                                                always_call=True)

    def _on_forward(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not torch.is_grad_enabled():
            return
        self._disarm_activation_hooks()
        if self._post_handle is not None:
            self._post_handle.remove()
            self._post_handle = None
        if not self._first_forward_done:
            self._exit_fn_mode()
            self._first_forward_done = True
            self._order = {}
            for what, name, _ in self._trace:
                if what != "fn" and name not in self._order:
                    self._order[name] = len(self._order)
            out = _first_tensor(output)
            if out is not None and out.is_floating_point():
                self._model_output_event(out)
            self._write_init_table()

    def _exit_fn_mode(self) -> None:
        if self._fn_mode is not None:
            mode, self._fn_mode = self._fn_mode, None
            try:
                mode.__exit__(None, None, None)
            except Exception:
                pass

    def _arm_activation_hooks(self, trace: bool, stats: bool = True) -> None:
        self._act_done_step = self.step
        step = self.step
        for name, mod, typ in self._leaves:
            if trace:
                what = "weight" if name in self._weight_leaves else "module"
                self._act_handles.append(mod.register_forward_pre_hook(
                    self._guard("trace", lambda m, a, name=name, typ=typ, what=what:
                                self._trace.append((what, name, typ)))))
            if stats:
                self._act_handles.append(mod.register_forward_hook(
                    self._guard("activation", lambda m, a, o, name=name, typ=typ:
                                self._record_activation(step, name, typ, m, a, o))))

    def _disarm_activation_hooks(self) -> None:
        for h in self._act_handles:
            h.remove()
        self._act_handles = []

    def _record_activation(self, step: int, name: str, typ: str, module: nn.Module, args: Any, output: Any) -> None:
        out = _first_tensor(output)
        if out is None or not out.is_floating_point():
            return
        raw, numel, units = st.raw_activation(out, typ)
        self._layers.append((step, name, "activation", typ, raw, (numel, units)))
        self._pending_rows += 1
        if module.training and typ.startswith(("BatchNorm", "SyncBatchNorm")):
            x = _first_tensor(args)
            if x is not None and x.dim() >= 2:
                n = int(x.shape[0])
                if n < self._bn_min_batch.get(name, 1 << 62):
                    self._bn_min_batch[name] = n
                    per_channel = int(x.numel() // max(1, x.shape[1]))
                    self._event(step, "batchnorm_batch", name, float(n), {"values_per_channel": per_channel})

    def _input_scale_event(self, x: Tensor) -> None:
        xf = x.detach().float()
        feats = xf.reshape(xf.shape[0], -1) if xf.dim() >= 2 else xf.reshape(-1, 1)
        if xf.dim() >= 3:  # images / sequences: per channel
            feats = xf.transpose(0, 1).reshape(xf.shape[1], -1).T
        std_f, mean_f = torch.std_mean(feats, dim=0) if feats.shape[0] > 1 else (torch.zeros(feats.shape[1]), feats[0])
        vals = torch.stack([xf.mean(), xf.std() if xf.numel() > 1 else xf.mean() * 0, xf.min(), xf.max(),
                            std_f.max(), std_f.min(), mean_f.abs().max()]).tolist()
        keys = ("mean", "std", "min", "max", "feature_std_max", "feature_std_min", "feature_mean_abs_max")
        detail = dict(zip(keys, vals))
        detail["shape"] = list(x.shape)
        self._event(self.step, "input_scale", "", detail["std"], detail)

    def _model_output_event(self, out: Tensor) -> None:
        producer = type(out.grad_fn).__name__ if out.grad_fn is not None else ""
        last_leaf = next((typ for what, _, typ in reversed(self._trace) if what != "fn"), "")
        last_fn = next((n for what, n, _ in reversed(self._trace) if what == "fn"), "")
        detail = {"producer": producer, "last_module": last_leaf, "last_function": last_fn, "shape": list(out.shape)}
        detail.update(_distribution_facts(out))
        self._event(self.step, "model_output", "", float("nan"), detail)

    def _on_criterion(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not torch.is_grad_enabled():
            return
        self._criterion_handle.remove()  # one look is enough; keep the loss on PyTorch's fast path
        x = _first_tensor(args)
        if x is None or not x.is_floating_point():
            return
        detail: dict[str, Any] = {"criterion": type(module).__name__,
                                  "producer": type(x.grad_fn).__name__ if x.grad_fn is not None else "",
                                  "shape": list(x.shape)}
        detail.update(_distribution_facts(x))
        loss = _first_tensor(output)
        if loss is not None and loss.numel() == 1:
            detail["loss"] = float(loss.detach().float())
        target = args[1] if len(args) > 1 and isinstance(args[1], Tensor) else None
        if target is not None:
            detail["target_dtype"] = str(target.dtype).replace("torch.", "")
            if target.numel():
                detail["target_min"], detail["target_max"] = (float(v) for v in torch.aminmax(target.detach().float()))
        ce_like = type(module).__name__ in ("CrossEntropyLoss", "NLLLoss")
        if ce_like and x.dim() >= 2:
            self._num_classes = int(x.shape[1])
        elif type(module).__name__ in ("BCELoss", "BCEWithLogitsLoss"):
            self._num_classes = 2
        detail["num_classes"] = self._num_classes
        self._event(self._fwd_step, "criterion_input", "", detail.get("loss", float("nan")), detail)

    # ------------------------------------------------------------------ backward / optimizer side
    def _on_sentinel_grad(self, grad: Tensor) -> None:
        self._backwards += 1
        if self._check_reset:
            self._check_reset = False
            g = self._sentinel.grad
            # .grad is None (set_to_none) or all zeros once zero_grad ran; anything else is stale.
            self._grad_reset = 1.0 if g is None else (g == 0).all()
        if self.optimizer is None:
            try:
                torch.autograd.Variable._execution_engine.queue_callback(
                    self._guard("backward_end", self._on_backward_end))
            except Exception:
                self._on_backward_end()

    def _on_backward_end(self) -> None:
        # Without an optimizer, a step is a backward pass.
        self._step_begin()
        self._step_end()

    def _on_step_pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._step_begin()

    def _on_step_post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._step_end()

    def _params_with_grad(self) -> list[tuple[str, str, list[Tensor], list[Tensor]]]:
        out = []
        for name, _, typ, params in self._layers_with_params:
            ps = [p for p in params if p.grad is not None]
            if ps:
                out.append((name, typ, ps, [p.grad for p in ps]))
        return out

    def _step_begin(self) -> None:
        s = self.step
        now = time.monotonic() - self._t0
        add = self._scalars.append
        record = self._recorded(s) or self._force_record
        # Dense early (short runs need enough points), then every grad_norm_every steps.
        dense = s < DENSE_GRAD_NORM_STEPS or s % self.grad_norm_every == 0
        layers = self._params_with_grad() if record or dense else []
        if layers:
            gn = st.global_norm([g for _, _, _, gs in layers for g in gs])
            add((s, schema.GRAD_NORM, gn, self._epoch, now))
            if gn.device.type == "cpu" and not math.isfinite(float(gn)) and "grad" not in self._seen_nonfinite:
                record = self._force_record = True  # free on CPU: catch the first bad step exactly
        groups = self.optimizer.param_groups if self.optimizer is not None else ()
        sched = self.scheduler
        count = None
        if sched is not None:
            count = getattr(sched, "_step_count", None)
            if count is None:
                count = getattr(sched, "last_epoch", None)
        self._loop.append((s, self._epoch, now, [g.get("lr") for g in groups],
                           [g.get("momentum", g.get("betas", (None,))[0]) for g in groups],
                           self._last_mode, self._grad_reset, self._backwards, count, self._batch_size))
        self._grad_reset = None
        self._pending_rows += 6
        if record:
            for name, typ, ps, gs in layers:
                self._layers.append((s, name, "grad", typ, *st.raw_moments(gs)))
                self._layers.append((s, name, "weight", typ, *st.raw_moments(ps)))
                if self.optimizer is not None:
                    self._snapshots[name] = [p.detach().clone() for p in ps]
            self._pending_rows += 2 * len(layers)

    def _step_end(self) -> None:
        s = self.step
        if self._snapshots:
            for name, _, typ, params in self._layers_with_params:
                before = self._snapshots.get(name)
                if before is not None:
                    numel = sum(p.numel() for p in before)
                    self._layers.append((s, name, "update", typ, st.raw_update(before, params), numel))
            self._pending_rows += len(self._snapshots)
            self._snapshots = {}
        self._force_record = False
        self.step = s + 1
        self._backwards = 0
        self._check_reset = True
        now = time.monotonic()
        if self._pending_rows >= self.flush_rows or now - self._last_flush >= self.flush_seconds:
            self._flush()

    # ------------------------------------------------------------------ events, init table, flushing
    def _event(self, step: int, kind: str, layer: str, value: float, detail: dict[str, Any]) -> None:
        self._events.append((int(step), kind, layer, float(value), detail))
        self._pending_rows += 1

    def _write_init_table(self) -> None:
        if self._init_written or not self._init_snaps:
            return
        self._init_written = True
        cols = init_mod.init_rows(self._init_snaps, self._trace, self._order)
        self.writer.append(schema.INIT, cols)

    def _model_summary(self) -> dict[str, Any]:
        modules = []
        for n, m in self.model.named_modules():
            direct = sum(p.numel() for p in m.parameters(recurse=False))
            is_leaf = not any(True for _ in m.children())
            if n and (is_leaf or direct):
                modules.append({"name": n, "type": type(m).__name__, "order": self._order.get(n, -1),
                                "n_params": int(direct), "training": bool(m.training)})
        modules.sort(key=lambda d: (d["order"] < 0, d["order"]))
        return {
            "class": type(self.model).__name__,
            "n_params": int(sum(p.numel() for p in self.model.parameters())),
            "n_trainable": int(sum(p.numel() for p in self.model.parameters() if p.requires_grad)),
            "modules": modules,
        }

    def _optimizer_summary(self) -> dict[str, Any] | None:
        opt = self.optimizer
        if opt is None:
            return None
        defaults = {k: _jsonable(v) for k, v in opt.defaults.items() if k in _OPTIMIZER_HPARAMS}
        groups = []
        for g in opt.param_groups:
            d = {k: _jsonable(g[k]) for k in _OPTIMIZER_HPARAMS if k in g}
            d["n_params"] = int(sum(p.numel() for p in g["params"]))
            groups.append(d)
        return {"class": type(opt).__name__, "module": type(opt).__module__, "defaults": defaults,
                "param_groups": groups}

    def _scheduler_summary(self) -> dict[str, Any] | None:
        sch = self.scheduler
        if sch is None:
            return None
        params = {}
        for k, v in vars(sch).items():
            if k.startswith("_") or k in ("optimizer", "base_lrs", "last_epoch", "verbose"):
                continue
            if isinstance(v, (bool, int, float, str)) or v is None:
                params[k] = _jsonable(v)
            elif isinstance(v, (list, tuple)) and len(v) <= 16 and all(isinstance(x, (int, float)) for x in v):
                params[k] = _jsonable(v)
        return {"class": type(sch).__name__, "params": params}

    def _criterion_summary(self) -> dict[str, Any] | None:
        c = self.criterion
        if c is None:
            return None
        if isinstance(c, nn.Module):
            params = {k: _jsonable(v) for k, v in vars(c).items()
                      if not k.startswith("_") and k != "training" and not isinstance(v, Tensor)}
            return {"class": type(c).__name__, "params": params}
        return {"class": getattr(c, "__name__", type(c).__name__), "params": {}}

    def _write_meta(self, status: str | None = None) -> None:
        meta = self._meta
        meta.update(
            steps=self.step,
            last_flush=time.time(),
            model=self._model_summary(),
            optimizer=self._optimizer_summary(),
            scheduler=self._scheduler_summary(),
            criterion=self._criterion_summary(),
            num_classes=self._num_classes,
            bytes_written=self.writer.bytes_written,
            disabled_hooks=sorted(self._disabled),
        )
        if status is not None:
            meta["status"] = status
            meta["ended"] = time.time()
        self.writer.write_meta(meta)

    def _flush(self, final_status: str | None = None) -> None:
        self._last_flush = time.monotonic()
        scalars, self._scalars = self._scalars + self._expand_loop() + self._expand_logged(), []
        layers, self._layers = self._layers, []
        self._pending_rows = 0
        if not self._init_written and final_status is not None:
            self._write_init_table()
        if scalars:
            values = _to_host([v for _, _, v, _, _ in scalars])
            self._nonfinite_from_scalars(scalars, values)
            self.writer.append(schema.SCALARS, {
                "step": [r[0] for r in scalars], "name": [r[1] for r in scalars], "value": values,
                "epoch": [r[3] for r in scalars], "time": [r[4] for r in scalars]})
        if layers:
            mats = [_FINALIZE[r[2]](raw, r[5]) for r, raw in zip(layers, _raw_to_host([r[4] for r in layers]))]
            cols: dict[str, list] = {
                "step": [r[0] for r in layers], "layer": [r[1] for r in layers], "kind": [r[2] for r in layers],
                "module_type": [r[3] for r in layers], "order": [self._order.get(r[1], -1) for r in layers]}
            for i, stat in enumerate(schema.LAYER_STATS):
                cols[stat] = [row[i] for row in mats]
            self._nonfinite_from_layers(cols)
            self.writer.append(schema.LAYERS, cols)
        events, self._events = self._events, []
        if events:
            self.writer.append(schema.EVENTS, {
                "step": [e[0] for e in events], "kind": [e[1] for e in events], "layer": [e[2] for e in events],
                "value": [e[3] for e in events],
                "detail": [json.dumps(_jsonable(e[4])) for e in events]})
        self.writer.next_chunk()
        self._write_meta(final_status)

    def _expand_loop(self) -> list[tuple[int, str, Any, float, float]]:
        rows: list[tuple[int, str, Any, float, float]] = []
        add = rows.append
        loop, self._loop = self._loop, []
        for s, epoch, now, lrs, moms, mode, reset, backwards, count, batch in loop:
            for i, lr in enumerate(lrs):
                if lr is not None:
                    add((s, f"{schema.LR_PREFIX}{i}", lr, epoch, now))
            for i, mom in enumerate(moms):
                if mom is not None:
                    add((s, f"{schema.MOMENTUM_PREFIX}{i}", mom, epoch, now))
            if mode is not None:
                add((s, schema.LOOP_TRAINING, 1.0 if mode else 0.0, epoch, now))
            if reset is not None:
                add((s, schema.LOOP_GRAD_RESET, reset, epoch, now))
            add((s, schema.LOOP_BACKWARDS, float(backwards), epoch, now))
            if count is not None:
                add((s, schema.LOOP_SCHEDULER_STEPS, float(count) - 1.0, epoch, now))
            if batch is not None:
                add((s, schema.LOOP_BATCH_SIZE, float(batch), epoch, now))
        return rows

    def _expand_logged(self) -> list[tuple[int, str, Any, float, float]]:
        rows: list[tuple[int, str, Any, float, float]] = []
        logged, self._logged = self._logged, []
        bad: list[str] = []
        for s, epoch, now, values in logged:
            for key, v in values.items():
                if v is None:
                    continue
                if isinstance(v, Tensor):
                    v = v.float().mean() if v.numel() != 1 else v.reshape(())
                else:
                    try:
                        v = float(v)
                    except (TypeError, ValueError):
                        bad.append(str(key))
                        continue
                rows.append((s, str(key), v, epoch, now))
        if bad:
            self._hook_failed("log", ValueError(f"not a number: {', '.join(sorted(set(bad)))}"))
        return rows

    def _nonfinite_from_scalars(self, rows: list[tuple], values: list[float]) -> None:
        for (step, name, _, _, _), v in zip(rows, values):
            if math.isfinite(v):
                continue
            tensor = "grad" if name == schema.GRAD_NORM else ("loss" if "loss" in name else None)
            if tensor is None or tensor in self._seen_nonfinite:
                continue
            self._seen_nonfinite.add(tensor)
            self._event(step, "nonfinite", "", v, {"tensor": tensor, "metric": name, "value": str(v)})

    def _nonfinite_from_layers(self, cols: dict[str, list]) -> None:
        bad: dict[str, tuple[int, int, str]] = {}
        for i, n in enumerate(cols["nonfinite"]):
            if n and n > 0:
                kind = cols["kind"][i]
                key = (cols["step"][i], cols["order"][i] if cols["order"][i] >= 0 else 1 << 30)
                if kind not in bad or key < bad[kind][:2]:
                    bad[kind] = (key[0], key[1], cols["layer"][i])
        for kind, (step, _, layer) in bad.items():
            tag = f"layer:{kind}"
            if tag in self._seen_nonfinite:
                continue
            self._seen_nonfinite.add(tag)
            self._event(step, "nonfinite", layer, float("nan"), {"tensor": kind, "first_layer": layer})


def _distribution_facts(x: Tensor) -> dict[str, Any]:
    """Is this tensor already a probability (or log-probability) distribution over dim 1?"""
    xf = x.detach().float()
    facts: dict[str, Any] = {}
    if xf.numel() == 0:
        return facts
    lo, hi = torch.aminmax(xf)
    if xf.dim() >= 2 and xf.shape[1] > 1:
        rows = xf.sum(dim=1)
        lse = torch.logsumexp(xf, dim=1)
        vals = torch.stack([lo, hi, rows.mean(), (rows - 1).abs().max(), lse.abs().max()]).tolist()
        facts.update(min=vals[0], max=vals[1], row_sum_mean=vals[2])
        facts["is_prob"] = bool(vals[0] >= 0 and vals[3] < 1e-3)
        facts["is_log_prob"] = bool(vals[1] <= 0 and vals[4] < 1e-3)
    else:
        vals = torch.stack([lo, hi]).tolist()
        facts.update(min=vals[0], max=vals[1])
        facts["is_prob"] = bool(vals[0] >= 0 and vals[1] <= 1)  # e.g. sigmoid output
        facts["is_log_prob"] = False
    return facts


def _to_host(values: list[Any]) -> list[float]:
    """Python floats for a list of floats and 0-d tensors (tensors copied together, once per device)."""
    out = [v if not isinstance(v, Tensor) else 0.0 for v in values]
    idx = [i for i, v in enumerate(values) if isinstance(v, Tensor)]
    for i, host in zip(idx, _raw_to_host([values[i] for i in idx])):
        out[i] = float(host[0])
    return [float(v) for v in out]


def _raw_to_host(vectors: list[Tensor]) -> list[np.ndarray]:
    """All raw vectors of a flush: concatenated per device, one copy to the host, split again."""
    by_device: dict[torch.device, list[int]] = defaultdict(list)
    for i, v in enumerate(vectors):
        by_device[v.device].append(i)
    out: list[np.ndarray] = [np.empty(0)] * len(vectors)
    for idx in by_device.values():
        flat = torch.cat([vectors[i].reshape(-1).float() for i in idx]).cpu().numpy()
        offsets = np.cumsum([0] + [vectors[i].numel() for i in idx])
        for j, i in enumerate(idx):
            out[i] = flat[offsets[j]:offsets[j + 1]]
    return out


_FINALIZE = {
    "grad": st.finalize_moments,
    "weight": st.finalize_moments,
    "activation": lambda raw, info: st.finalize_activation(raw, *info),
    "update": st.finalize_update,
}


def _version() -> str:
    from trainscope import __version__

    return __version__


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
    name, config: the run's name and any JSON-able dict to keep in meta.json.
    """
    return Probe(model, run_dir, **options)
