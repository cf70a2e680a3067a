"""CriterionWatch: what reaches the loss, and the batch's targets.

The loss is found three ways: the `criterion` the user passed; any `nn.modules.loss._Loss` module
called between the watched model's output and the backward (a global module hook, armed only on
steps 0-2 and every 100th step); and functional losses (`F.cross_entropy`, `F.mse_loss`, ...) through
a TorchFunctionMode armed over the same window on steps 0-2 (and during the first forward, for
models that compute their own loss). Each distinct loss gets one `criterion_input` event (host
values: once per loss). Known loss modules are then hooked on the first 200 steps and every 100th
step, and a functional loss keeps its mode on the first 200 steps, for the batch's target
statistics (`batch/target_*`): floats on CPU, device values elsewhere (copied at the next flush).
"""
from __future__ import annotations

import threading
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack

from trainscope.probe import host
from trainscope.probe.buffer import RunBuffer
from trainscope.probe.clock import Collector, StepClock
from trainscope.probe.guard import HookGuard
from trainscope.probe.util import distribution_facts, first_tensor, producer_chain, producer_name
from trainscope.store import schema

TARGET_STEPS = 200  # batch target statistics on every one of the first steps (then every LATE_EVERY)
LATE_EVERY = 100  # then every this many steps
DISCOVERY_STEPS = 3  # functional losses are looked for on steps 0..2

# functional loss -> the module class users know it by
LOSS_FUNCTIONS = {
    "cross_entropy": "CrossEntropyLoss", "nll_loss": "NLLLoss", "mse_loss": "MSELoss", "l1_loss": "L1Loss",
    "binary_cross_entropy": "BCELoss", "binary_cross_entropy_with_logits": "BCEWithLogitsLoss",
    "smooth_l1_loss": "SmoothL1Loss", "huber_loss": "HuberLoss", "kl_div": "KLDivLoss",
    "poisson_nll_loss": "PoissonNLLLoss", "gaussian_nll_loss": "GaussianNLLLoss", "soft_margin_loss": "SoftMarginLoss",
    "multilabel_soft_margin_loss": "MultiLabelSoftMarginLoss", "multi_margin_loss": "MultiMarginLoss",
    "hinge_embedding_loss": "HingeEmbeddingLoss",
}
# Losses whose input and target are compared element by element (so a shape mismatch broadcasts).
ELEMENTWISE = {"MSELoss", "L1Loss", "BCELoss", "BCEWithLogitsLoss", "SmoothL1Loss", "HuberLoss", "KLDivLoss",
               "PoissonNLLLoss", "GaussianNLLLoss", "SoftMarginLoss", "MultiLabelSoftMarginLoss"}


def criterion_facts(criterion: str, x: Tensor, target: Tensor | None) -> dict[str, Any]:
    """The criterion_input detail (host values; called once per distinct loss)."""
    detail: dict[str, Any] = {"criterion": criterion,
                              "producer": producer_name(x),
                              # what fed the producer: log(softmax(x)) is SoftmaxBackward0 under LogBackward0
                              "producer_input": (producer_chain(x)[1:] or [""])[0],
                              "shape": list(x.shape), "input_shape": list(x.shape)}
    detail.update(distribution_facts(x))
    detail["dim1_size"] = int(x.shape[1]) if x.dim() >= 2 else None  # the dim softmax / CE normalize over
    if target is None:
        return detail
    t = target.detach()
    detail["target_dtype"] = str(t.dtype).replace("torch.", "")
    detail["target_shape"] = list(t.shape)
    detail["target_integer"] = not (t.is_floating_point() or t.is_complex())
    broadcast = False
    if criterion in ELEMENTWISE and tuple(x.shape) != tuple(t.shape):
        try:
            full = torch.broadcast_shapes(x.shape, t.shape)
            broadcast = full.numel() > max(x.numel(), t.numel())
        except RuntimeError:
            broadcast = False
    detail["broadcast"] = broadcast
    if t.numel() and not t.is_complex():
        tf = t.float()
        lo, hi = (float(v) for v in torch.aminmax(tf))
        detail["target_min"], detail["target_max"] = lo, hi
        detail["target_in_unit"] = bool(lo >= 0 and hi <= 1)
        # hard 0/1 labels, not soft targets in 0..1 (heatmaps, label smoothing, probabilities)
        detail["target_binary"] = bool(lo >= 0 and hi <= 1 and ((tf == 0) | (tf == 1)).all())
        multi = False
        if t.is_floating_point() and t.dim() >= 2 and t.shape[1] > 1 and lo >= 0 and hi <= 1:
            binary = bool(((tf == 0) | (tf == 1)).all())
            multi = binary and bool(((tf == 1).sum(dim=1) > 1).any())
        detail["target_multi_label"] = multi
    return detail


