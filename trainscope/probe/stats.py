"""Tensor statistics, reduced on the tensor's device into one small vector.

Every function returns a 1-D float32 tensor in the order of `schema.LAYER_STATS`, so a
recorded step stacks all its vectors and copies them to the host once.
"""
from __future__ import annotations

import torch
from torch import Tensor

from trainscope.store.schema import LAYER_STATS

N_STATS = len(LAYER_STATS)
_I = {name: i for i, name in enumerate(LAYER_STATS)}

# Bounded activations and how "saturated" is measured on their output.
SATURATING = {"Sigmoid": "sigmoid", "Tanh": "tanh", "Softmax": "softmax", "Hardsigmoid": "sigmoid",
              "Hardtanh": "tanh", "Softsign": "tanh"}
# Modules whose outputs put units (channels) on dim 1 rather than the last dim.
_CHANNEL_FIRST = ("Conv", "BatchNorm2d", "BatchNorm3d", "Pool", "InstanceNorm", "GroupNorm", "Upsample")


def _nan() -> float:
    return float("nan")


def basic_stats(x: Tensor) -> Tensor:
    """norm, mean, std, max_abs, frac_zero, nonfinite, numel of a tensor (other slots NaN)."""
    x = x.detach()
    if x.dtype != torch.float32 and x.dtype != torch.float64:
        x = x.float()
    x = x.reshape(-1)
    n = x.numel()
    out = torch.full((N_STATS,), _nan(), dtype=torch.float32, device=x.device)
    if n == 0:
        out[_I["numel"]] = 0.0
        return out
    std, mean = torch.std_mean(x) if n > 1 else (torch.tensor(_nan(), device=x.device), x.mean())
    vals = torch.stack(
        [
            torch.linalg.vector_norm(x),
            mean,
            std,
            x.abs().max(),
            (x == 0).sum() / n,
            (~torch.isfinite(x)).sum().to(x.dtype),
        ]
    ).float()
    out[: len(vals)] = vals
    out[_I["numel"]] = float(n)
    return out


def unit_view(out: Tensor, module_type: str) -> Tensor:
    """(samples, units): units are channels for conv-like outputs, else the last dim."""
    if out.dim() <= 1:
        return out.reshape(-1, 1)
    if out.dim() >= 3 and (out.dim() >= 4 or module_type.startswith(_CHANNEL_FIRST)):
        return out.transpose(1, -1).reshape(-1, out.shape[1])
    return out.reshape(-1, out.shape[-1])


def activation_stats(out: Tensor, module_type: str) -> Tensor:
    """basic_stats plus frac_dead (units <= 0 for the whole batch) and frac_saturated."""
    x = out.detach()
    if x.dtype != torch.float32 and x.dtype != torch.float64:
        x = x.float()
    vec = basic_stats(x)
    if x.numel() == 0:
        return vec
    units = unit_view(x, module_type)
    vec[_I["frac_dead"]] = (units <= 0).all(dim=0).float().mean()
    kind = SATURATING.get(module_type)
    if kind == "sigmoid":
        vec[_I["frac_saturated"]] = ((x < 0.01) | (x > 0.99)).float().mean()
    elif kind == "tanh":
        vec[_I["frac_saturated"]] = (x.abs() > 0.99).float().mean()
    elif kind == "softmax":
        vec[_I["frac_saturated"]] = (units.max(dim=-1).values > 0.99).float().mean()
    return vec


def flat_cat(tensors: list[Tensor]) -> Tensor:
    """All tensors of a layer as one flat float32 vector (weights and bias together)."""
    if len(tensors) == 1:
        return tensors[0].detach().reshape(-1).float()
    return torch.cat([t.detach().reshape(-1).float() for t in tensors])


def update_stats(before: Tensor, after: Tensor) -> Tensor:
    """norm = ||dW||, ratio = ||dW|| / ||W_before||; other slots NaN."""
    out = torch.full((N_STATS,), _nan(), dtype=torch.float32, device=before.device)
    d = torch.linalg.vector_norm(after - before)
    w = torch.linalg.vector_norm(before)
    out[_I["norm"]] = d
    out[_I["ratio"]] = d / w
    out[_I["numel"]] = float(before.numel())
    return out


def global_norm(grads: list[Tensor]) -> Tensor:
    """L2 norm over all gradients (one fused call where torch offers it)."""
    if not grads:
        return torch.tensor(_nan())
    by_device: dict[torch.device, list[Tensor]] = {}
    for g in grads:
        by_device.setdefault(g.device, []).append(g)
    parts = []
    for device, gs in by_device.items():
        norms = torch._foreach_norm(gs)
        parts.append(torch.linalg.vector_norm(torch.stack([n.float() for n in norms])))
    if len(parts) == 1:
        return parts[0]
    return torch.linalg.vector_norm(torch.stack([p.to(parts[0].device) for p in parts]))
