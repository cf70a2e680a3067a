"""ForwardTrace: what the first training forward shows about the model.

The execution order of the leaf modules (noted by the activation hooks armed for that forward),
the functional activations called in between (a TorchFunctionMode entered only for that forward),
the initialization table built from both, the input's scale and the model output's last op.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from trainscope.probe import init_table as init_mod
from trainscope.probe.buffer import RunBuffer
from trainscope.probe.util import distribution_facts, first_tensor, producer_name
from trainscope.store import schema
from trainscope.store.writer import RunWriter


class _ActivationTrace(TorchFunctionMode):
    """During the first forward only: note functional activations (F.relu, torch.tanh, ...)."""

    def __init__(self, trace: list[tuple[str, str, str]], on_call: Callable[[Any, tuple, dict, Any], None]) -> None:
        super().__init__()
        self.trace = trace
        self.on_call = on_call  # every call, for the other first-forward facts (losses, foreign weights)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        name = getattr(func, "__name__", "")
        if name in init_mod.FUNCTIONAL_ACTIVATIONS:
            self.trace.append(("fn", name, name))
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.on_call(func, args, kwargs, out)
        return out


class ForwardTrace:
    def __init__(self, model: nn.Module, buffer: RunBuffer, writer: RunWriter, *, compiled: bool,
                 on_call: Callable[[Any, tuple, dict, Any], None] = lambda f, a, k, o: None) -> None:
        self.buffer = buffer
        self.writer = writer
        self.compiled = compiled
        self.trace: list[tuple[str, str, str]] = []  # (what: weight|module|fn, name, type), in call order
        self.order: dict[str, int] = {}  # leaf module -> forward position
        self.done = False  # the first training forward has finished
        self._fn_mode: _ActivationTrace | None = None
        self._init_snaps = init_mod.snapshot_weights(model)  # before any step
        self._init_written = False
        self.on_call = on_call  # (func, args, kwargs, output) of every torch call in the first forward

    def note(self, what: str, name: str, typ: str) -> None:
        self.trace.append((what, name, typ))

    def begin(self, step: int, x: Tensor | None) -> None:
        """The first training forward starts (x: its first input tensor)."""
        if x is not None and x.is_floating_point():
            self._input_scale_event(step, x)
        if not self.compiled:
            self._fn_mode = _ActivationTrace(self.trace, self.on_call)
            self._fn_mode.__enter__()

    def end(self, step: int, output: Any) -> None:
        """The first training forward returned `output`."""
        self.exit_fn_mode()
        self.done = True
        self.order = {}
        for what, name, _ in self.trace:
            if what != "fn" and name not in self.order:
                self.order[name] = len(self.order)
        self.buffer.order = self.order
        out = first_tensor(output)
        if out is not None and out.is_floating_point():
            self._model_output_event(step, out)
        self.write_init_table()

    def exit_fn_mode(self) -> None:
        if self._fn_mode is not None:
            mode, self._fn_mode = self._fn_mode, None
            try:
                mode.__exit__(None, None, None)
            except Exception:
                pass

    def write_init_table(self) -> None:
        if self._init_written or not self._init_snaps:
            return
        self._init_written = True
        cols = init_mod.init_rows(self._init_snaps, self.trace, self.order)
        self.writer.append(schema.INIT, cols)

    def _input_scale_event(self, step: int, x: Tensor) -> None:
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
        self.buffer.event(step, "input_scale", "", detail["std"], detail)

    def _model_output_event(self, step: int, out: Tensor) -> None:
        producer = producer_name(out)
        last_leaf = next((typ for what, _, typ in reversed(self.trace) if what != "fn"), "")
        last_fn = next((n for what, n, _ in reversed(self.trace) if what == "fn"), "")
        detail = {"producer": producer, "last_module": last_leaf, "last_function": last_fn, "shape": list(out.shape),
                  "requires_grad": bool(out.requires_grad)}
        detail.update(distribution_facts(out))
        self.buffer.event(step, "model_output", "", float("nan"), detail)