def target_stats(target: Tensor) -> list[tuple[str, Tensor | float]]:
    """The batch's target distribution: floats on CPU (read at once, free there), else 0-d device tensors
    (no host sync)."""
    t = target.detach() if target.requires_grad else target
    if t.numel() == 0:
        return []
    integer = t.dim() == 1 and not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)
    if integer and host.free(t):  # numpy on the host: a few µs, not ten small kernels
        a = t.numpy()
        lo, hi = int(a.min()), int(a.max())
        if 0 <= lo and hi < 1 << 16:  # class ids: one counting pass (the smallest id wins a tie, as below)
            counts = np.bincount(a)
            top = int(counts.argmax())
            return [(schema.BATCH_TARGET_MODE_FRAC, float(counts[top]) / t.numel()),
                    (schema.BATCH_TARGET_MODE, float(top))]
        values, counts = np.unique(a, return_counts=True)
        top = int(counts.argmax())
        return [(schema.BATCH_TARGET_MODE_FRAC, float(counts[top]) / t.numel()),
                (schema.BATCH_TARGET_MODE, float(values[top]))]
    if integer:
        # Counts by binary search in the sorted targets: fixed-size outputs, so no host sync on a GPU
        # (unique/bincount size their output from the data).
        srt = t.sort().values
        counts = torch.searchsorted(srt, srt, right=True) - torch.searchsorted(srt, srt, right=False)
        top = counts.argmax()
        frac = counts[top].float() / t.numel()
        return [(schema.BATCH_TARGET_MODE_FRAC, frac), (schema.BATCH_TARGET_MODE, srt[top].float())]
    if t.is_floating_point():
        return [(schema.BATCH_TARGET_MEAN, t.float().mean())]
    return []


class _FunctionalLosses(TorchFunctionMode):
    """Sees functional loss calls; becomes a pass-through once the backward starts."""

    def __init__(self, on_loss: Callable[[str, tuple, dict, Any], None]) -> None:
        super().__init__()
        self.on_loss = on_loss
        self.inert = False
        self.thread = threading.get_ident()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self.inert:
            name = getattr(func, "__name__", "")
            if name in LOSS_FUNCTIONS:
                self.on_loss(name, args, kwargs, out)
            elif name == "backward":
                self.inert = True
        return out


