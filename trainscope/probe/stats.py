"""Tensor statistics: raw moment sums on the device, final numbers on the host.

Inside a training step the probe reduces all tensors of one kind at once (`MomentReducer`): their
values are packed, zero-padded, into the rows of one scratch matrix (ROW elements a row; bounded
chunks of it for large models) and every reduction is one row-wise call over all of them (`norm`,
`sum`, `amin`, `amax`, a nonzero count), so a step costs a constant number of kernel launches, not a
handful per tensor. The rows are added up per tensor; on the host (CPU: reading is free) with numpy,
on an accelerator with two segment reductions on the device. Every raw vector of a flush is
concatenated and copied to the host once, where numpy turns them into the statistics of
`schema.LAYER_STATS`.

Raw layouts (one row per tensor of a layer; each row has its own shift, `finalize_moments` combines them):
  moments:    shift, sum x^2, sum (x-c), sum (x-c)^2, min, max, nonzero count, non-finite count
  activation: moments + units dead for the whole batch, saturated elements
  update:     sum (after-before)^2, sum before^2
Only max(|min|, |max|) is read from min and max: a padded row's zeros may show in them.

The shift c keeps the variance exact when |mean| >> std. On the host path c is 0 (the plain sums,
one pass fewer) unless a tensor's own sums say mean^2 > SHIFT_RATIO * variance; then that tensor's
shifted sums are taken again with c = its first element. On an accelerator (no host read inside a
step) every row is shifted by its tensor's first element.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

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


# ------------------------------------------------------------------------------------------ batched core
ROW = 512  # elements per row of the packed scratch matrix
SCRATCH_FRACTION = 0.005  # a reducer's scratch: at most this share of the model's parameter bytes...
SCRATCH_MIN_BYTES = 4 << 20  # ...or this much, whichever is larger
SMALL_NUMEL = 4096  # host path: smaller tensors are reduced together, in float64
SHIFT_RATIO = 16.0  # host path: plain sums while mean^2 <= SHIFT_RATIO * variance (float32 error ~ 17 eps)
_BYTES_PER_ELEMENT = 5  # accelerator path: the packed float32 row and a byte of the isfinite mask


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """A small host tensor (indices, counts) on `device` without a host sync: on CUDA through pinned memory
    and a non-blocking copy (a pageable copy would wait for the stream); made once and cached by callers."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)  # the caching host allocator keeps it until copied
    return t.to(device)


def scratch_bytes(param_bytes: int) -> int:
    """The scratch memory one reduction may hold at once, for a model of `param_bytes`."""
    return max(int(SCRATCH_FRACTION * param_bytes), SCRATCH_MIN_BYTES)


