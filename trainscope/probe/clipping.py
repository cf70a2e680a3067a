"""Seeing `torch.nn.utils.clip_grad_norm_` while a probe is live, to read gradients before clipping.

`clip_grad_norm_` computes the total norm and then calls the module-level
`torch.nn.utils.clip_grad._clip_grads_with_norm_` (looked up at call time), so wrapping that one
function sees every call, however the user imported `clip_grad_norm_` (nanoGPT, HF accelerate and
Lightning all end there). The wrapper tells each live listener `(max_norm, total_norm)` *before*
the gradients are scaled, then calls the original unchanged. It is installed when the first probe
attaches and restored when the last one closes (unless someone else has wrapped it since).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import torch
import torch.nn.utils as nn_utils
from torch import Tensor

# (max_norm, total_norm) -> None, called before the gradients are scaled; must not raise.
ClipListener = Callable[[Any, Tensor | None], None]

_listeners: list[ClipListener] = []
_saved: dict[str, Any] = {}  # attribute name -> original function


def _targets() -> list[tuple[Any, str]]:
    clip_mod = getattr(nn_utils, "clip_grad", None)
    if clip_mod is not None and hasattr(clip_mod, "_clip_grads_with_norm_"):
        out = [(clip_mod, "_clip_grads_with_norm_")]
        if hasattr(nn_utils, "clip_grads_with_norm_"):
            out.append((nn_utils, "clip_grads_with_norm_"))
        return out
    return [(nn_utils, "clip_grad_norm_")]  # older torch: no split into norm + scale


def _wrap(orig: Callable[..., Any], name: str) -> Callable[..., Any]:
    @functools.wraps(orig)
    def clip_seen_by_trainscope(*args: Any, **kwargs: Any) -> Any:
        if _listeners:
            if name == "clip_grad_norm_":
                max_norm, total = (args[1] if len(args) > 1 else kwargs.get("max_norm")), None
            else:
                max_norm = args[1] if len(args) > 1 else kwargs.get("max_norm")
                total = args[2] if len(args) > 2 else kwargs.get("total_norm")
            for listener in list(_listeners):
                try:
                    listener(max_norm, total)
                except Exception:  # listeners are guarded themselves; never break the clip
                    pass
        return orig(*args, **kwargs)

    clip_seen_by_trainscope.__trainscope_wrapped__ = orig  # type: ignore[attr-defined]
    return clip_seen_by_trainscope


def attach(listener: ClipListener) -> None:
    if not _listeners:
        for mod, attr in _targets():
            orig = getattr(mod, attr)
            if getattr(orig, "__trainscope_wrapped__", None) is None:
                _saved[f"{mod.__name__}.{attr}"] = orig
                setattr(mod, attr, _wrap(orig, attr))
    _listeners.append(listener)


def detach(listener: ClipListener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)
    if _listeners:
        return
    for mod, attr in _targets():
        key = f"{mod.__name__}.{attr}"
        current = getattr(mod, attr)
        if key in _saved and getattr(current, "__trainscope_wrapped__", None) is _saved[key]:
            setattr(mod, attr, _saved.pop(key))


def clip_active(total_norm: Tensor | None, max_norm: Any) -> Tensor | float | None:
    """1.0 where the clip scaled the gradients (total > max_norm), as a device value (no sync)."""
    if total_norm is None:
        return None
    return (total_norm.detach() > max_norm).to(torch.float32)
