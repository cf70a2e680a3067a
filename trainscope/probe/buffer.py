"""RunBuffer: the rows the collectors produce, kept until a flush copies them to the host and
hands them to the writer.

Collectors append device tensors and Python numbers; nothing here syncs until `flush()`, which
concatenates every device vector per device and copies it to the host once. The first NaN/Inf of
the loss, the gradient norm and each layer statistic kind becomes a `nonfinite` event.
"""
from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from trainscope.probe import stats as st
from trainscope.probe.guard import HookGuard
from trainscope.probe.util import jsonable
from trainscope.store import schema
from trainscope.store.writer import RunWriter

# (step, name, value: float | 0-d tensor, epoch, time)
ScalarRow = tuple[int, str, Any, float, float]
# A collector's own buffered rows, expanded into scalar rows at flush (e.g. the loop facts).
ScalarSource = Callable[[], list[ScalarRow]]


class RunBuffer:
    """Buffered scalars, layer statistics and events; host transfer, nonfinite detection, writer."""

    def __init__(self, writer: RunWriter, guard: HookGuard, *, flush_seconds: float, flush_rows: int,
                 t0: float) -> None:
        self.writer = writer
        self.guard = guard
        self.flush_seconds = flush_seconds
        self.flush_rows = flush_rows
        self.t0 = t0
        self.last_flush = t0
        self.scalars: list[ScalarRow] = []
        self.logged: list[tuple[int, float, float, dict[str, Any]]] = []  # probe.log calls
        # (step, layer, kind, module type, raw device vector, element counts); see stats.py
        self.layers: list[tuple[int, str, str, str, Tensor, Any]] = []
        self.events: list[tuple[int, str, str, float, dict[str, Any]]] = []
        self.pending_rows = 0
        self.seen_nonfinite: set[str] = set()
        self.scalar_sources: list[ScalarSource] = []  # drained at flush, before the logged values
        self.order: dict[str, int] = {}  # forward order of the layers, filled after the first forward
        self.meta_fn: Callable[[str | None], None] = lambda status: None  # writes meta.json after a flush

    # -------------------------------------------------------------- appending (no host sync)
    def now(self) -> float:
        return time.monotonic() - self.t0

    def scalar(self, row: ScalarRow) -> None:
        self.scalars.append(row)
        self.pending_rows += 1

    def layer(self, step: int, name: str, kind: str, module_type: str, raw: Tensor, info: Any) -> None:
        self.layers.append((step, name, kind, module_type, raw, info))
        self.pending_rows += 1

    def event(self, step: int, kind: str, layer: str, value: float, detail: dict[str, Any]) -> None:
        self.events.append((int(step), kind, layer, float(value), detail))
        self.pending_rows += 1

    def log(self, step: int, epoch: float, values: dict[str, Any]) -> None:
        self.logged.append((step, epoch, self.now(), values))
        self.pending_rows += len(values)

    def due(self) -> bool:
        return self.pending_rows >= self.flush_rows or time.monotonic() - self.last_flush >= self.flush_seconds

    # -------------------------------------------------------------- flushing
    def flush(self, final_status: str | None = None) -> None:
        self.last_flush = time.monotonic()
        scalars = self.scalars
        for source in self.scalar_sources:
            scalars = scalars + source()
        scalars, self.scalars = scalars + self._expand_logged(), []
        layers, self.layers = self.layers, []
        self.pending_rows = 0
        if scalars:
            values = to_host([v for _, _, v, _, _ in scalars])
            self._nonfinite_from_scalars(scalars, values)
            self.writer.append(schema.SCALARS, {
                "step": [r[0] for r in scalars], "name": [r[1] for r in scalars], "value": values,
                "epoch": [r[3] for r in scalars], "time": [r[4] for r in scalars]})
        if layers:
            mats = [_FINALIZE[r[2]](raw, r[5]) for r, raw in zip(layers, raw_to_host([r[4] for r in layers]))]
            cols: dict[str, list] = {
                "step": [r[0] for r in layers], "layer": [r[1] for r in layers], "kind": [r[2] for r in layers],
                "module_type": [r[3] for r in layers], "order": [self.order.get(r[1], -1) for r in layers]}
            for i, stat in enumerate(schema.LAYER_STATS):
                cols[stat] = [row[i] for row in mats]
            self._nonfinite_from_layers(cols)
            self.writer.append(schema.LAYERS, cols)
        events, self.events = self.events, []
        if events:
            self.writer.append(schema.EVENTS, {
                "step": [e[0] for e in events], "kind": [e[1] for e in events], "layer": [e[2] for e in events],
                "value": [e[3] for e in events],
                "detail": [json.dumps(jsonable(e[4])) for e in events]})
        self.writer.next_chunk()
        self.meta_fn(final_status)

    def _expand_logged(self) -> list[ScalarRow]:
        rows: list[ScalarRow] = []
        logged, self.logged = self.logged, []
        bad: list[str] = []
        for s, epoch, now, values in logged:
            for key, v in values.items():
                if v is None:
                    continue
                if isinstance(v, Tensor):
                    v = v.float().mean() if v.numel() != 1 else v.reshape(())
                else:
                    try:
                        v = float(v)
                    except (TypeError, ValueError):
                        bad.append(str(key))
                        continue
                rows.append((s, str(key), v, epoch, now))
        if bad:
            self.guard.failed("log", ValueError(f"not a number: {', '.join(sorted(set(bad)))}"))
        return rows

    def _nonfinite_from_scalars(self, rows: list[ScalarRow], values: list[float]) -> None:
        for (step, name, _, _, _), v in zip(rows, values):
            if math.isfinite(v):
                continue
            tensor = "grad" if name == schema.GRAD_NORM else ("loss" if "loss" in name else None)
            if tensor is None or tensor in self.seen_nonfinite:
                continue
            self.seen_nonfinite.add(tensor)
            self.event(step, "nonfinite", "", v, {"tensor": tensor, "metric": name, "value": str(v)})

    def _nonfinite_from_layers(self, cols: dict[str, list]) -> None:
        bad: dict[str, tuple[int, int, str]] = {}
        for i, n in enumerate(cols["nonfinite"]):
            if n and n > 0:
                kind = cols["kind"][i]
                key = (cols["step"][i], cols["order"][i] if cols["order"][i] >= 0 else 1 << 30)
                if kind not in bad or key < bad[kind][:2]:
                    bad[kind] = (key[0], key[1], cols["layer"][i])
        for kind, (step, _, layer) in bad.items():
            tag = f"layer:{kind}"
            if tag in self.seen_nonfinite:
                continue
            self.seen_nonfinite.add(tag)
            self.event(step, "nonfinite", layer, float("nan"), {"tensor": kind, "first_layer": layer})


