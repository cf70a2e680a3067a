"""Tensor statistics, reduced on the tensor's device into one small vector.

Every function returns a 1-D float32 tensor in the order of `schema.LAYER_STATS`, so a
recorded step stacks all its vectors and copies them to the host once.

Speed matters here (this runs inside training steps): mean and std come from shifted moment sums
(`sum` and `dot` are single fast passes; `torch.std_mean` is ~60x slower on CPU), a layer's
tensors are combined from their partial sums instead of being concatenated, and the non-finite
count is only computed on CPU when the sum of squares says something is non-finite (free to ask
there; on accelerators it is computed unconditionally to avoid a sync).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from trainscope.store.schema import LAYER_STATS

N_STATS = len(LAYER_STATS)
_I = {name: i for i, name in enumerate(LAYER_STATS)}
NAN = float("nan")

# Bounded activations and how "saturated" is measured on their output.
SATURATING = {"Sigmoid": "sigmoid", "Tanh": "tanh", "Softmax": "softmax", "Hardsigmoid": "sigmoid",
              "Hardtanh": "tanh", "Softsign": "tanh"}
# Modules whose outputs put units (channels) on dim 1 rather than the last dim.
_CHANNEL_FIRST = ("Conv", "BatchNorm2d", "BatchNorm3d", "Pool", "InstanceNorm", "GroupNorm", "Upsample")


def _as_float(t: Tensor) -> Tensor:
    t = t.detach()
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _partials(t: Tensor, shift: Tensor) -> Tensor:
    """[sum x^2, sum (x-c), sum (x-c)^2, min, max, nonzero count, non-finite count] of one flat tensor."""
    d = t - shift
    sq = t.dot(t)
    lo, hi = torch.aminmax(t)
    nonzero = torch.count_nonzero(t)
    if t.device.type == "cpu" and bool(torch.isfinite(sq)):
        bad = torch.zeros((), dtype=nonzero.dtype)
    else:
        bad = torch.count_nonzero(t * 0)  # x*0 is NaN exactly where x is NaN or Inf
    return torch.stack([sq, d.sum(), d.dot(d), lo, hi, nonzero.to(t.dtype), bad.to(t.dtype)])


def basic_stats(tensors: Tensor | Sequence[Tensor]) -> Tensor:
    """norm, mean, std (unbiased), max_abs, frac_zero, nonfinite, numel over all the given tensors."""
    if isinstance(tensors, Tensor):
        tensors = [tensors]
    flats = [_as_float(t).reshape(-1) for t in tensors if t.numel() > 0]
    device = tensors[0].device if len(tensors) else torch.device("cpu")
    out = torch.full((N_STATS,), NAN, dtype=torch.float32, device=device)
    n = sum(t.numel() for t in flats)
    out[_I["numel"]] = float(n)
    if n == 0:
        return out
    if flats[0].dtype != torch.float32 or any(t.dtype != flats[0].dtype for t in flats):
        flats = [t.float() for t in flats]
    shift = flats[0][0]  # any sample near the data's scale keeps the moment sums well conditioned
    parts = _partials(flats[0], shift) if len(flats) == 1 else None
    if parts is None:
        p = torch.stack([_partials(t, shift) for t in flats])
        parts = torch.stack([p[:, 0].sum(), p[:, 1].sum(), p[:, 2].sum(), p[:, 3].min(), p[:, 4].max(),
                             p[:, 5].sum(), p[:, 6].sum()])
    sq, s1, s2, lo, hi, nonzero, bad = parts.unbind()
    mean_shifted = s1 / n
    var = (s2 - s1 * mean_shifted) / (n - 1) if n > 1 else s2 * NAN
    vals = torch.stack([
        sq.sqrt(),
        mean_shifted + shift,
        var.clamp_min(0).sqrt(),
        torch.maximum(lo.abs(), hi.abs()),
        1.0 - nonzero / n,
        bad,
    ])
    out[: len(vals)] = vals.float()
    return out


def unit_dim(out: Tensor, module_type: str) -> int:
    """Units are channels (dim 1) for conv-like outputs, else the last dim."""
    if out.dim() >= 4 or (out.dim() == 3 and module_type.startswith(_CHANNEL_FIRST)):
        return 1
    return out.dim() - 1


def activation_stats(out: Tensor, module_type: str) -> Tensor:
    """basic_stats plus frac_dead (units <= 0 for the whole batch) and frac_saturated."""
    x = _as_float(out)
    vec = basic_stats(x)
    if x.numel() == 0:
        return vec
    if x.dim() <= 1:
        x = x.reshape(-1, 1)
    ud = unit_dim(x, module_type)
    others = tuple(d for d in range(x.dim()) if d != ud)
    vec[_I["frac_dead"]] = (x.amax(dim=others) <= 0).float().mean()
    kind = SATURATING.get(module_type)
    if kind == "sigmoid":
        vec[_I["frac_saturated"]] = ((x < 0.01) | (x > 0.99)).float().mean()
    elif kind == "tanh":
        vec[_I["frac_saturated"]] = (x.abs() > 0.99).float().mean()
    elif kind == "softmax":
        vec[_I["frac_saturated"]] = (x.amax(dim=ud) > 0.99).float().mean()
    return vec


def update_stats(before: Sequence[Tensor], after: Sequence[Tensor]) -> Tensor:
    """norm = ||dW||, ratio = ||dW|| / ||W_before|| over a layer's tensors; other slots NaN."""
    out = torch.full((N_STATS,), NAN, dtype=torch.float32, device=before[0].device)
    b = [_as_float(t) for t in before]
    a = [_as_float(t) for t in after]
    d2 = torch.stack([(x - y).pow(2).sum() for x, y in zip(a, b)]).sum()
    w2 = torch.stack([y.dot(y) if y.dim() == 1 else y.reshape(-1).dot(y.reshape(-1)) for y in b]).sum()
    out[_I["norm"]] = d2.sqrt()
    out[_I["ratio"]] = (d2 / w2).sqrt()
    out[_I["numel"]] = float(sum(t.numel() for t in b))
    return out


def global_norm(grads: list[Tensor]) -> Tensor:
    """L2 norm over all gradients (one fused call per device)."""
    if not grads:
        return torch.tensor(NAN)
    by_device: dict[torch.device, list[Tensor]] = {}
    for g in grads:
        by_device.setdefault(g.device, []).append(g)
    parts = []
    for gs in by_device.values():
        norms = torch._foreach_norm(gs)
        parts.append(torch.linalg.vector_norm(torch.stack([n.float() for n in norms])))
    if len(parts) == 1:
        return parts[0]
    return torch.linalg.vector_norm(torch.stack([p.to(parts[0].device) for p in parts]))
