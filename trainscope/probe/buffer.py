"""RunBuffer: the rows the collectors produce, kept until a flush copies them to the host and
hands them to the writer.

Collectors append device tensors and Python numbers; nothing here syncs until `flush()`, which
concatenates every device vector per device and copies it to the host once. The first NaN/Inf of
the loss, the gradient norm and each layer statistic kind becomes a `nonfinite` event.

A flush cannot lose data: values given to `probe.log()` are checked one by one when they are
logged (a bad one is dropped with one warning naming it and a `value_dropped` event, never the
batch); a flush first converts everything to host rows ("staged"), and a table's staged rows are
released only once the writer has renamed their chunk into place. A failed write keeps them for
the next flush, with a warning, and never raises into a training hook.
"""
from __future__ import annotations

import json
import math
import numbers
import threading
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from trainscope.probe import host
from trainscope.probe import stats as st
from trainscope.probe.guard import HookGuard
from trainscope.probe.util import jsonable
from trainscope.store import schema
from trainscope.store.writer import RunWriter

# (step, name, value: float | 0-d tensor, epoch, time)
ScalarRow = tuple[int, str, Any, float, float]
# A collector's own buffered rows, expanded into scalar rows at flush (e.g. the loop facts).
ScalarSource = Callable[[], list[ScalarRow]]
# A collector that keeps its own device buffer (e.g. the per-step gradient norms) and copies it to the
# host itself at flush: scalar rows (host values) and layer-table columns (host lists, no "order").
DenseSource = Callable[[], tuple[list[ScalarRow], list[dict[str, list]]]]


_STRIDED = torch.strided

# a background write still running: keep buffering (no wait) up to max(BACKLOG_FACTOR x flush_rows, BACKLOG_ROWS)
BACKLOG_FACTOR = 4
BACKLOG_ROWS = 100_000