def to_host(values: list[Any]) -> list[float]:
    """Python floats for a list of floats and 0-d tensors (tensors copied together, once per device)."""
    out = [v if not isinstance(v, Tensor) else 0.0 for v in values]
    idx = [i for i, v in enumerate(values) if isinstance(v, Tensor)]
    for i, host in zip(idx, raw_to_host([values[i] for i in idx])):
        out[i] = float(host[0])
    return [float(v) for v in out]


def raw_to_host(vectors: list[Tensor]) -> list[np.ndarray]:
    """All raw vectors of a flush: concatenated per device, one copy to the host, split again."""
    by_device: dict[torch.device, list[int]] = defaultdict(list)
    for i, v in enumerate(vectors):
        by_device[v.device].append(i)
    out: list[np.ndarray] = [np.empty(0)] * len(vectors)
    for idx in by_device.values():
        flat = torch.cat([vectors[i].reshape(-1).float() for i in idx]).cpu().numpy()
        offsets = np.cumsum([0] + [vectors[i].numel() for i in idx])
        for j, i in enumerate(idx):
            out[i] = flat[offsets[j]:offsets[j + 1]]
    return out


_FINALIZE = {
    "grad": st.finalize_moments,
    "weight": st.finalize_moments,
    "activation": lambda raw, info: st.finalize_activation(raw, *info),
    "update": st.finalize_update,
}
