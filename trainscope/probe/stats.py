"""Tensor statistics: raw moment sums on the device, final numbers on the host.

Inside a training step the probe only launches a handful of reductions per tensor (`sum`, `dot`,
`aminmax`, `count_nonzero`) and stacks their 0-d results into one small *raw* vector; every raw
vector of a flush is concatenated and copied to the host once, where numpy turns them into the
statistics of `schema.LAYER_STATS`. Scalar arithmetic on the device would cost a kernel launch
(several microseconds on CPU) per operation; on the host it is free.

Raw layouts (one row per tensor of a layer; a layer's tensors share one shift so rows add up):
  moments:    shift, sum x^2, sum (x-c), sum (x-c)^2, min, max, nonzero count, non-finite count
  activation: moments + units dead for the whole batch, saturated elements
  update:     sum (after-before)^2, sum before^2
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from trainscope.probe import host
from trainscope.store.schema import LAYER_STATS

N_STATS = len(LAYER_STATS)
_I = {name: i for i, name in enumerate(LAYER_STATS)}
NAN = float("nan")
N_MOMENTS = 8
N_ACTIVATION = N_MOMENTS + 2
N_UPDATE = 2

# Bounded activations and how "saturated" is measured on their output.
SATURATING = {"Sigmoid": "sigmoid", "Tanh": "tanh", "Softmax": "softmax", "Hardsigmoid": "sigmoid",
              "Hardtanh": "tanh", "Softsign": "tanh"}
# Modules whose outputs put units (channels) on dim 1 rather than the last dim.
_CHANNEL_FIRST = ("Conv", "BatchNorm2d", "BatchNorm3d", "Pool", "InstanceNorm", "GroupNorm", "Upsample")


def values_of(t: Tensor) -> Tensor:
    """The numbers a statistic is taken over: a sparse tensor's coalesced stored values (its norm is
    the dense tensor's norm), a complex tensor's magnitudes (no "discards the imaginary part" cast)."""
    t = t.detach()
    if t.layout == torch.sparse_coo:
        t = t.coalesce().values()
    elif t.layout != torch.strided:  # CSR/CSC/BSR/BSC
        t = t.values()
    if t.is_complex():
        t = t.abs()
    return t


def _flat_float(t: Tensor) -> Tensor:
    t = values_of(t).reshape(-1)
    return t if t.dtype == torch.float32 else t.float()


def _moments(t: Tensor, shift: Tensor) -> list[Tensor]:
    d = t - shift  # the shift keeps the variance exact when |mean| >> std
    sq = t.dot(t)
    lo, hi = torch.aminmax(t)
    nonzero = torch.count_nonzero(t).to(t.dtype)
    if host.free(t) and math.isfinite(sq.item()):
        bad = sq * 0.0  # asking is free on CPU: skip the count when everything is finite
    else:
        bad = torch.count_nonzero(t * 0).to(t.dtype)  # x*0 is NaN exactly where x is NaN or Inf
    return [shift, sq, d.sum(), d.dot(d), lo, hi, nonzero, bad]


def raw_moments(tensors: Tensor | Sequence[Tensor]) -> tuple[Tensor, tuple[int, ...]]:
    """Raw moments of a layer's tensors (k x 8, flattened) and their element counts."""
    if isinstance(tensors, Tensor):
        tensors = [tensors]
    flats = [_flat_float(t) for t in tensors if t.numel() > 0]
    if not flats:
        return torch.full((N_MOMENTS,), NAN), (0,)
    shift = flats[0][0]
    parts = [v for t in flats for v in _moments(t, shift)]
    return torch.stack(parts), tuple(t.numel() for t in flats)


def unit_dim(out: Tensor, module_type: str) -> int:
    """Units are channels (dim 1) for conv-like outputs, else the last dim."""
    if out.dim() >= 4 or (out.dim() == 3 and module_type.startswith(_CHANNEL_FIRST)):
        return 1
    return out.dim() - 1