@dataclass
class _Job:
    """One flush's rows, taken from the training thread: device values already on the host."""

    scalars: list
    layers: list
    dense_layers: list
    events: list
    appends: list


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
        self.dense_sources: list[DenseSource] = []  # drained at flush, first
        self.order: dict[str, int] = {}  # forward order of the layers, filled after the first forward
        # writes meta.json after a flush: (final status or None, force: write even if unchanged)
        self.meta_fn: Callable[[str | None, bool], None] = lambda status, force: None
        # host rows waiting for their chunk: table -> [{column: list}, ...]; released after the write
        self.staged: dict[str, list[dict[str, list]]] = {t: [] for t in schema.TABLES}
        self.max_staged_rows = max(1_000_000, 10 * int(min(flush_rows, 10**8)))
        self.dropped: dict[str, str] = {}  # probe.log names dropped at least once -> why
        self._appends: list[tuple[str, dict[str, list]]] = []  # host rows handed in since the last flush
        self._thread: threading.Thread | None = None  # the background write in progress
        self.write_failures = 0  # flushes in a row whose write failed

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

    def log(self, step: int, epoch: float, values: dict[str, Any]) -> dict[str, Any]:
        """Buffer probe.log values, each checked now: a bad one is dropped alone (see check_value).
        Returns the values kept (detached tensors and floats)."""
        good: dict[str, Any] = {}
        for key, v in values.items():
            if type(v) is Tensor and v.ndim == 0 and v.layout == _STRIDED and not v.is_complex() and not v.is_meta:
                # The usual case (a loss), check_value's first one inlined: this runs at every logged step.
                # On CPU reading it is free (host.py): a float keeps no tensor (nor its graph) alive, and a
                # row of plain numbers is one the garbage collector stops tracking.
                good[key if type(key) is str else str(key)] = (float(v.item()) if v.is_cpu and host.FREE_ON_CPU
                                                               else v.detach() if v.requires_grad else v)
                continue
            if v is None:
                continue
            try:
                good[key if type(key) is str else str(key)] = check_value(v)
            except ValueError as e:
                self._drop(str(key), str(e), step)
        if good:
            self.logged.append((step, epoch, time.monotonic() - self.t0, good))
            self.pending_rows += len(good)
        return good

    def _drop(self, key: str, why: str, step: int) -> None:
        if key in self.dropped:
            return
        self.dropped[key] = why
        warnings.warn(f"trainscope: probe.log({key}=...) dropped: {why}; the other values are kept "
                      "(said once per name)", RuntimeWarning, stacklevel=4)
        self.event(step, "value_dropped", "", float("nan"), {"name": key, "reason": why})

    def append(self, table: str, columns: dict[str, list]) -> None:
        """Rows already on the host (e.g. the init table): written at the next flush."""
        self._appends.append((table, {k: list(v) for k, v in columns.items()}))

    def due(self) -> bool:
        if self.pending_rows < self.flush_rows and time.monotonic() < self.last_flush + self.flush_seconds:
            return False  # the usual step
        # the previous background write still runs: keep buffering (never wait for it), up to a hard cap
        return not self.writing() or self.pending_rows >= max(BACKLOG_FACTOR * self.flush_rows, BACKLOG_ROWS)

    def writing(self) -> bool:
        """A background write is in progress."""
        t = self._thread
        return t is not None and t.is_alive()

    # -------------------------------------------------------------- flushing
    def flush(self, final_status: str | None = None, background: bool = False) -> None:
        """Copy everything buffered to the host, then write each table's staged rows as one chunk.

        On the training thread only the device-to-host copy happens (one per device); converting the rows,
        the Parquet writes and meta.json run on a background thread when `background` (the probe's regular
        flushes), else here, after any background write has finished (probe.flush(), close(), atexit).
        Rows are released only after their chunk is in place; a failed write is retried next time."""
        self.last_flush = time.monotonic()
        job = self._collect()
        self.join()
        if background:
            t = threading.Thread(target=self._write_job, args=(job, None, False), name="trainscope-flush",
                                 daemon=True)  # daemon: a script that exits without close() still reaches atexit
            self._thread = t
            t.start()
        else:
            self._write_job(job, final_status, True)

    def join(self) -> None:
        """Wait for the background write in progress (if any)."""
        t = self._thread
        if t is not None:
            t.join()
            self._thread = None

    def _write_job(self, job: "_Job", final_status: str | None, force_meta: bool) -> None:
        try:
            self._stage(job)
            failed = self._write_staged()
            try:
                self.meta_fn(final_status, force_meta)
            except Exception as e:  # noqa: BLE001 - meta.json is rewritten at the next flush
                failed = failed or f"meta.json: {type(e).__name__}: {e}"
        except Exception as e:  # noqa: BLE001 - never raise into the training (nor die silently in the thread)
            failed = f"{type(e).__name__}: {e}"
        if failed:
            self.write_failures += 1
            if self.write_failures == 1 or final_status is not None:
                n = sum(len(next(iter(c.values()), [])) for parts in self.staged.values() for c in parts)
                later = ("they are lost: the run is closing" if final_status is not None
                         else "retrying at the next flush")
                warnings.warn(f"trainscope: could not write the run store ({failed}); {n} rows kept, {later}",
                              RuntimeWarning, stacklevel=3)
        else:
            self.write_failures = 0

    def _collect(self) -> "_Job":
        """On the training thread: take every buffered row and copy device values to the host (CPU tensors
        are read later, on the writing thread)."""
        dense_layers: list[dict[str, list]] = []
        dense_scalars: list[ScalarRow] = []
        for dense in self.dense_sources:
            try:
                rows, cols = dense()
            except Exception as e:  # noqa: BLE001 - a failed copy loses that source's rows, not the flush
                self._lost("dense statistics", e)
                continue
            dense_scalars += rows
            dense_layers += cols
        scalars = dense_scalars + self.scalars if dense_scalars else self.scalars
        self.scalars = []
        for source in self.scalar_sources:
            scalars = scalars + source()
        scalars = scalars + self._expand_logged()
        layers, self.layers = self.layers, []
        events, self.events = self.events, []
        appends, self._appends = self._appends, []
        self.pending_rows = 0
        scalars = _device_values_to_host(scalars, 2, to_host, self._lost)
        layers = _device_values_to_host(layers, 4, raw_to_host, self._lost)
        return _Job(scalars, layers, dense_layers, events, appends)

    def _stage(self, job: "_Job") -> None:
        for table, cols in job.appends:
            self.staged[table].append(cols)
        scalars, layers, events = job.scalars, job.layers, list(job.events)
        if scalars:
            values, scalars = _host_rows(scalars, lambda rows: to_host([r[2] for r in rows]), self._lost)
            events += self._nonfinite_from_scalars(scalars, values)
            self.staged[schema.SCALARS].append({
                "step": [r[0] for r in scalars], "name": [r[1] for r in scalars], "value": values,
                "epoch": [r[3] for r in scalars], "time": [r[4] for r in scalars]})
        if layers:
            def convert(rows: list) -> np.ndarray:
                return st.finalize_rows([r[2] for r in rows], raw_to_host([r[4] for r in rows]), [r[5] for r in rows])

            parts, layers = _host_rows(layers, convert, self._lost)
            if layers:
                mats = np.asarray(parts, dtype=np.float64).reshape(-1, len(schema.LAYER_STATS))
                cols: dict[str, list] = {
                    "step": [r[0] for r in layers], "layer": [r[1] for r in layers], "kind": [r[2] for r in layers],
                    "module_type": [r[3] for r in layers], "order": [self.order.get(r[1], -1) for r in layers]}
                for i, stat in enumerate(schema.LAYER_STATS):
                    cols[stat] = mats[:, i].tolist()
                events += self._nonfinite_from_layers(cols)
                self.staged[schema.LAYERS].append(cols)
        for cols in job.dense_layers:
            if cols.get("layer"):
                cols["order"] = [self.order.get(n, -1) for n in cols["layer"]]
                self.staged[schema.LAYERS].append(cols)
        if events:
            self.staged[schema.EVENTS].append({
                "step": [e[0] for e in events], "kind": [e[1] for e in events], "layer": [e[2] for e in events],
                "value": [e[3] for e in events],
                "detail": [json.dumps(jsonable(e[4])) for e in events]})
        self._cap_staged()

    def _lost(self, what: str, e: BaseException) -> None:
        warnings.warn(f"trainscope: a recorded value could not be copied to the host and was left out ({what}: "
                      f"{type(e).__name__}: {e})", RuntimeWarning, stacklevel=4)

    def _cap_staged(self) -> None:
        """Writes failing for a long time: keep the newest rows, not an unbounded backlog."""
        total = sum(len(next(iter(c.values()), [])) for parts in self.staged.values() for c in parts)
        while total > self.max_staged_rows:
            table = max(self.staged, key=lambda t: len(self.staged[t]))
            if len(self.staged[table]) <= 1:
                break
            old = self.staged[table].pop(0)
            n = len(next(iter(old.values()), []))
            total -= n
            warnings.warn(f"trainscope: the run store has not been writable for a while; {n} old {table} rows "
                          "dropped to bound memory", RuntimeWarning, stacklevel=4)

    def _write_staged(self) -> str | None:
        failed = None
        for table in schema.TABLES:
            parts = self.staged[table]
            if not parts:
                continue
            keys = list(dict.fromkeys(k for part in parts for k in part))
            cols: dict[str, list] = {k: [] for k in keys}
            for part in parts:
                n = len(next(iter(part.values()), []))
                for k in keys:
                    cols[k].extend(part.get(k, [None] * n))
            try:
                self.writer.append(table, cols)
            except Exception as e:  # noqa: BLE001 - disk full, permissions, ...: keep the rows, retry later
                self.staged[table] = [cols]
                failed = failed or f"{table}: {type(e).__name__}: {e}"
                continue
            self.staged[table] = []
        self.writer.next_chunk()
        return failed

    def _expand_logged(self) -> list[ScalarRow]:
        rows: list[ScalarRow] = []
        logged, self.logged = self.logged, []
        for s, epoch, now, values in logged:
            for key, v in values.items():
                rows.append((s, key, v, epoch, now))
        return rows

    def _nonfinite_from_scalars(self, rows: list[ScalarRow], values: list[float]) -> list[tuple]:
        """`nonfinite` events (returned: written with these rows) for the first NaN/Inf loss and grad norm."""
        out: list[tuple] = []
        for (step, name, _, _, _), v in zip(rows, values):
            if math.isfinite(v):
                continue
            tensor = "grad" if name == schema.GRAD_NORM else ("loss" if "loss" in name else None)
            if tensor is None or tensor in self.seen_nonfinite:
                continue
            self.seen_nonfinite.add(tensor)
            out.append((int(step), "nonfinite", "", float(v), {"tensor": tensor, "metric": name, "value": str(v)}))
        return out

    def _nonfinite_from_layers(self, cols: dict[str, list]) -> list[tuple]:
        out: list[tuple] = []
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
            out.append((int(step), "nonfinite", layer, float("nan"), {"tensor": kind, "first_layer": layer}))
        return out


