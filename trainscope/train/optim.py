"""Optimizers: AdamW with decay only where it belongs, SGD with momentum/Nesterov, Adam.

Weight decay shrinks weights toward zero; on biases and normalization scales that only removes
freedom the model needs (a BatchNorm gamma decayed to 0 switches its unit off), so they go into a
second group with weight_decay=0 (as nanoGPT and timm do).
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from trainscope.errors import TrainscopeError
from trainscope.train.init import NORMS

OPTIMIZERS = ("adamw", "adam", "sgd")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: weights of Linear/Conv/Embedding (decayed) and biases + norm parameters (not)."""
    decay, no_decay = [], []
    seen: set[int] = set()
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            if isinstance(module, NORMS) or pname.endswith("bias") or p.ndim < 2:
                no_decay.append(p)
            else:
                decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def make_optimizer(
    model: nn.Module | Iterable[torch.nn.Parameter],
    name: str = "adamw",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = False,
    betas: tuple[float, float] = (0.9, 0.999),
    decay_norm_and_bias: bool = False,
) -> torch.optim.Optimizer:
    """Build an optimizer by name.

    adamw: decoupled weight decay (Loshchilov & Hutter), no decay on biases/norms unless
    decay_norm_and_bias. adam: weight_decay is *L2* (added to the gradient) — kept for reproducing the
    playbook's "Adam(weight_decay=...) is not AdamW" mistake. sgd: momentum (0 for plain SGD), Nesterov.
    """
    name = name.lower()
    if name not in OPTIMIZERS:
        raise TrainscopeError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    if lr <= 0:
        raise TrainscopeError(f"learning rate must be positive, not {lr}")
    if isinstance(model, nn.Module) and weight_decay and not decay_norm_and_bias and name != "adam":
        params: Any = param_groups(model, weight_decay)
    else:
        params = list(model.parameters()) if isinstance(model, nn.Module) else list(model)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)
    if nesterov and momentum <= 0:
        raise TrainscopeError("Nesterov momentum needs momentum > 0")
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