def raw_activation(out: Tensor, module_type: str) -> tuple[Tensor, int, int]:
    """Raw moments + dead-unit and saturated counts of a module output; (raw, numel, units)."""
    x = values_of(out)
    if x.dtype != torch.float32:
        x = x.float()
    if x.dim() <= 1:
        x = x.reshape(-1, 1)
    flat = x.reshape(-1)
    if flat.numel() == 0:
        return torch.full((N_ACTIVATION,), NAN), 0, 0
    parts = _moments(flat, flat[0])
    ud = unit_dim(x, module_type)
    others = tuple(d for d in range(x.dim()) if d != ud)
    parts.append(torch.count_nonzero(x.amax(dim=others) <= 0).to(x.dtype))
    kind = SATURATING.get(module_type)
    units = x.shape[ud]
    if kind == "sigmoid":
        parts.append(torch.count_nonzero((x < 0.01) | (x > 0.99)).to(x.dtype))
    elif kind == "tanh":
        parts.append(torch.count_nonzero(x.abs() > 0.99).to(x.dtype))
    elif kind == "softmax":  # rows whose largest probability is > 0.99
        parts.append(torch.count_nonzero(x.amax(dim=ud) > 0.99).to(x.dtype))
        units = -(flat.numel() // units)  # negative: saturation is per row, not per element
    else:
        parts.append(flat[0] * NAN)
    return torch.stack(parts), flat.numel(), units


def raw_update(before: Sequence[Tensor], after: Sequence[Tensor]) -> Tensor:
    """sum (after-before)^2 and sum before^2 over a layer's tensors."""
    parts = []
    for b, a in zip(before, after):
        b, a = b.detach().reshape(-1), a.detach().reshape(-1)
        d = a - b  # complex weights: the magnitude of the complex change, not the change of magnitudes
        b, d = _flat_float(b), _flat_float(d)
        parts += [d.dot(d), b.dot(b)]
    return torch.stack(parts)


def finalize_moments(raw: np.ndarray, numels: Sequence[int]) -> list[float]:
    """LAYER_STATS values from raw moment rows (k x 8) of one layer."""
    out = [NAN] * N_STATS
    n = int(sum(numels))
    out[_I["numel"]] = float(n)
    if n == 0:
        return out
    r = np.asarray(raw, dtype=np.float64).reshape(-1, N_MOMENTS)
    shift = r[0, 0]
    sq, s1, s2 = r[:, 1].sum(), r[:, 2].sum(), r[:, 3].sum()
    lo, hi = r[:, 4].min(), r[:, 5].max()
    nonzero, bad = r[:, 6].sum(), r[:, 7].sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_shifted = s1 / n
        var = (s2 - s1 * mean_shifted) / (n - 1) if n > 1 else NAN
        out[_I["norm"]] = float(np.sqrt(sq))
        out[_I["mean"]] = float(mean_shifted + shift)
        out[_I["std"]] = float(np.sqrt(max(var, 0.0))) if np.isfinite(var) else float(var)
        out[_I["max_abs"]] = float(max(abs(lo), abs(hi))) if np.isfinite(lo) and np.isfinite(hi) else NAN
    out[_I["frac_zero"]] = float(1.0 - nonzero / n)
    out[_I["nonfinite"]] = float(bad)
    return out


def finalize_activation(raw: np.ndarray, numel: int, units: int) -> list[float]:
    r = np.asarray(raw, dtype=np.float64).reshape(-1)
    out = finalize_moments(r[:N_MOMENTS], (numel,))
    if numel:
        n_units = abs(units)
        out[_I["frac_dead"]] = float(r[N_MOMENTS] / n_units) if n_units else NAN
        sat = r[N_MOMENTS + 1]
        out[_I["frac_saturated"]] = float(sat / (-units if units < 0 else numel)) if np.isfinite(sat) else NAN
    return out


def finalize_update(raw: np.ndarray, numel: int) -> list[float]:
    r = np.asarray(raw, dtype=np.float64).reshape(-1, N_UPDATE)
    d2, w2 = r[:, 0].sum(), r[:, 1].sum()
    out = [NAN] * N_STATS
    out[_I["norm"]] = float(np.sqrt(d2))
    with np.errstate(invalid="ignore", divide="ignore"):
        out[_I["ratio"]] = float(np.sqrt(d2 / w2))
    out[_I["numel"]] = float(numel)
    return out


# Convenience forms (one tensor in, final statistics out) for users and tests.
def basic_stats(tensors: Tensor | Sequence[Tensor]) -> Tensor:
    raw, numels = raw_moments(tensors)
    return torch.tensor(finalize_moments(raw.cpu().numpy(), numels))


def activation_stats(out: Tensor, module_type: str) -> Tensor:
    raw, numel, units = raw_activation(out, module_type)
    return torch.tensor(finalize_activation(raw.cpu().numpy(), numel, units))


def update_stats(before: Sequence[Tensor], after: Sequence[Tensor]) -> Tensor:
    return torch.tensor(finalize_update(raw_update(before, after).cpu().numpy(),
                                        sum(t.numel() for t in before)))


def global_norm(grads: list[Tensor]) -> Tensor:
    """L2 norm over all gradients (one fused call per device)."""
    if not grads:
        return torch.tensor(NAN)
    by_device: dict[torch.device, list[Tensor]] = {}
    for g in grads:
        if g.layout != torch.strided or g.is_complex():
            g = values_of(g)  # sparse (e.g. Embedding(sparse=True)) and complex gradients
        by_device.setdefault(g.device, []).append(g)
    parts = []
    for gs in by_device.values():
        norms = torch._foreach_norm(gs)
        parts.append(torch.linalg.vector_norm(torch.stack([n.float() for n in norms])))
    if len(parts) == 1:
        return parts[0]
    return torch.linalg.vector_norm(torch.stack([p.to(parts[0].device) for p in parts]))


def tensor_norms(grads: list[Tensor]) -> tuple[Tensor, list[tuple[Tensor, list[int]]]]:
    """The global L2 norm and every tensor's norm: one fused `_foreach_norm` per device.

    Returns (global norm, [(stacked per-tensor norms, their indices in `grads`) per device])."""
    if not grads:
        return torch.tensor(NAN), []
    grads = [values_of(g) if g.layout != torch.strided or g.is_complex() else g for g in grads]  # as global_norm
    by_device: dict[torch.device, list[int]] = {}
    for i, g in enumerate(grads):
        by_device.setdefault(g.device, []).append(i)
    per_device, parts = [], []
    for idx in by_device.values():
        norms = torch.stack([n.float() for n in torch._foreach_norm([grads[i] for i in idx])])
        per_device.append((norms, idx))
        parts.append(torch.linalg.vector_norm(norms))
    if len(parts) == 1:
        return parts[0], per_device
    return torch.linalg.vector_norm(torch.stack([p.to(parts[0].device) for p in parts])), per_device


def finalize_norms(raw: np.ndarray, numel: int) -> list[float]:
    """A layer's gradient norm from its tensors' norms (kind `grad_norm`: only norm and numel)."""
    out = [NAN] * N_STATS
    r = np.asarray(raw, dtype=np.float64).reshape(-1)
    out[_I["norm"]] = float(np.sqrt(np.sum(r * r)))
    out[_I["numel"]] = float(numel)
    return out


def raw_update_sampled(before: Sequence[Tensor], after: Sequence[Tensor],
                       index: Sequence[Tensor | None]) -> Tensor:
    """Like raw_update, where `before[i]` holds only the elements at `index[i]` (None: all of them).

    A sampled tensor's sums are scaled by numel / samples, so exact and sampled tensors of one layer add up."""
    parts = []
    for b, a, idx in zip(before, after, index):
        a = a.detach().reshape(-1)
        if idx is not None:
            scale = a.numel() / idx.numel()
            a = a.index_select(0, idx)
        else:
            scale = 1.0
        d = a - b.detach().reshape(-1)  # complex weights: the magnitude of the complex change, as raw_update
        b, d = _flat_float(b), _flat_float(d)
        parts += [d.dot(d) * scale, b.dot(b) * scale]
    return torch.stack(parts)
