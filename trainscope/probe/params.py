"""ParamStats: the global gradient norm and per-layer gradient, weight and update statistics.

The global norm is one fused `torch._foreach_norm` per device, at every one of the first
DENSE_GRAD_NORM_STEPS steps (short runs need enough points), then every `grad_norm_every` steps
and on every recorded step. Shared (tied) parameters count once. When the loop clips with
`clip_grad_norm_` (seen through clipping.py), the norm and the per-layer gradient statistics are
taken *before* the clip, and the clipped norm, `max_norm` and whether the clip was active are
recorded as well. The per-tensor norms of the same fused call give each layer's gradient norm on
those steps (kind `grad_norm`): by default every step, kept as one device vector of per-tensor norms per
step and added up into global and per-layer norms on the host at flush (`_drain`). Per-layer statistics of recorded steps are raw moments on the device
(stats.py). The update ratio needs the weights before the step: on recorded steps, small tensors are
copied whole and large ones only at a fixed random subset of SAMPLED_ELEMENTS elements (drawn once,
with numpy, so torch's random state is untouched). Sharded (FSDP2 / DTensor) parameters are measured
on the rank's local shard, on the per-layer path, and merged across ranks at load time (sharded.py).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from trainscope.probe import clipping, host, sharded
from trainscope.probe import stats as st
from trainscope.probe.buffer import RunBuffer
from trainscope.probe.clock import Collector, StepClock
from trainscope.probe.util import module_type
from trainscope.store import schema

DENSE_GRAD_NORM_STEPS = 200  # the global grad norm is recorded at every one of the first steps
EXACT_UPDATE_NUMEL = 4096  # tensors up to this size are copied whole for the update ratio
SAMPLED_ELEMENTS = 2048  # larger ones: this many fixed elements

# (layer name, module, module type, its trainable parameters)
LayerParams = tuple[str, nn.Module, str, list[Tensor]]
# (layer name, module type, parameters with a .grad, their grads)
LayerGrads = tuple[str, str, list[Tensor], list[Tensor]]


def layers_with_params(model: nn.Module) -> list[LayerParams]:
    """Every module that owns trainable parameters directly, in `named_modules()` order.

    A tied parameter (GPT-2's embedding = output layer) is listed under each module that holds it;
    the global norm counts it once."""
    return [
        (n, m, module_type(m), [p for p in m.parameters(recurse=False) if p.requires_grad])
        for n, m in model.named_modules()
        if any(p.requires_grad for p in m.parameters(recurse=False))
    ]


@dataclass
class _Plan:
    """Which gradients one step's norm vector holds and how they add up to layers (tied tensors once)."""

    take: list[int] | None  # positions in ParamStats._flat of the tensors in the vector (None: all)
    names: list[str]  # the layers with a gradient
    types: list[str]
    numels: list[int]
    cols: list[list[int]]  # each layer's tensors (positions in the vector)


@dataclass
class _PreClip:
    """Gradient facts read when clip_grad_norm_ was called, before it scaled anything."""

    step: int
    norm: Tensor | None = None  # our global L2 norm (None: not a step that records the norm)
    vec: tuple[Tensor, _Plan] | None = None  # per-tensor norms, pre-clip (the dense path: no norm, no rows)
    layer_norms: list[tuple[str, str, Tensor, int]] = field(default_factory=list)  # per-layer, pre-clip
    grad_raw: dict[str, tuple[Tensor, Any]] = field(default_factory=dict)  # layer -> raw moments (recorded steps)
    max_norm: Any = None
    active: Any = None  # 1.0 if total_norm > max_norm (0-d device tensor)
    used: bool = False


@dataclass
class _Snapshot:
    """A recorded step's weights before the update: one tensor of every parameter's sampled values."""

    layers: list[tuple[str, str, int, int]]  # (layer, module type, its parameter count, its element count)
    params: list[Tensor]  # the parameters that had a gradient, layer by layer
    index: list[Tensor | None]  # each one's sample (None: all of it)
    before: np.ndarray | Tensor | None  # their values, concatenated (None: the per-tensor path below)
    per_tensor: list[tuple[Tensor, Tensor | None]] | None  # complex or sparse weights: per tensor
    lengths: tuple[int, ...]  # values per parameter in `before`
    scales: tuple[float, ...]  # numel / sampled values per parameter


def _numel(t: Tensor) -> int:
    return t.numel() if t.layout == torch.strided else st.values_of(t).numel()


class ParamStats(Collector):
    every_step = frozenset({"on_backward", "on_step_begin", "on_step_end"})  # norms follow their own cadence

    def __init__(self, layers: list[LayerParams], buffer: RunBuffer, clock: StepClock, *,
                 grad_norm_every: int, has_optimizer: bool, world_size: int = 1) -> None:
        self.layers = layers
        self.buffer = buffer
        self.clock = clock
        self.grad_norm_every = grad_norm_every
        self.has_optimizer = has_optimizer
        # weights before a recorded step (whole, or the sampled elements), for the update ratio
        self._snapshots: _Snapshot | None = None
        self._snap_plans: dict[tuple[int, ...], _Snapshot] = {}  # per set of parameters with a gradient
        param_bytes = sum(p.numel() * p.element_size() for p in {id(p): p for _, _, _, ps in layers for p in ps}.values())
        self.reducer = st.MomentReducer(st.scratch_bytes(param_bytes))  # recorded steps' batched statistics
        n_refs = sum(len(ps) for _, _, _, ps in layers)
        self._shared = n_refs != len({id(p) for _, _, _, ps in layers for p in ps})  # tied weights present
        self._pre: _PreClip | None = None
        self._sample_index: dict[int, Tensor | None] = {}  # id(param) -> fixed elements for the update ratio
        self._rng = np.random.default_rng(20240601)
        self._on_clip = clock.guard.wrap("clip", self._clip_seen)
        # FSDP2: statistics of the local shards; None (the common case) keeps the hot path unchanged
        self.sharding = sharded.describe(layers, world_size)
        self._world = max(1, int(world_size))
        self._norm_w: dict[int, float] = {}  # id(param) -> weight of its squared norm (HSDP, plain tensors)
        if self.sharding is not None:
            ps = list({id(p): p for _, _, _, ps in layers for p in ps}.values())
            w = sharded.norm_weights(ps, self._world)
            self._norm_w = {id(p): x for p, x in zip(ps, w)} if w is not None else {}
        # The dense path: each norm step keeps one device vector of per-tensor gradient norms (one fused
        # _foreach_norm and one stack); the global and per-layer norms are finished on the host at flush.
        flat: list[Tensor] = []
        seen: set[int] = set()
        for _, _, _, ps in layers:
            for p in ps:
                if id(p) not in seen:
                    seen.add(id(p))
                    flat.append(p)
        self._flat = flat
        self._pos = {id(p): i for i, p in enumerate(flat)}
        self._plans: dict[tuple[bool, ...] | None, _Plan] = {}
        # sparse gradients (Embedding(sparse=True)) and complex ones take the per-layer path
        self._fast = bool(flat) and not any(p.is_complex() or p.layout != torch.strided for p in flat) and not any(
            getattr(m, "sparse", False) is True for _, m, _, _ in layers) and self.sharding is None
        # (sharded parameters take the per-layer path, which reads their local shards)
        # float32 gradients give float32 norms as they are; asking for the dtype costs a few µs per call
        self._norm_dtype = None if all(p.dtype == torch.float32 for p in flat) else torch.float32
        self._dense: list[tuple[int, float, float, Tensor, _Plan]] = []  # (step, epoch, time, norms, plan)
        self.last_norm: tuple[int, float] | None = None  # (step, global norm) read on the host (CPU only)
        self.anomaly: Any = None  # anomaly.AnomalyCapture, set by the probe: told every step's global norm
        buffer.dense_sources.append(self._drain)

    def install(self) -> None:
        clipping.attach(self._on_clip)

    def close(self) -> None:
        clipping.detach(self._on_clip)

    def wants_norm(self, s: int, record: bool) -> bool:
        return record or s < DENSE_GRAD_NORM_STEPS or s % self.grad_norm_every == 0

    def norm_due(self, s: int) -> bool:
        """The gradient norms are taken at step s even if it is not recorded."""
        return s < DENSE_GRAD_NORM_STEPS or s % self.grad_norm_every == 0

    def params_with_grad(self) -> list[LayerGrads]:
        out = []
        for name, _, typ, params in self.layers:
            ps = [p for p in params if p.grad is not None]
            if ps:
                gs = [p.grad for p in ps] if self.sharding is None else [sharded.local(p.grad) for p in ps]
                out.append((name, typ, ps, gs))
        return out

    def _values(self, ps: list[Tensor]) -> list[Tensor]:
        """The tensors statistics are taken on: the local shards of sharded parameters."""
        return ps if self.sharding is None else [sharded.local(p) for p in ps]

    def _norms(self, layers: list[LayerGrads]) -> tuple[Tensor, list[tuple[str, str, Tensor, int]]]:
        """Global norm (a tied parameter once) and each layer's per-tensor norms, from one fused call."""
        if not self._shared:
            grads = [g for _, _, _, gs in layers for g in gs]
            members = []
            i = 0
            for _, _, _, gs in layers:
                members.append(list(range(i, i + len(gs))))
                i += len(gs)
        else:
            where: dict[int, int] = {}
            grads, members = [], []
            for _, _, ps, gs in layers:
                m = []
                for p, g in zip(ps, gs):
                    if id(p) not in where:
                        where[id(p)] = len(grads)
                        grads.append(g)
                    m.append(where[id(p)])
                members.append(m)
        gn, per_device = st.tensor_norms(grads)
        if self._norm_w:  # a rank's share of the global norm: replicated tensors count 1/replicas
            ids = [None] * len(grads)
            for (_, _, ps, _), m in zip(layers, members):
                for p, i in zip(ps, m):
                    ids[i] = id(p)
            w = torch.tensor([self._norm_w.get(i, 1.0) for i in ids], dtype=torch.float32)
            parts = [(w[idx].to(vec.device) * vec * vec).sum() for vec, idx in per_device]
            gn = torch.stack([q.to(parts[0].device) for q in parts]).sum().sqrt()
        if len(per_device) == 1:
            vec = per_device[0][0]
            at = {i: (vec, i) for i in range(len(grads))}
        else:
            at = {i: (vec, j) for vec, idx in per_device for j, i in enumerate(idx)}
        rows = []
        for (name, typ, _, gs), m in zip(layers, members):
            vec, first = at[m[0]]
            if all(at[i] == (vec, first + k) for k, i in enumerate(m)):
                raw = vec[first:first + len(m)]  # a view: no kernel
            else:
                raw = torch.stack([at[i][0][at[i][1]].to(vec.device) for i in m])
            rows.append((name, typ, raw, sum(g.numel() for g in gs)))
        return gn, rows

    def _plan(self, present: tuple[bool, ...] | None) -> _Plan:
        plan = self._plans.get(present)
        if plan is not None:
            return plan
        take = None if present is None else [i for i, ok in enumerate(present) if ok]
        col = {i: j for j, i in enumerate(take if take is not None else range(len(self._flat)))}
        names, types, numels, cols = [], [], [], []
        for name, _, typ, ps in self.layers:
            idx = [col[self._pos[id(p)]] for p in ps if self._pos[id(p)] in col]
            if idx:
                names.append(name)
                types.append(typ)
                numels.append(sum(ps[k].numel() for k, p in enumerate(ps) if self._pos[id(p)] in col))
                cols.append(idx)
        plan = self._plans[present] = _Plan(take, names, types, numels, cols)
        return plan

    def _dense_norms(self) -> tuple[Tensor, _Plan] | None:
        """Per-tensor gradient norms as one device vector (float32), or None: take the per-layer path."""
        if not self._fast:
            return None
        grads = [p.grad for p in self._flat]
        present = None
        if any(g is None for g in grads):
            present = tuple(g is not None for g in grads)
            grads = [g for g in grads if g is not None]
            if not grads:
                return None
        try:
            vec = torch.stack(torch._foreach_norm(grads, 2, dtype=self._norm_dtype))
        except Exception:  # noqa: BLE001 - e.g. gradients on several devices, sparse ones: the per-layer path
            self._fast = False
            return None
        return vec, self._plan(present)

    def _keep_dense(self, s: int, vec: Tensor, plan: _Plan) -> bool:
        """Keep a step's norm vector; True if this step is to be recorded in full: it holds the run's first
        non-finite gradient norm (CPU) or the anomaly capture says the norm jumped."""
        self._dense.append((s, self.clock.epoch, self.clock.step_time, vec, plan))
        self.buffer.pending_rows += len(plan.names) + 1
        if not host.free(vec):
            if self.anomaly is not None and host.async_readable(vec):
                self.anomaly.on_grad_norm(s, torch.linalg.vector_norm(vec))  # copied without blocking
            return False
        # free on CPU: the global norm now (NaN/Inf and jumps seen on their own step)
        gn = math.sqrt(sum(x * x for x in vec.tolist()))
        self.last_norm = (s, gn)
        first_bad = False
        buf = self.buffer
        if not math.isfinite(gn) and "grad" not in buf.seen_nonfinite:
            buf.seen_nonfinite.add("grad")
            buf.event(s, "nonfinite", "", gn, {"tensor": "grad", "metric": schema.GRAD_NORM, "value": str(gn)})
            first_bad = True
        jumped = self.anomaly is not None and self.anomaly.on_grad_norm(s, gn)
        return first_bad or jumped

    def mark(self) -> Any:
        return len(self._dense)

    def rollback(self, token: Any) -> None:
        del self._dense[token:]

    def _drain(self) -> tuple[list, list[dict[str, list]]]:
        """At flush: every kept norm vector to the host (one stack and one copy per plan), as `grad_norm`
        scalar rows and per-layer `grad_norm` rows."""
        dense, self._dense = self._dense, []
        if not dense:
            return [], []
        by_plan: dict[int, list[tuple[int, float, float, Tensor, _Plan]]] = {}
        for e in dense:
            by_plan.setdefault(id(e[4]), []).append(e)
        scalars: list = []
        parts: list[dict[str, list]] = []
        nan = float("nan")
        for entries in by_plan.values():
            plan = entries[0][4]
            sq = torch.stack([e[3] for e in entries]).cpu().numpy().astype(np.float64) ** 2
            total = np.sqrt(sq.sum(axis=1))
            for e, v in zip(entries, total.tolist()):
                scalars.append((e[0], schema.GRAD_NORM, v, e[1], e[2]))
            # a sum per layer, not a 0/1 matrix product: an Inf in one layer must not make the others NaN
            layer = np.sqrt(np.stack([sq[:, idx].sum(axis=1) for idx in plan.cols], axis=1))  # (steps, layers)
            n_l, n = len(plan.names), len(entries) * len(plan.names)
            cols: dict[str, list] = {
                "step": np.repeat(np.asarray([e[0] for e in entries], dtype=np.int64), n_l).tolist(),
                "layer": plan.names * len(entries), "kind": ["grad_norm"] * n,
                "module_type": plan.types * len(entries)}
            for stat in schema.LAYER_STATS:
                cols[stat] = [nan] * n
            cols["norm"] = layer.reshape(-1).tolist()
            cols["numel"] = [float(x) for x in plan.numels] * len(entries)
            parts.append(cols)
        return scalars, parts

    def _global_norm(self, layers: list[LayerGrads]) -> Tensor:
        return self._norms(layers)[0]

    def _sample(self, p: Tensor) -> Tensor | None:
        """The fixed elements of a large tensor used for its update ratio (None: use all)."""
        key = id(p)  # the parameter itself: a shard's local view is a new object at each call
        if key not in self._sample_index:
            n = sharded.local(p).numel()
            idx = None
            if n > EXACT_UPDATE_NUMEL:
                host = np.sort(self._rng.integers(0, n, SAMPLED_ELEMENTS))
                idx = st.to_device(torch.as_tensor(host, dtype=torch.long), p.device)  # once per tensor
            self._sample_index[key] = idx
        return self._sample_index[key]

    def _snapshot(self, ps: list[Tensor]) -> list[tuple[Tensor, Tensor | None]]:
        """Per tensor: its values before the step at its sample (the per-tensor path, complex weights)."""
        out = []
        for p in ps:
            idx = self._sample(p)
            flat = sharded.local(p).detach().reshape(-1)
            out.append((flat.index_select(0, idx) if idx is not None else flat.clone(), idx))
        return out

    def _record_layers(self, s: int, layers: list[LayerGrads], grad_raw: dict[str, tuple[Any, Any]]) -> None:
        """A recorded step: every layer's gradient and weight moments from one batched reduction
        (stats.MomentReducer), and the weights' sampled values for the update ratio."""
        tensors: list[Tensor] = []
        spans = []
        for name, _, ps, gs in layers:
            g0 = len(tensors)
            if name not in grad_raw:  # read at clip_grad_norm_, before the clip
                tensors += gs
            w0 = len(tensors)
            tensors += self._values(ps)
            spans.append((g0, w0, len(tensors)))
        rows = self.reducer.rows(tensors) if tensors else None
        numels = [_numel(t) for t in tensors]
        buf = self.buffer
        for (name, typ, _, _), (g0, w0, w1) in zip(layers, spans):
            raw = grad_raw.get(name)
            if raw is None:
                raw = (rows[g0:w0].reshape(-1), tuple(numels[g0:w0]))
            buf.layers.append((s, name, "grad", typ, *raw))
            buf.layers.append((s, name, "weight", typ, rows[w0:w1].reshape(-1), tuple(numels[w0:w1])))
        buf.pending_rows += 2 * len(layers)
        if self.has_optimizer and layers:
            self._snapshots = self._take_snapshot(layers)

    def _take_snapshot(self, layers: list[LayerGrads]) -> _Snapshot:
        """The values before the step: one new tensor holding each parameter whole (small) or at its sample."""
        key = tuple(id(p) for _, _, lps, _ in layers for p in lps)
        plan = self._snap_plans.get(key)  # the same layers have a gradient at (almost) every step
        if plan is None:
            ps = [p for _, _, lps, _ in layers for p in lps]
            values = self._values(ps)
            named = [(name, typ, len(lps), sum(v.numel() for v in self._values(lps))) for name, typ, lps, _ in layers]
            if any(v.is_complex() or v.layout != torch.strided for v in values):  # the per-tensor path
                plan = _Snapshot(named, ps, [], None, [], (), ())
            else:
                index = [self._sample(p) for p in ps]
                lengths = tuple(v.numel() if i is None else i.numel() for v, i in zip(values, index))
                plan = _Snapshot(named, ps, index, None, None, lengths,
                                 tuple(v.numel() / n for v, n in zip(values, lengths)))
            if len(self._snap_plans) >= 8:
                self._snap_plans.clear()
            self._snap_plans[key] = plan
        values = self._values(plan.params)
        if plan.per_tensor is not None:
            return dataclasses.replace(plan, per_tensor=self._snapshot(plan.params))
        return dataclasses.replace(plan, before=st.snapshot_values(values, plan.index))

    def _record_updates(self, step: int, snap: _Snapshot) -> None:
        """Each layer's update sums: the parameters now against their values before the step, in one batch."""
        values = self._values(snap.params)
        if snap.before is None:
            before = snap.per_tensor
            k, rows = 0, []
            for _, _, n_p, _ in snap.layers:
                rows.append(st.raw_update_sampled([b for b, _ in before[k:k + n_p]], values[k:k + n_p],
                                                  [i for _, i in before[k:k + n_p]]))
                k += n_p
        else:
            per = self.reducer.update_rows(snap.before, st.snapshot_values(values, snap.index), snap.lengths,
                                           snap.scales)
            k, rows = 0, []
            for _, _, n_p, _ in snap.layers:
                rows.append(per[k:k + n_p].reshape(-1))
                k += n_p
        for (name, typ, _, numel), raw in zip(snap.layers, rows):
            self.buffer.layers.append((step, name, "update", typ, raw, numel))
        self.buffer.pending_rows += len(snap.layers)

    # -------------------------------------------------------------- clip_grad_norm_ seen
    def on_backward(self) -> None:
        self._pre = None  # a new backward: facts read at an earlier clip are stale

    def _clip_seen(self, max_norm: Any, total_norm: Tensor | None) -> None:
        pre = self._pre
        if self.sharding is not None and total_norm is not None:
            total_norm = sharded.replicated_value(total_norm)  # clip_grad_norm_ on DTensors: the full norm
        if not self.has_optimizer:
            # Without an optimizer the step's statistics were read at its backward end, pre-clip already;
            # the step is still open (it ends at the update, probe.step() or the next backward).
            open_step = getattr(self.clock, "_open", None) is not None
            self._clip_rows(self.clock.step if open_step else self.clock.step - 1, max_norm, total_norm,
                            clipped=True)
            return
        s = self.clock.step
        if pre is not None and pre.step == s:  # a second clip in one step (e.g. per parameter group)
            if pre.active is not None and total_norm is not None:
                pre.active = torch.maximum(pre.active, clipping.clip_active(total_norm, max_norm))
            return
        record = self.clock.recorded(s)
        if not self.wants_norm(s, record):
            self._pre = None
            return
        pre = self._pre = _PreClip(step=s, max_norm=max_norm)
        pre.vec = self._dense_norms()
        layers = self.params_with_grad() if record or pre.vec is None else []
        if pre.vec is not None:
            if total_norm is None:
                total_norm = torch.linalg.vector_norm(pre.vec[0])
            pre.active = clipping.clip_active(total_norm, max_norm)
        elif layers:
            pre.norm, pre.layer_norms = self._norms(layers)
            pre.active = clipping.clip_active(total_norm if total_norm is not None else pre.norm, max_norm)
        if layers and record:
            pre.grad_raw = {name: st.raw_moments(gs) for name, _, _, gs in layers}

    def _clip_rows(self, s: int, max_norm: Any, total_norm: Tensor | None, clipped: bool) -> None:
        if s < 0 or not self.wants_norm(s, self.clock.recorded(s)):
            return
        buf, epoch, now = self.buffer, self.clock.epoch, self.buffer.now()
        if isinstance(max_norm, (int, float, Tensor)):
            buf.scalar((s, schema.CLIP_MAX_NORM, max_norm if isinstance(max_norm, Tensor) else float(max_norm),
                        epoch, now))
        if total_norm is not None:
            buf.scalar((s, schema.LOOP_CLIPPED, clipping.clip_active(total_norm, max_norm), epoch, now))
            if clipped:  # what clip_grad_norm_ leaves: total * min(1, max_norm / (total + 1e-6))
                coef = torch.clamp(max_norm / (total_norm.detach().float() + 1e-6), max=1.0)
                value = total_norm.detach().float() * coef
                if self.sharding is not None:  # the full norm, written as this rank's share (sharded.py)
                    value = sharded.partial_of_replicated(value, self._world)
                buf.scalar((s, schema.GRAD_NORM_CLIPPED, value, epoch, now))

    # -------------------------------------------------------------- step boundaries
    def on_step_begin(self, step: int, record: bool) -> None:
        if not self.wants_norm(step, record):
            return  # neither norms nor statistics at this step
        s, buf = step, self.buffer
        pre = self._pre if self._pre is not None and self._pre.step == s else None
        dense = self._dense_norms() if pre is None or pre.norm is None else None
        if dense is not None:
            epoch, t = self.clock.epoch, self.clock.step_time
            if pre is not None and pre.vec is not None:  # clipped since: keep the pre-clip norms
                pre.used = True
                buf.scalars.append((s, schema.GRAD_NORM_CLIPPED, torch.linalg.vector_norm(dense[0]), epoch, t))
                self._pre_rows(s, pre, epoch, t)
                dense = pre.vec
            if self._keep_dense(s, *dense):
                record = True  # free on CPU: catch the first bad step exactly
            layers = self.params_with_grad() if record else []
        else:
            layers = self.params_with_grad()
        if dense is None and layers:
            now_norm, layer_norms = self._norms(layers)
            gn = now_norm
            epoch, t = self.clock.epoch, self.clock.step_time
            if pre is not None and pre.norm is not None:
                pre.used = True
                gn, layer_norms = pre.norm, pre.layer_norms
                buf.scalars.append((s, schema.GRAD_NORM_CLIPPED, now_norm, epoch, t))
                self._pre_rows(s, pre, epoch, t)
            buf.scalars.append((s, schema.GRAD_NORM, gn, epoch, t))
            for name, typ, raw, numel in layer_norms:
                buf.layers.append((s, name, "grad_norm", typ, raw, numel))
            buf.pending_rows += len(layer_norms)
            if host.free(gn):
                v = float(gn)
                if not math.isfinite(v) and "grad" not in buf.seen_nonfinite:
                    record = True  # free on CPU: catch the first bad step exactly
                if self.anomaly is not None and self.anomaly.on_grad_norm(s, v):
                    record = True
            elif self.anomaly is not None:
                self.anomaly.on_grad_norm(s, gn)
        if record:
            self._record_layers(s, layers, pre.grad_raw if pre is not None else {})

    def _pre_rows(self, s: int, pre: _PreClip, epoch: float, t: float) -> None:
        buf = self.buffer
        if isinstance(pre.max_norm, (int, float, Tensor)):
            mx = pre.max_norm if isinstance(pre.max_norm, Tensor) else float(pre.max_norm)
            buf.scalars.append((s, schema.CLIP_MAX_NORM, mx, epoch, t))
        if pre.active is not None:
            buf.scalars.append((s, schema.LOOP_CLIPPED, pre.active, epoch, t))
        buf.pending_rows += 3

    def on_step_end(self, step: int) -> None:
        pre, self._pre = self._pre, None
        if pre is not None and pre.step == step and not pre.used:
            # clip_grad_norm_ ran after the step began (inside a closure): keep what it said.
            norm = pre.norm if pre.norm is not None or pre.vec is None else torch.linalg.vector_norm(pre.vec[0])
            self._clip_rows(step, pre.max_norm, norm, clipped=False)
        snap, self._snapshots = self._snapshots, None
        if snap is not None:
            self._record_updates(step, snap)