def check_value(v: Any) -> Any:
    """A probe.log value as a float or a 0-d dense tensor, or ValueError saying why it is not one."""
    if isinstance(v, Tensor):
        if v.ndim == 0 and v.layout == torch.strided and not v.is_complex() and not v.is_meta:
            return v.detach() if v.requires_grad else v  # the usual case (a loss), in a few attribute reads
        if v.layout != torch.strided:
            raise ValueError(f"a {str(v.layout).replace('torch.', '')} tensor (log t.to_dense() or a number)")
        if v.device.type == "meta":
            raise ValueError("a meta-device tensor has no values")
        if v.is_complex():
            raise ValueError("a complex tensor (log its .abs() or .real)")
        if v.numel() == 0:
            raise ValueError("an empty tensor")
        v = v.detach()
        return v.reshape(()) if v.numel() == 1 else v.float().mean()
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)) or (isinstance(v, np.generic) and v.dtype.kind in "biuf"):
        try:
            f = float(v)
        except OverflowError:
            raise ValueError(f"{type(v).__name__} {str(v)[:20]}... is too large for a float") from None
        if isinstance(v, int) and math.isinf(f):
            raise ValueError("too large for a float")
        return f
    if isinstance(v, str):
        raise ValueError(f"a string {v[:20]!r}, not a number")
    if isinstance(v, numbers.Number):
        raise ValueError(f"a {type(v).__name__}, not a float, int or tensor (convert it with float())")
    raise ValueError(f"a {type(v).__name__}, not a number")


