"""JSON summaries of the model, optimizer, scheduler and criterion for meta.json."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from trainscope.probe.util import jsonable, module_type

OPTIMIZER_HPARAMS = ("lr", "weight_decay", "momentum", "nesterov", "betas", "eps", "dampening", "amsgrad",
                     "alpha", "centered", "maximize", "foreach", "fused")
# Keys schedulers add to param groups: they tell a warmup / one-cycle peak from the current value.
SCHEDULE_KEYS = ("initial_lr", "max_lr", "min_lr", "base_momentum", "max_momentum")


def model_summary(model: nn.Module, order: dict[str, int]) -> dict[str, Any]:
    modules = []
    for n, m in model.named_modules():
        direct = sum(p.numel() for p in m.parameters(recurse=False))
        is_leaf = not any(True for _ in m.children())
        if n and (is_leaf or direct):
            modules.append({"name": n, "type": module_type(m), "order": order.get(n, -1),
                            "n_params": int(direct), "training": bool(m.training)})
    modules.sort(key=lambda d: (d["order"] < 0, d["order"]))
    return {
        "class": module_type(model),
        "n_params": int(sum(p.numel() for p in model.parameters())),
        "n_trainable": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
        "modules": modules,
    }


def optimizer_summary(opt: torch.optim.Optimizer | None) -> dict[str, Any] | None:
    if opt is None:
        return None
    defaults = {k: jsonable(v) for k, v in opt.defaults.items() if k in OPTIMIZER_HPARAMS}
    groups = []
    for g in opt.param_groups:
        d = {k: jsonable(g[k]) for k in OPTIMIZER_HPARAMS + SCHEDULE_KEYS if k in g}
        d["n_params"] = int(sum(p.numel() for p in g["params"]))
        groups.append(d)
    return {"class": type(opt).__name__, "module": type(opt).__module__, "defaults": defaults,
            "param_groups": groups}


def scheduler_summary(sch: Any) -> dict[str, Any] | None:
    if sch is None:
        return None
    params = {}
    for k, v in vars(sch).items():
        if k.startswith("_") or k in ("optimizer", "base_lrs", "last_epoch", "verbose"):
            continue
        if isinstance(v, (bool, int, float, str)) or v is None:
            params[k] = jsonable(v)
        elif isinstance(v, (list, tuple)) and len(v) <= 16 and all(isinstance(x, (int, float)) for x in v):
            params[k] = jsonable(v)
    return {"class": type(sch).__name__, "params": params}


def criterion_summary(c: Any, found: dict[str, dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """The given criterion; without one, the first loss the probe saw (`found`: name -> criterion_input)."""
    if c is None:
        if not found:
            return None
        first = next(iter(found.values()))
        return {"class": first.get("criterion"), "params": {}, "found": first.get("source"),
                "function": first.get("function")}
    if isinstance(c, nn.Module):
        params = {k: jsonable(v) for k, v in vars(c).items()
                  if not k.startswith("_") and k != "training" and not isinstance(v, Tensor)}
        return {"class": type(c).__name__, "params": params}
    return {"class": getattr(c, "__name__", type(c).__name__), "params": {}}


def version() -> str:
    from trainscope import __version__

    return __version__