class CriterionWatch(Collector):
    def __init__(self, criterion: Callable[..., Tensor] | None, buffer: RunBuffer, clock: StepClock,
                 guard: HookGuard, *, compiled: bool = False) -> None:
        self.criterion = criterion
        self.buffer = buffer
        self.clock = clock
        self.guard = guard
        self.compiled = compiled
        self.num_classes: int | None = None
        self.described: dict[str, dict[str, Any]] = {}  # loss name -> its criterion_input detail
        self.handles: list[Any] = []  # hooks removed at close
        self._loss_modules: list[nn.Module] = [criterion] if isinstance(criterion, nn.Module) else []
        self._step_hooks: list[Any] = []  # loss-module hooks, armed while the steps want them
        self._own_step = -1  # the step whose loss-module call was looked at
        self._window: list[Any] = []  # global module hooks between the model output and the backward
        self._mode: _FunctionalLosses | None = None
        self._functional_seen = False
        self._loss_depth = 0  # inside a loss module's forward: its functional call is that module's
        self._targets_step = -1  # the step whose batch targets were recorded
        self._eval_armed: dict[int, Any] = {}  # loss module id -> its validation-call hook
        self._eval_seen: set[int] = set()  # loss modules whose validation call was described

    # -------------------------------------------------------------- arming
    def install(self) -> None:
        self.on_forward_begin(0)  # the given criterion may run before any forward of the watched module

    def on_eval_forward(self) -> None:
        """A grad-disabled forward of the watched model (validation): arm a hook on each known loss module
        until its first grad-disabled call, to see what a validation loss receives (a softmax applied only
        in the validation step is invisible to the training-side facts). Training calls never pay for it."""
        for m in self._loss_modules:
            if id(m) in self._eval_seen or id(m) in self._eval_armed:
                continue
            self._eval_armed[id(m)] = m.register_forward_hook(self.guard.wrap("criterion_eval", self._eval_called))

    def _eval_called(self, mod: nn.Module, args: Any, output: Any) -> None:
        if torch.is_grad_enabled():
            return
        self._eval_seen.add(id(mod))
        h = self._eval_armed.pop(id(mod), None)
        if h is not None:
            h.remove()
        x = first_tensor(args)
        if x is None or not isinstance(x, Tensor) or not x.is_floating_point():
            return
        target = args[1] if isinstance(args, tuple) and len(args) > 1 and isinstance(args[1], Tensor) else None
        detail = criterion_facts(type(mod).__name__, x, target)
        detail["source"] = "given" if mod is self.criterion else "module"
        loss = first_tensor(output)
        value = float(loss.detach().float()) if isinstance(loss, Tensor) and loss.numel() == 1 else float("nan")
        self.buffer.event(self.clock.fwd_step, "criterion_input_eval", "", value, detail)

    @staticmethod
    def _late(step: int) -> bool:
        """After the first steps, the loss is looked at again (new loss modules, the batch's targets) every
        LATE_EVERY steps: the default recorded steps, but not every step of an `every=1` run."""
        return step % LATE_EVERY == 0

    def wants_window(self, step: int) -> bool:
        return step < DISCOVERY_STEPS or self._late(step) or (self._functional_seen and step < TARGET_STEPS)

    def on_forward_begin(self, step: int) -> None:
        """A training forward of the watched model starts: close any open window, arm the loss modules."""
        self.close_window()
        if not (step < TARGET_STEPS or self._late(step)):
            self._remove(self._step_hooks)
        elif len(self._step_hooks) != len(self._loss_modules):  # armed once, and again when a loss is found
            self._remove(self._step_hooks)
            for m in self._loss_modules:
                self._step_hooks.append(m.register_forward_hook(
                    self.guard.wrap("criterion", lambda mod, a, o: self._module_called(mod, a, o, own=True))))

    def idle(self) -> bool:
        """No loss hook, window or function mode is armed (a quiet step may skip this collector)."""
        return not (self._step_hooks or self._window or self._mode is not None)

    def open_window(self, step: int) -> None:
        """The watched model returned its output (grad enabled): the loss is computed next."""
        if not self.wants_window(step):
            return
        if step < DISCOVERY_STEPS or self._late(step):
            from torch.nn.modules import module as module_mod

            self._window.append(module_mod.register_module_forward_pre_hook(
                self.guard.wrap("criterion_discovery", self._global_pre)))
            self._window.append(module_mod.register_module_forward_hook(
                self.guard.wrap("criterion_discovery", self._global_post)))
        # Only on an empty mode stack: a mode the user entered before the forward and leaves after the loss
        # would otherwise pop ours instead of theirs (torch.set_default_device keeps one: then no mode).
        if (not self.compiled and not _get_current_function_mode_stack()
                and (step < DISCOVERY_STEPS or (self._functional_seen and step < TARGET_STEPS))):
            self._mode = _FunctionalLosses(self.guard.wrap("criterion_functional", self.functional_called))
            self._mode.__enter__()

    def close_window(self) -> None:
        self._remove(self._window)
        self._loss_depth = 0
        mode = self._mode
        if mode is None:
            return
        mode.inert = True
        stack = _get_current_function_mode_stack()
        if threading.get_ident() == mode.thread and stack and stack[-1] is mode:
            self._mode = None
            mode.__exit__(None, None, None)
        # else: another mode was pushed on top (or another thread): stay inert until a later try

    def on_backward(self) -> None:
        self._remove(self._window)  # dict pops: safe from the autograd thread
        if self._mode is not None:
            self._mode.inert = True

    def on_step_begin(self, step: int, record: bool) -> None:
        self.close_window()

    def close(self) -> None:
        self.close_window()
        self._remove(self._step_hooks)
        self._remove(self.handles)
        self._remove(list(self._eval_armed.values()))
        self._eval_armed.clear()

    @staticmethod
    def _remove(handles: list[Any]) -> None:
        for h in handles:
            try:
                h.remove()
            except Exception:
                pass
        handles.clear()

    # -------------------------------------------------------------- what a loss call shows
    def _global_pre(self, module: nn.Module, args: Any) -> None:
        if isinstance(module, nn.modules.loss._Loss):
            self._loss_depth += 1

    def _global_post(self, module: nn.Module, args: Any, output: Any) -> None:
        if not isinstance(module, nn.modules.loss._Loss):
            return
        self._loss_depth = max(0, self._loss_depth - 1)
        if any(module is m for m in self._loss_modules):
            return  # its own per-step hook saw it
        self._loss_modules.append(module)  # found: hooked on the next steps for its targets
        self._module_called(module, args, output, own=False)

    def _module_called(self, module: nn.Module, args: Any, output: Any, own: bool) -> None:
        if not torch.is_grad_enabled():
            return
        if own:  # one call per step is enough (the hooks stay armed while steps want them: no re-registering)
            step = self.clock.fwd_step
            if self._own_step == step:
                return
            self._own_step = step
        x = first_tensor(args)
        target = args[1] if isinstance(args, tuple) and len(args) > 1 and isinstance(args[1], Tensor) else None
        self._seen(type(module).__name__, module, x, target, first_tensor(output))

    def functional_called(self, name: str, args: tuple, kwargs: dict, out: Any) -> None:
        if self._loss_depth > 0 or not torch.is_grad_enabled():
            return  # inside a loss module: the module's hook reports it under the module's name
        self._functional_seen = True
        x = args[0] if args and isinstance(args[0], Tensor) else kwargs.get("input")
        target = args[1] if len(args) > 1 and isinstance(args[1], Tensor) else kwargs.get("target")
        self._seen(LOSS_FUNCTIONS[name], None, x, target if isinstance(target, Tensor) else None,
                   out if isinstance(out, Tensor) else None, function=name, kwargs=kwargs)

    def _seen(self, criterion: str, module: nn.Module | None, x: Tensor | None, target: Tensor | None,
              loss: Tensor | None, function: str | None = None, kwargs: dict | None = None) -> None:
        step = self.clock.fwd_step
        if target is not None and self._targets_step != step and (step < TARGET_STEPS or self._late(step)):
            self._targets_step = step
            for name, value in target_stats(target):
                self.buffer.scalar((step, name, value, self.clock.epoch, self.buffer.now()))
        key = function or criterion
        if key in self.described or x is None or not isinstance(x, Tensor) or not x.is_floating_point():
            return
        detail = criterion_facts(criterion, x, target)
        detail["source"] = "function" if function else ("given" if module is self.criterion else "module")
        if function:
            detail["function"] = function
        reduction = (kwargs or {}).get("reduction", "mean") if function else getattr(module, "reduction", "mean")
        detail["reduction"] = reduction if isinstance(reduction, str) else str(reduction)
        if loss is not None and loss.numel() == 1:
            # Only a mean is comparable with chance level (HF's causal-LM loss sums, then divides).
            detail["loss" if detail["reduction"] == "mean" else "loss_" + detail["reduction"]] = float(
                loss.detach().float())
        if criterion in ("CrossEntropyLoss", "NLLLoss") and x.dim() >= 2:
            self.num_classes = int(x.shape[1])
        elif criterion in ("BCELoss", "BCEWithLogitsLoss") and self.num_classes is None:
            self.num_classes = 2
        detail["num_classes"] = self.num_classes
        self.described[key] = detail
        self.buffer.event(step, "criterion_input", "", detail.get("loss", float("nan")), detail)