def _host_rows(rows: list, convert: Callable[[list], list], lost: Callable[[str, BaseException], None]) -> tuple[list, list]:
    """convert(rows) for all rows at once; if that fails, row by row, leaving out the rows that fail."""
    try:
        return convert(rows), rows
    except Exception:  # noqa: BLE001 - find the one bad value instead of losing the batch
        pass
    values, kept = [], []
    for r in rows:
        try:
            values.extend(convert([r]))
            kept.append(r)
        except Exception as e:  # noqa: BLE001
            lost(f"{r[1]} at step {r[0]}", e)
    return values, kept


def _device_values_to_host(rows: list, col: int, convert: Callable[[list], list],
                           lost: Callable[[str, BaseException], None]) -> list:
    """Rows whose column `col` holds a tensor not on the CPU get that value copied to the host now (one copy
    per device; a host sync on an accelerator, once per flush); CPU tensors and numbers are left as they are."""
    idx = [i for i, r in enumerate(rows) if isinstance(r[col], Tensor) and r[col].device.type != "cpu"]
    if not idx:
        return rows
    rows = list(rows)
    try:
        host = convert([rows[i][col] for i in idx])
    except Exception:  # noqa: BLE001 - one by one: leave out only the values that fail
        host = []
        for i in idx:
            try:
                host.extend(convert([rows[i][col]]))
            except Exception as e:  # noqa: BLE001
                lost(f"{rows[i][1]} at step {rows[i][0]}", e)
                host.append(None)
    keep = []
    for i, h in zip(idx, host):
        r = rows[i]
        if h is None:
            keep.append(i)
            continue
        rows[i] = r[:col] + (h,) + r[col + 1:]
    if keep:
        drop = set(keep)
        rows = [r for i, r in enumerate(rows) if i not in drop]
    return rows


def to_host(values: list[Any]) -> list[float]:
    """Python floats for a list of floats and 0-d tensors (tensors copied together, once per device)."""
    out = [(float(v.reshape(-1)[0]) if isinstance(v, np.ndarray) else v) if not isinstance(v, Tensor) else 0.0
           for v in values]
    idx = [i for i, v in enumerate(values) if isinstance(v, Tensor)]
    for i, host in zip(idx, raw_to_host([values[i] for i in idx])):
        out[i] = float(host[0])
    return [float(v) for v in out]


def raw_to_host(vectors: list[Tensor]) -> list[np.ndarray]:
    """All raw vectors of a flush: concatenated per device, one copy to the host, split again."""
    by_device: dict[torch.device, list[int]] = defaultdict(list)
    out: list[np.ndarray] = [np.empty(0)] * len(vectors)
    for i, v in enumerate(vectors):
        if isinstance(v, np.ndarray):  # copied to the host already (at the flush, on the training thread)
            out[i] = v.reshape(-1)
        else:
            by_device[v.device].append(i)
    for idx in by_device.values():
        flat = torch.cat([vectors[i].reshape(-1).float() for i in idx]).cpu().numpy()
        offsets = np.cumsum([0] + [vectors[i].numel() for i in idx])
        for j, i in enumerate(idx):
            out[i] = flat[offsets[j]:offsets[j + 1]]
    return out
