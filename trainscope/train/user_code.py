"""Load the user's code for `trainscope check` / `trainscope lr-find`: `--model FILE.py:FUNC` and friends.

The contract (docs/playbook.md, "Sanity tools on your own model"):
  --model FILE.py:FUNC      FUNC() returns the torch.nn.Module to check (untrained, as your script builds it)
  --data FILE.py:FUNC       FUNC() returns an iterable of (inputs, targets) batches (a DataLoader, a list)
  --criterion FILE.py:FUNC  optional; FUNC() returns the loss (default: CrossEntropyLoss for integer
                            targets, MSELoss otherwise)
  --optimizer FILE.py:FUNC  optional; FUNC(params) returns the optimizer (or a name: adam, adamw, sgd + --lr)
FILE is imported as a fresh module with its own folder on sys.path (so its sibling imports work);
FUNC is called with no arguments (`--optimizer`: with the parameters). Any problem is a TrainscopeError
(one line, exit 2 in the CLI).
"""
from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable

from trainscope.errors import TrainscopeError


def parse_spec(spec: str, option: str) -> tuple[Path, str]:
    path, sep, func = spec.rpartition(":")
    if not sep or not path or not func:
        raise TrainscopeError(f"{option} must be FILE.py:FUNC, not {spec!r}")
    if not func.isidentifier():
        raise TrainscopeError(f"{option} {spec!r}: {func!r} is not a function name")
    p = Path(path)
    if not p.is_file():
        raise TrainscopeError(f"{option} {spec!r}: {path}: no such file")
    return p, func


def load_callable(spec: str, option: str = "--model") -> Callable[..., Any]:
    """The function FUNC of FILE.py, imported fresh."""
    path, func = parse_spec(spec, option)
    resolved = path.resolve()
    name = "trainscope_user_" + hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    module_spec = importlib.util.spec_from_file_location(name, resolved)
    if module_spec is None or module_spec.loader is None:
        raise TrainscopeError(f"{option} {spec!r}: cannot import {path} (is it a .py file?)")
    module = importlib.util.module_from_spec(module_spec)
    folder = str(resolved.parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
    except SystemExit as e:
        raise TrainscopeError(f"{option} {spec!r}: importing {path} called sys.exit({e.code})") from None
    except Exception as e:  # noqa: BLE001 - the user's file: report it in one line
        raise TrainscopeError(f"{option} {spec!r}: importing {path} failed: {type(e).__name__}: {e}") from None
    finally:
        if added:
            try:
                sys.path.remove(folder)
            except ValueError:
                pass
    fn = getattr(module, func, None)
    if fn is None:
        raise TrainscopeError(f"{option} {spec!r}: {path} defines no {func!r}")
    if not callable(fn):
        raise TrainscopeError(f"{option} {spec!r}: {func} is a {type(fn).__name__}, not a function")
    return fn


def call_user(spec: str, option: str, *args: Any) -> Any:
    fn = load_callable(spec, option)
    try:
        return fn(*args)
    except TrainscopeError:
        raise
    except Exception as e:  # noqa: BLE001
        raise TrainscopeError(f"{option} {spec!r}: {getattr(fn, '__name__', 'FUNC')}() raised "
                              f"{type(e).__name__}: {e}") from None


def load_model(spec: str) -> Any:
    from torch import nn

    model = call_user(spec, "--model")
    if not isinstance(model, nn.Module):
        raise TrainscopeError(f"--model {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_data(spec: str) -> Any:
    data = call_user(spec, "--data")
    if data is None or not hasattr(data, "__iter__") and not hasattr(data, "__getitem__"):
        raise TrainscopeError(f"--data {spec!r} returned {type(data).__name__}, not an iterable of "
                              "(inputs, targets) batches")
    return data


def load_criterion(spec: str | None) -> Any:
    if spec is None:
        return None
    crit = call_user(spec, "--criterion")
    if not callable(crit):
        raise TrainscopeError(f"--criterion {spec!r} returned {type(crit).__name__}, not a loss function")
    return crit


def optimizer_factory(spec: str | None, lr: float | None) -> Callable[..., Any] | None:
    """--optimizer NAME (adam, adamw, sgd; with --lr) or FILE.py:FUNC (FUNC(params) -> optimizer)."""
    import torch

    if spec is None and lr is None:
        return None
    if lr is not None and lr <= 0:
        raise TrainscopeError(f"--lr must be positive, not {lr}")
    names = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
    if spec is None or spec.lower() in names:
        cls = names[(spec or "adam").lower()]
        kw = {"lr": lr if lr is not None else 1e-3}
        if cls is torch.optim.SGD and lr is None:
            kw["lr"] = 1e-2
        return lambda params: cls(params, **kw)
    fn = load_callable(spec, "--optimizer")

    def make(params: Any) -> Any:
        try:
            opt = fn(params)
        except Exception as e:  # noqa: BLE001
            raise TrainscopeError(f"--optimizer {spec!r}: {fn.__name__}(params) raised {type(e).__name__}: {e}") \
                from None
        if lr is not None:
            for g in opt.param_groups:
                g["lr"] = lr
        return opt

    return make