class _Plan:
    """How a list of tensors of given sizes is packed into rows, cached per list of sizes."""

    def __init__(self, numels: tuple[int, ...], chunk_rows: int) -> None:
        self.numels = numels
        rows = [-(-n // ROW) for n in numels]
        self.row_start = np.cumsum([0] + rows[:-1]).astype(np.int64)
        self.total_rows = int(sum(rows))
        self.multi_row = any(r > 1 for r in rows)
        self.rows = rows
        self.chunks: list[tuple[int, int, list[tuple[int, int, int, int]]]] = []  # (row0, row1, pieces)
        r0, pieces, used = 0, [], 0
        for i, (n, r) in enumerate(zip(numels, rows)):
            done = 0
            while done < r:
                take = min(r - done, chunk_rows - used)
                a, b = done * ROW, min((done + take) * ROW, n)
                pad = (done + take) * ROW - b
                pieces.append((i, a, b, pad))
                done += take
                used += take
                if used == chunk_rows:
                    self.chunks.append((r0, r0 + used, pieces))
                    r0, pieces, used = r0 + used, [], 0
        if pieces:
            self.chunks.append((r0, r0 + used, pieces))
        self.dev: dict[Any, Any] = {}  # device tensors of the accelerator path, made once

    def device_tensors(self, device: torch.device) -> tuple[Tensor, Tensor, list[tuple[Tensor, Tensor] | None]]:
        """(row -> item, rows per item, per chunk: its partial rows and their pad masks, or None) on `device`."""
        t = self.dev.get(device)
        if t is None:
            row_item = np.repeat(np.arange(len(self.numels)), self.rows)
            last = {int(s + r - 1): n % ROW for s, r, n in zip(self.row_start, self.rows, self.numels) if n % ROW}
            per_chunk: list[tuple[Tensor, Tensor] | None] = []
            for r0, r1, _ in self.chunks:
                rows = [r for r in range(r0, r1) if r in last]
                if not rows:
                    per_chunk.append(None)
                    continue
                fill = torch.tensor([last[r] for r in rows]).unsqueeze(1)
                mask = torch.arange(ROW).unsqueeze(0) >= fill  # True on the pads
                per_chunk.append((to_device(torch.as_tensor([r - r0 for r in rows], dtype=torch.long), device),
                                  to_device(mask, device)))
            t = (to_device(torch.as_tensor(row_item, dtype=torch.long), device),
                 to_device(torch.as_tensor(self.rows, dtype=torch.long), device), per_chunk)
            self.dev[device] = t
        return t


class MomentReducer:
    """Raw moment rows (stats.py layout) for many tensors at once, in a constant number of kernel launches.

    `rows(tensors)` returns one row of N_MOMENTS per tensor: a float64 numpy array where reading the
    device is free (CPU), else a float32 tensor on the tensors' device. Peak scratch: `budget` bytes."""

    def __init__(self, budget: int = SCRATCH_MIN_BYTES) -> None:
        self.budget = budget
        self.chunk_rows = max(1, budget // (_BYTES_PER_ELEMENT * ROW))
        self._plans: dict[tuple[int, ...], _Plan] = {}
        self._zeros: dict[torch.device, Tensor] = {}
        self._small: dict[Any, Tensor] = {}  # small index / scale tensors on the device, made once

    def plan(self, numels: tuple[int, ...]) -> _Plan:
        p = self._plans.get(numels)
        if p is None:
            if len(self._plans) >= 16:  # shapes that change every step (last batches...): keep a few
                self._plans.pop(next(iter(self._plans)))
            p = self._plans[numels] = _Plan(numels, self.chunk_rows)
        return p

    def _pack(self, flats: Sequence[Tensor], pieces: list[tuple[int, int, int, int]], rows: int,
              copy: bool = False) -> Tensor:
        """The pieces' values as a (rows, ROW) float32 matrix: a view of the tensor itself where one whole
        unpadded piece allows it and `copy` is off; else packed into the thread's scratch (CPU) or a new one."""
        dev = flats[0].device
        zero = self._zeros.get(dev)
        if zero is None:
            zero = self._zeros[dev] = torch.zeros(1, device=dev)
        parts = []
        for i, a, b, pad in pieces:
            f = flats[i]
            parts.append(f if a == 0 and b == f.numel() else f[a:b])
            if pad:
                parts.append(zero.expand(pad))
        if len(parts) == 1 and not copy and parts[0].dtype == torch.float32:
            return parts[0].view(rows, ROW)
        m = torch.cat(parts) if len(parts) > 1 else parts[0].clone()
        return (m if m.dtype == torch.float32 else m.float()).view(rows, ROW)

    def rows(self, tensors: Sequence[Tensor]) -> np.ndarray | Tensor:
        """One raw moment row per tensor."""
        if all(t.layout == torch.strided and t.device.type == "cpu" and t.numel() > 0 for t in tensors) \
                and host.free(tensors[0]):
            return self._host(tensors)  # the common CPU case, read in place
        flats = [values_of(t).reshape(-1) for t in tensors]
        keep = [i for i, f in enumerate(flats) if f.numel() > 0]
        devices = {flats[i].device for i in keep}
        if len(keep) < len(flats) or len(devices) > 1:
            return self._mixed(flats, keep)
        if host.free(flats[0]):
            return self._host(flats)
        return self._device(flats)

    def _mixed(self, flats: list[Tensor], keep: list[int]) -> np.ndarray | Tensor:
        """Empty tensors (a NaN row) or tensors on several devices: one reduction per device."""
        by_dev: dict[torch.device, list[int]] = {}
        for i in keep:
            by_dev.setdefault(flats[i].device, []).append(i)
        if all(host.free(flats[idx[0]]) for idx in by_dev.values()):
            out = np.full((len(flats), N_MOMENTS), NAN)
            for idx in by_dev.values():
                out[idx] = self._host([flats[i] for i in idx])
            return out
        dev = flats[keep[0]].device if keep else flats[0].device
        out_t = torch.full((len(flats), N_MOMENTS), NAN, device=dev)
        for idx in by_dev.values():
            r = self._device([flats[i] for i in idx])
            out_t[to_device(torch.as_tensor(idx), dev)] = r.to(dev)
        return out_t

    # ---------------------------------------------------------------- host path (CPU)
    def _host(self, flats: Sequence[Tensor]) -> np.ndarray:
        """CPU: large tensors read in place through numpy views (no packing pass): BLAS dot, SIMD min / max and
        nonzero count, torch's cascade sum, a handful of C calls each; the small ones (biases, norms) copied
        together into one float64 vector and reduced per segment, a fixed number of calls for all of them."""
        out = np.empty((len(flats), N_MOMENTS))
        small = []
        for k, f in enumerate(flats):
            if f.numel() < SMALL_NUMEL:
                small.append(k)
            else:
                out[k] = self._host_row(f)
        if len(small) == 1:
            out[small[0]] = self._host_row(flats[small[0]])
        elif small:
            out[small] = _small_rows([_np(flats[k]) for k in small])
        return out

    def _host_row(self, t: Tensor, a: np.ndarray | None = None) -> list[float]:
        """Raw moments of a CPU tensor, `a` its flat numpy view if the caller has it."""
        if a is None:
            a = _np(t)
        n = a.size
        sq = float(a.dot(a))
        # torch's vectorized cascade sum: 3x faster than numpy's pairwise one on large float32 tensors
        s1 = float(t.detach().sum()) if n >= 4096 and t.dtype is torch.float32 else float(a.sum())
        lo, hi = float(a.min()), float(a.max())
        step = self.budget if n > self.budget else n  # the bool temporaries of huge tensors: in pieces
        if step == n:
            nz = float(np.count_nonzero(a != 0))  # NaN counts, -0.0 does not (as astype(bool)); 2x faster
        else:
            nz = float(sum(np.count_nonzero(a[i:i + step] != 0) for i in range(0, n, step)))
        bad = 0.0 if math.isfinite(sq) else float(sum(np.count_nonzero(~np.isfinite(a[i:i + step]))
                                                      for i in range(0, n, step)))
        mean = s1 / n
        var = sq / n - mean * mean
        if mean != 0.0 and math.isfinite(var) and mean * mean > SHIFT_RATIO * max(var, 0.0):
            # |mean| >> std: the plain sums would lose the variance; shifted by the first value, in float64
            c = float(a[0])
            s1 = s2 = 0.0
            step = max(1, self.budget // 8)
            for i in range(0, n, step):
                d = a[i:i + step].astype(np.float64)
                d -= c
                s1 += float(d.sum())
                s2 += float(d.dot(d))
            return [c, sq, s1, s2, lo, hi, nz, bad]
        return [0.0, sq, s1, sq, lo, hi, nz, bad]

    # ---------------------------------------------------------------- accelerator path (no host read)
    def _device(self, flats: list[Tensor]) -> Tensor:
        plan = self.plan(tuple(f.numel() for f in flats))
        dev = flats[0].device
        row_item, lengths, partial = plan.device_tensors(dev)
        c_item = torch.cat([f[:1] for f in flats]).float()
        c_row = c_item.index_select(0, row_item)
        parts = []
        for (r0, r1, pieces), part in zip(plan.chunks, partial):
            m = self._pack(flats, pieces, r1 - r0, copy=True)  # shifted in place below
            c = c_row[r0:r1].unsqueeze(1)
            sq = torch.linalg.vector_norm(m, dim=1).square_()
            lo, hi = m.amin(1), m.amax(1)
            nz = torch.linalg.vector_norm(m, 0, dim=1)  # ord 0: the nonzero count (NaN counts)
            bad = torch.isfinite(m).logical_not_().sum(1, dtype=torch.float32)
            if part is not None:  # the last row of a tensor: its zero pads must stay out of the shifted sums
                sel, pad_mask = part
                mp = m.index_select(0, sel)
            m.sub_(c)
            s1, s2 = m.sum(1), torch.linalg.vector_norm(m, dim=1).square_()
            if part is not None:
                mp.sub_(c.index_select(0, sel)).masked_fill_(pad_mask, 0.0)
                s1 = s1.index_copy(0, sel, mp.sum(1))
                s2 = s2.index_copy(0, sel, torch.linalg.vector_norm(mp, dim=1).square_())
            parts.append(torch.stack([sq, s1, s2, nz, bad, -lo, hi], dim=1))
        per_row = parts[0] if len(parts) == 1 else torch.cat(parts)
        if plan.multi_row:
            sums = torch.segment_reduce(per_row[:, :5], "sum", lengths=lengths, axis=0)
            ext = torch.segment_reduce(per_row[:, 5:], "max", lengths=lengths, axis=0)
        else:
            sums, ext = per_row[:, :5], per_row[:, 5:]
        return torch.stack([c_item, sums[:, 0], sums[:, 1], sums[:, 2], -ext[:, 0], ext[:, 1], sums[:, 3],
                            sums[:, 4]], dim=1)

    # ---------------------------------------------------------------- module outputs
    def activation_rows(self, outs: Sequence[Tensor], types: Sequence[str]) -> tuple[np.ndarray | Tensor,
                                                                                   list[tuple[int, int]]]:
        """Raw activation rows (N_ACTIVATION each) of module outputs, and each one's (numel, units)."""
        xs = []
        for out in outs:
            x = values_of(out)
            xs.append(x.reshape(-1, 1) if x.dim() <= 1 else x)
        mom = self.rows(xs)
        maxes, info, sat, n_units = [], [], [], []
        for x, typ in zip(xs, types):
            ud = unit_dim(x, typ)
            units = x.shape[ud]
            n_units.append(units)
            if ud == x.dim() - 1:
                maxes.append(x.reshape(-1, units).amax(0))
            else:
                maxes.append(x.amax(dim=tuple(d for d in range(x.dim()) if d != ud)))
            kind = SATURATING.get(typ)
            if kind is not None:
                sat.append((len(info), _saturated(x, kind, ud)))
                if kind == "softmax":
                    units = -(x.numel() // units)  # negative: saturation is per row, not per element
            info.append((x.numel(), units))
        if isinstance(mom, np.ndarray):
            dead = np.asarray([float(np.count_nonzero(_np(m) <= 0)) for m in maxes])
            sv = np.full(len(xs), NAN)
            for i, v in sat:
                sv[i] = float(v)
            return np.concatenate([mom, dead[:, None], sv[:, None]], axis=1), info
        unit_max = torch.cat(maxes) if len(maxes) > 1 else maxes[0]
        dev = unit_max.device
        lengths = self._lengths(tuple(n_units), dev)
        dead_t = torch.segment_reduce((unit_max <= 0).float(), "sum", lengths=lengths)
        s_t = torch.full((len(xs),), NAN, device=dev)
        if sat:
            s_t = s_t.index_copy(0, self._lengths(tuple(i for i, _ in sat), dev),
                                 torch.stack([v.float() for _, v in sat]))
        return torch.cat([mom, dead_t.unsqueeze(1), s_t.unsqueeze(1)], dim=1), info

    def activation_row(self, out: Tensor, typ: str) -> tuple[np.ndarray, int, int]:
        """One module output on the host path (CPU), measured at its hook while it is still in cache:
        (raw row, numel, units)."""
        x = values_of(out)
        if x.dim() <= 1:
            x = x.reshape(-1, 1)
        ud = unit_dim(x, typ)
        units = x.shape[ud]
        a = _np(x)
        row = self._host_row(x, a)
        if ud == x.dim() - 1 and a.size == x.numel():  # units last: a (rows, units) view of the same numbers
            m = a.reshape(-1, units).max(axis=0)
        else:
            m = _np(x.amax(dim=tuple(d for d in range(x.dim()) if d != ud)))
        row.append(float(np.count_nonzero(m <= 0)))
        kind = SATURATING.get(typ)
        row.append(NAN if kind is None else float(_saturated(x, kind, ud)))
        if kind == "softmax":
            units = -(x.numel() // units)  # negative: saturation is per row, not per element
        return np.array(row), x.numel(), units

    def _lengths(self, values: tuple[int, ...], device: torch.device) -> Tensor:
        key = (values, device)
        t = self._small.get(key)
        if t is None:
            if len(self._small) >= 64:
                self._small.pop(next(iter(self._small)))
            t = self._small[key] = to_device(torch.as_tensor(values, dtype=torch.long), device)
        return t

    # ---------------------------------------------------------------- updates
    def update_rows(self, before: np.ndarray | Tensor, after: np.ndarray | Tensor, lengths: tuple[int, ...],
                    scales: tuple[float, ...]) -> np.ndarray | Tensor:
        """sum (after-before)^2 and sum before^2 (times its scale) of each of the concatenated segments
        (snapshot_values before and after the step)."""
        if isinstance(before, np.ndarray) or host.free(before):
            at_scale = self._small.get(("host", lengths, scales))
            if at_scale is None:
                at_scale = self._small[("host", lengths, scales)] = (np.cumsum((0,) + lengths[:-1]),
                                                                     np.asarray(scales)[:, None])
            b = np.asarray(before, dtype=np.float64)
            d = np.asarray(after, dtype=np.float64)
            d -= b
            d *= d
            b *= b
            out = np.empty((len(lengths), 2))
            out[:, 0] = np.add.reduceat(d, at_scale[0])
            out[:, 1] = np.add.reduceat(b, at_scale[0])
            out *= at_scale[1]
            return out
        d = (after - before).float()
        b = before.float()
        sums = torch.segment_reduce(torch.stack([d * d, b * b], dim=1), "sum",
                                    lengths=self._lengths(lengths, before.device), axis=0)
        return sums * self._scales(scales, before.device).unsqueeze(1)

    def _scales(self, values: tuple[float, ...], device: torch.device) -> Tensor:
        key = ("scale", values, device)
        t = self._small.get(key)
        if t is None:
            t = self._small[key] = to_device(torch.as_tensor(values, dtype=torch.float32), device)
        return t


def _small_rows(arrays: list[np.ndarray]) -> np.ndarray:
    """Raw moment rows of small tensors, all in one float64 vector: segment sums, each tensor shifted by
    its first value (exact in float64)."""
    v = np.concatenate(arrays).astype(np.float64)
    lengths = np.asarray([a.size for a in arrays])
    at = np.cumsum(lengths) - lengths
    c = v[at]
    d = v - np.repeat(c, lengths)
    out = np.empty((len(arrays), N_MOMENTS))
    out[:, 0] = c
    out[:, 1] = np.add.reduceat(v * v, at)
    out[:, 2] = np.add.reduceat(d, at)
    out[:, 3] = np.add.reduceat(d * d, at)
    out[:, 4] = np.minimum.reduceat(v, at)
    out[:, 5] = np.maximum.reduceat(v, at)
    out[:, 6] = np.add.reduceat(v != 0, at, dtype=np.int64)
    out[:, 7] = 0.0 if np.isfinite(out[:, 1].sum()) else np.add.reduceat(~np.isfinite(v), at, dtype=np.int64)
    return out


def _np(t: Tensor) -> np.ndarray:
    """A real CPU tensor's values as a flat numpy array: a view where the layout allows (float32 / float64)."""
    x = t.detach()
    if x.dtype is not torch.float32 and x.dtype is not torch.float64:
        x = values_of(x).float()
    return x.numpy().reshape(-1)


def _saturated(x: Tensor, kind: str, ud: int) -> Tensor:
    if kind == "sigmoid":
        return torch.count_nonzero((x < 0.01) | (x > 0.99)).float()
    if kind == "tanh":
        return torch.count_nonzero(x.abs() > 0.99).float()
    return torch.count_nonzero(x.amax(dim=ud) > 0.99).float()  # softmax: rows whose largest probability is > 0.99


def snapshot_values(params: Sequence[Tensor], index: Sequence[Tensor | None]) -> np.ndarray | Tensor:
    """A new copy of every parameter's values at its fixed sample (all of it where the index is None),
    concatenated: a numpy array on CPU (reading is free), else one tensor on the parameters' device."""
    if host.free(params[0]) and all(p.dtype in (torch.float32, torch.float64) and p.device.type == "cpu"
                                    for p in params):
        return np.concatenate([_np(p) if idx is None else _np(p)[idx.numpy()] for p, idx in zip(params, index)])
    parts = []
    for p, idx in zip(params, index):
        flat = p.detach().reshape(-1)
        parts.append(flat if idx is None else flat.index_select(0, idx))
    v = torch.cat(parts)  # a copy, even of one tensor
    return v if v.dtype in (torch.float32, torch.float64) else v.float()


_REDUCER = MomentReducer()


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


def raw_moments(tensors: Tensor | Sequence[Tensor],
                reducer: MomentReducer | None = None) -> tuple[np.ndarray | Tensor, tuple[int, ...]]:
    """Raw moments of a layer's tensors (k x 8, flattened) and their element counts."""
    if isinstance(tensors, Tensor):
        tensors = [tensors]
    if not tensors:
        return np.full(N_MOMENTS, NAN), (0,)
    rows = (reducer or _REDUCER).rows(tensors)
    return rows.reshape(-1), tuple(values_of(t).numel() for t in tensors)


def unit_dim(out: Tensor, module_type: str) -> int:
    """Units are channels (dim 1) for conv-like outputs, else the last dim."""
    if out.dim() >= 4 or (out.dim() == 3 and module_type.startswith(_CHANNEL_FIRST)):
        return 1
    return out.dim() - 1


def raw_activation(out: Tensor, module_type: str,
                   reducer: MomentReducer | None = None) -> tuple[np.ndarray | Tensor, int, int]:
    """Raw moments + dead-unit and saturated counts of a module output; (raw, numel, units)."""
    x = values_of(out)
    if x.numel() == 0:
        return np.full(N_ACTIVATION, NAN), 0, 0
    reducer = reducer or _REDUCER
    if host.free(x) and x.layout == torch.strided:
        return reducer.activation_row(x, module_type)
    rows, info = reducer.activation_rows([x if x.dtype == torch.float32 else x.float()], [module_type])
    return rows[0], info[0][0], info[0][1]


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
    """LAYER_STATS values from raw moment rows (k x 8) of one layer; row i covers numels[i] elements.

    Each row has its own shift: the rows are merged as (mean, sum of squared deviations) pairs (Chan et
    al.), in float64. A single count for several rows (an older layout: one shift for all) is spread
    over them as if they shared it."""
    out = [NAN] * N_STATS
    n = int(sum(numels))
    out[_I["numel"]] = float(n)
    if n == 0:
        return out
    r = np.asarray(raw, dtype=np.float64).reshape(-1, N_MOMENTS)
    ns = np.asarray(numels, dtype=np.float64).reshape(-1)
    if len(ns) != len(r):  # one shared shift: the rows add up as they are
        r = np.concatenate([r[:1, :1], r[:, 1:4].sum(axis=0, keepdims=True), r[:, 4:5].min(axis=0, keepdims=True),
                            r[:, 5:6].max(axis=0, keepdims=True), r[:, 6:8].sum(axis=0, keepdims=True)], axis=1)
        ns = np.asarray([float(n)])
    r, ns = r[ns > 0], ns[ns > 0]
    sq = r[:, 1].sum()
    lo, hi = r[:, 4].min(), r[:, 5].max()
    nonzero, bad = r[:, 6].sum(), r[:, 7].sum()
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        means = r[:, 0] + r[:, 2] / ns
        m2 = r[:, 3] - r[:, 2] * r[:, 2] / ns  # each row's sum of squared deviations from its own mean
        mean = float((ns * means).sum() / n) if len(ns) > 1 else float(means[0])
        if len(ns) > 1:
            m2 = m2.sum() + (ns * (means - mean) ** 2).sum()
        else:
            m2 = m2[0]
        var = m2 / (n - 1) if n > 1 else NAN
        out[_I["norm"]] = float(np.sqrt(sq))
        out[_I["mean"]] = mean
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


MAX_BATCHED_TENSORS = 8  # below this many tensors a layer's sums are added in order, as the 1-row forms do


def finalize_rows(kinds: Sequence[str], raws: Sequence[np.ndarray], infos: Sequence[Any]) -> np.ndarray:
    """LAYER_STATS of many buffered rows at once (N x N_STATS, float64), equal to the one-row forms
    (`finalize_moments`, `finalize_activation`, `finalize_update`, `finalize_norms`) bit for bit: rows of
    one kind and layout are finalized together with the same float64 operations, in the same order.

    `infos` is each row's info as buffered: the tensors' element counts (moments, update), (numel, units)
    (activation) or the layer's numel (grad_norm). A flush at every step would otherwise spend tens of
    microseconds of Python per row on the writing thread, which shares the interpreter with training."""
    out = np.full((len(kinds), N_STATS), NAN)
    groups: dict[tuple, list[int]] = {}
    for i, (kind, raw, info) in enumerate(zip(kinds, raws, infos)):
        if kind == "grad" or kind == "weight":
            ns = tuple(info)
            k = len(ns)
            if raw.size != k * N_MOMENTS or k >= MAX_BATCHED_TENSORS:  # an old shared-shift row; many tensors
                out[i] = finalize_moments(raw, ns)
                continue
            key: tuple = ("moments", tuple(n > 0 for n in ns))
        elif kind == "activation":
            key = ("activation", info[0] > 0)
        elif kind == "update":
            key = ("update", raw.size)
        elif kind == "grad_norm":
            key = ("grad_norm", raw.size)
        else:
            raise KeyError(kind)
        if raw.size == 0 or key[1] is False or (key[0] in ("update", "grad_norm")
                                                and key[1] >= 2 * MAX_BATCHED_TENSORS):
            out[i] = _FINALIZE_ONE[kind](raw, info)  # nothing to batch (empty), or a long vector: one by one
            continue
        groups.setdefault(key, []).append(i)
    for (what, layout), idx in groups.items():
        r = np.stack([np.asarray(raws[i], dtype=np.float64).reshape(-1) for i in idx])
        if what == "moments":
            keep = [j for j, present in enumerate(layout) if present]
            ns = np.asarray([infos[i] for i in idx], dtype=np.float64)[:, keep]
            if not keep:  # every tensor of the layer is empty
                out[idx, _I["numel"]] = 0.0
                continue
            r = r.reshape(len(idx), -1, N_MOMENTS)[:, keep, :]
            out[idx] = _moments_batch(r, ns)
        elif what == "activation":
            numel = np.asarray([infos[i][0] for i in idx], dtype=np.float64)
            units = np.asarray([infos[i][1] for i in idx], dtype=np.float64)
            block = _moments_batch(r[:, None, :N_MOMENTS], numel[:, None])
            n_units = np.abs(units)
            with np.errstate(invalid="ignore", divide="ignore"):
                block[:, _I["frac_dead"]] = np.where(n_units > 0, r[:, N_MOMENTS] / np.where(n_units > 0, n_units, 1),
                                                     NAN)
                sat = r[:, N_MOMENTS + 1]
                block[:, _I["frac_saturated"]] = np.where(np.isfinite(sat), sat / np.where(units < 0, -units, numel),
                                                          NAN)
            out[idx] = block
        elif what == "update":
            r = r.reshape(len(idx), -1, N_UPDATE)
            d2, w2 = _sum_in_order(r[:, :, 0]), _sum_in_order(r[:, :, 1])
            out[idx, _I["norm"]] = np.sqrt(d2)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[idx, _I["ratio"]] = np.sqrt(d2 / w2)
            out[idx, _I["numel"]] = [float(infos[i]) for i in idx]
        else:  # grad_norm
            out[idx, _I["norm"]] = np.sqrt(_sum_in_order(r * r))
            out[idx, _I["numel"]] = [float(infos[i]) for i in idx]
    return out


def _sum_in_order(x: np.ndarray) -> np.ndarray:
    """Row sums of a (N, k) array added left to right, k < 2 * MAX_BATCHED_TENSORS: what numpy's sum of each
    short row gives (its pairwise sum adds fewer than 8 numbers in order), without a call per row."""
    k = x.shape[1]
    if k >= MAX_BATCHED_TENSORS:
        return np.asarray([row.sum() for row in x])
    acc = x[:, 0].copy()
    for j in range(1, k):
        acc += x[:, j]
    return acc


def _moments_batch(r: np.ndarray, ns: np.ndarray) -> np.ndarray:
    """finalize_moments of N layers at once: r is (N, k, N_MOMENTS) with k < MAX_BATCHED_TENSORS rows a layer,
    every one of them non-empty; ns (N, k) their element counts."""
    m, k = r.shape[0], r.shape[1]
    out = np.full((m, N_STATS), NAN)
    n = _sum_in_order(ns) if k > 1 else ns[:, 0].copy()
    out[:, _I["numel"]] = n
    sq = _sum_in_order(r[:, :, 1])
    lo, hi = r[:, :, 4].min(axis=1), r[:, :, 5].max(axis=1)
    nonzero, bad = _sum_in_order(r[:, :, 6]), _sum_in_order(r[:, :, 7])
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        means = r[:, :, 0] + r[:, :, 2] / ns
        m2 = r[:, :, 3] - r[:, :, 2] * r[:, :, 2] / ns
        if k > 1:
            mean = _sum_in_order(ns * means) / n
            m2 = _sum_in_order(m2) + _sum_in_order(ns * (means - mean[:, None]) ** 2)
        else:
            mean, m2 = means[:, 0], m2[:, 0]
        var = np.where(n > 1, m2 / np.where(n > 1, n - 1, 1), NAN)
        out[:, _I["norm"]] = np.sqrt(sq)
        out[:, _I["mean"]] = mean
        out[:, _I["std"]] = np.where(np.isfinite(var), np.sqrt(np.maximum(var, 0.0)), var)
        finite = np.isfinite(lo) & np.isfinite(hi)
        out[:, _I["max_abs"]] = np.where(finite, np.maximum(np.abs(lo), np.abs(hi)), NAN)
        out[:, _I["frac_zero"]] = 1.0 - nonzero / n
    out[:, _I["nonfinite"]] = bad
    return out


# Convenience forms (one tensor in, final statistics out) for users and tests.
def _host_array(raw: np.ndarray | Tensor) -> np.ndarray:
    return raw if isinstance(raw, np.ndarray) else raw.detach().cpu().numpy()


def basic_stats(tensors: Tensor | Sequence[Tensor]) -> Tensor:
    raw, numels = raw_moments(tensors)
    return torch.tensor(finalize_moments(_host_array(raw), numels))


def activation_stats(out: Tensor, module_type: str) -> Tensor:
    raw, numel, units = raw_activation(out, module_type)
    return torch.tensor(finalize_activation(_host_array(raw), numel, units))


def update_stats(before: Sequence[Tensor], after: Sequence[Tensor]) -> Tensor:
    return torch.tensor(finalize_update(raw_update(before, after).cpu().numpy(),
                                        sum(t.numel() for t in before)))


def tensor_norms(grads: list[Tensor]) -> tuple[Tensor, list[tuple[Tensor, list[int]]]]:
    """The global L2 norm and every tensor's norm: one fused `_foreach_norm` per device.

    Returns (global norm, [(stacked per-tensor norms, their indices in `grads`) per device])."""
    if not grads:
        return torch.tensor(NAN), []
    grads = [values_of(g) if g.layout != torch.strided or g.is_complex() else g for g in grads]  # sparse, complex: their values
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


_FINALIZE_ONE = {
    "grad": finalize_moments,
    "weight": finalize_moments,
    "activation": lambda raw, info: finalize_activation(raw, *info),
    "update": finalize_update,
    "grad_norm": finalize_norms,
}
