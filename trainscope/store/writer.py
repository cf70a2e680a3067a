"""Append-only, crash-safe writer of one rank's shard of a run directory.

Each flush writes one Parquet chunk per table to a dot-named temp file, renames it into place and
then records it (SHA-256, rows, steps) in the rank's manifest `chunks-r<rank>.json`, itself
rewritten atomically. A process killed at any instant (even SIGKILL) leaves only complete chunks:
a chunk renamed into place but not yet in the manifest is still read (and adopted by the next
writer). meta.json is rewritten the same way at start, at close, at `probe.flush()`, and at the regular
flushes when its content changed (the progress fields `steps`, `last_flush`, `bytes_written` alone: once a
minute).

One live writer per rank: the writer holds an exclusive lock (`.lock-r<rank>`, flock) for its whole
life; a second one is refused with a clear message. Re-opening a directory that holds a run starts
a new *attempt* (the old meta.json is kept under attempts/a<N>/) unless `resume=True`, which
continues the last attempt. Chunk names carry rank, attempt, sequence number and pid:
`r0-a1-000007-p4242.parquet`; compacted chunks carry the sequence range they replace:
`r0-a1-000000_000015-p4242.parquet`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from trainscope.errors import TrainscopeError
from trainscope.store import schema

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, documented
    fcntl = None  # type: ignore[assignment]

_ARROW_TYPES = {
    "int64": pa.int64(),
    "int32": pa.int32(),
    "float64": pa.float64(),
    "string": pa.string(),
    "bool": pa.bool_(),
}

CHUNK_RE = re.compile(r"^r(\d+)-a(\d+)-(\d+)(?:_(\d+))?-p(\d+)\.parquet$")
LEGACY_CHUNK_RE = re.compile(r"^r(\d+)-(\d+)\.parquet$")
COMPACT_EVERY = 16  # merge this many chunks of one level into one chunk of the next level
CLOSE_COMPACT_MAX_BYTES = 512 << 20
# meta.json fields that change at every flush; alone they rewrite the file only every META_REFRESH_SECONDS
PROGRESS_FIELDS = ("steps", "last_flush", "bytes_written")
META_REFRESH_SECONDS = 60.0  # at close, merge a table into one chunk if it is smaller than this


def arrow_schema(table: str) -> pa.Schema:
    return pa.schema([(c, _ARROW_TYPES[d]) for c, d in schema.COLUMNS[table].items()])


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def meta_filename(rank: int) -> str:
    return schema.META_FILE if rank == 0 else f"meta-r{rank}.json"


def manifest_filename(rank: int) -> str:
    return f"chunks-r{rank}.json"


def parse_chunk_name(name: str) -> tuple[int, int, int, int] | None:
    """(rank, attempt, first seq, last seq) of a chunk file name, or None if it is not one."""
    m = CHUNK_RE.match(name)
    if m:
        lo = int(m.group(3))
        hi = int(m.group(4)) if m.group(4) is not None else lo
        return int(m.group(1)), int(m.group(2)), lo, hi
    m = LEGACY_CHUNK_RE.match(name)
    if m:  # schema 1.0: no attempt in the name
        return int(m.group(1)), 0, int(m.group(2)), int(m.group(2))
    return None


def safe_name(name: str, default: str = "run") -> str:
    """A single, harmless path component for a name taken from user code (e.g. a model class)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._-")
    return s[:100] or default


def default_run_dir(model_name: str) -> Path:
    """runs/<ModelClass>-<time>, always inside ./runs whatever the class is called."""
    return Path("runs") / f"{safe_name(model_name, 'model')}-{time.strftime('%Y%m%d-%H%M%S')}"


def read_json_file(path: Path, what: str = "file") -> Any:
    """JSON from a regular file, or TrainscopeError naming it (never blocks on a FIFO)."""
    import stat

    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise TrainscopeError(f"{path}: {what} is not a regular file")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            data = f.read()
        return json.loads(data)
    except TrainscopeError:
        raise
    except RecursionError:
        raise TrainscopeError(f"{path}: unreadable {what} (JSON nested too deeply)") from None
    except (OSError, ValueError) as e:
        raise TrainscopeError(f"{path}: unreadable {what} ({e.__class__.__name__}: {e})") from None


class RunWriter:
    """Writes one rank's shard of a run directory (see the module doc)."""

    def __init__(self, run_dir: str | os.PathLike[str], rank: int = 0, *, resume: bool = False,
                 compact_every: int = COMPACT_EVERY) -> None:
        self.dir = Path(run_dir)
        self.rank = int(rank)
        self.compact_every = max(2, int(compact_every))
        self.bytes_written = 0
        self.meta_writes = 0
        self._meta_key: str | None = None
        self._meta_time = 0.0
        self._lock_fd: int | None = None
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            for table in schema.TABLES:
                (self.dir / table).mkdir(exist_ok=True)
        except OSError as e:
            raise TrainscopeError(f"{self.dir}: cannot create the run directory ({e.strerror or e})") from None
        self._lock()
        try:
            self._open(resume)
        except BaseException:
            self.release()
            raise
        self._schemas = {t: arrow_schema(t) for t in schema.TABLES}

    # ------------------------------------------------------------------ lock
    def _lock(self) -> None:
        if fcntl is None:  # pragma: no cover
            return
        path = self.dir / f".lock-r{self.rank}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
            except OSError:
                holder = "another process"
            os.close(fd)
            raise TrainscopeError(
                f"{self.dir}: rank {self.rank} of this run is already being written by {holder}; two writers "
                "would mix their chunks. Give this run its own run_dir, or wait until the other one closes"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        self._lock_fd = fd

    def release(self) -> None:
        """Give up the lock (at close; the OS also drops it when the process dies)."""
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            except OSError:
                pass

    # ------------------------------------------------------------------ attempts and the manifest
    def _open(self, resume: bool) -> None:
        self._manifest: dict[str, dict[str, Any]] = {}
        mpath = self.dir / manifest_filename(self.rank)
        if mpath.exists():
            data = read_json_file(mpath, "chunk manifest")
            if isinstance(data, dict) and isinstance(data.get("chunks"), dict):
                self._manifest = dict(data["chunks"])
        self._adopt_orphans()
        meta_path = self.dir / meta_filename(self.rank)
        prev_meta: dict[str, Any] | None = None
        if meta_path.exists():
            try:
                m = read_json_file(meta_path, "run metadata")
                prev_meta = m if isinstance(m, dict) else None
            except TrainscopeError:
                prev_meta = None
        attempts = {e["attempt"] for e in self._manifest.values()}
        prev_attempt = None
        if prev_meta is not None:
            a = prev_meta.get("attempt", 0)
            prev_attempt = a if isinstance(a, int) else 0
        elif attempts:
            prev_attempt = max(attempts)
        if prev_attempt is not None and attempts:
            prev_attempt = max(prev_attempt, max(attempts))
        self.resumed = bool(resume and prev_attempt is not None)
        self.start_step = 0
        self.previous_meta = prev_meta if self.resumed else None
        if prev_attempt is None:
            self.attempt = 0
        elif self.resumed:
            self.attempt = prev_attempt
            steps = [e.get("max_step", -1) for e in self._manifest.values() if e["attempt"] == prev_attempt]
            meta_steps = prev_meta.get("steps") if prev_meta else None
            self.start_step = max([int(meta_steps) if isinstance(meta_steps, int) else 0]
                                  + [int(s) + 1 for s in steps if isinstance(s, int) and s >= 0])
        else:
            self.attempt = prev_attempt + 1
            if meta_path.exists():  # keep the earlier attempt's metadata next to its chunks
                keep = self.dir / "attempts" / f"a{prev_attempt}"
                keep.mkdir(parents=True, exist_ok=True)
                os.replace(meta_path, keep / meta_path.name)
        self._has_init = any(e["table"] == schema.INIT and e["attempt"] == self.attempt
                             for e in self._manifest.values())
        self._seq = max((e["hi"] for e in self._manifest.values()), default=-1) + 1
        self._save_manifest()

    def _adopt_orphans(self) -> None:
        """Chunks renamed into place whose manifest update a crash cut off; leftovers of a compaction."""
        prefix = f"r{self.rank}-"
        listed = {(e["table"], e["attempt"]): [] for e in self._manifest.values()}
        for e in self._manifest.values():
            listed.setdefault((e["table"], e["attempt"]), []).append((e["lo"], e["hi"]))
        for table in schema.TABLES:
            folder = self.dir / table
            for p in sorted(folder.iterdir()):
                name = p.name
                if name.startswith(f".tmp-{prefix}"):  # a write a crash cut off (we hold the lock)
                    _unlink(p)
                    continue
                if not name.startswith(prefix):
                    continue
                parsed = parse_chunk_name(name)
                key = f"{table}/{name}"
                if parsed is None or key in self._manifest:
                    continue
                _, attempt, lo, hi = parsed
                ranges = listed.get((table, attempt), [])
                if any(lo <= h and l <= hi for l, h in ranges):
                    _unlink(p)  # replaced by a compacted chunk (or a compacted chunk never recorded)
                    continue
                try:
                    data = p.read_bytes()
                    tbl = pq.read_table(pa.BufferReader(data))
                except (OSError, pa.ArrowException):
                    continue  # the reader names it
                self._manifest[key] = _entry(table, attempt, lo, hi, data, tbl)
                ranges.append((lo, hi))
                listed[(table, attempt)] = ranges

    def _save_manifest(self) -> None:
        data = json.dumps({"rank": self.rank, "chunks": self._manifest}, indent=0, sort_keys=True).encode()
        _atomic_write_bytes(self.dir / manifest_filename(self.rank), data)

    # ------------------------------------------------------------------ writing
    def write_meta(self, meta: Mapping[str, Any], force: bool = True) -> None:
        """Rewrite this rank's meta file; a final status (the probe's close) also compacts the
        attempt's chunks and releases the lock. Not `force` (the probe's regular flushes): only when the
        content changed, the progress fields (PROGRESS_FIELDS) aside, which are refreshed every
        META_REFRESH_SECONDS."""
        meta = dict(meta)
        meta["attempt"] = self.attempt
        if self.resumed:
            prev = self.previous_meta or {}
            meta["started"] = prev.get("started", meta.get("started"))
            resumes = prev.get("resumes") if isinstance(prev.get("resumes"), list) else []
            meta["resumes"] = resumes + [{"time": self._resume_time, "step": self.start_step}]
        final = meta.get("status") not in (None, "running")
        if final and self._lock_fd is not None:
            try:
                self.compact(final=True)
            except Exception:  # noqa: BLE001 - the small chunks stay valid
                pass
        key = json.dumps({k: v for k, v in meta.items() if k not in PROGRESS_FIELDS}, default=str,
                         allow_nan=True, sort_keys=True)
        now = time.monotonic()
        if (not force and not final and key == self._meta_key
                and now - self._meta_time < META_REFRESH_SECONDS):
            return
        data = json.dumps(meta, indent=1, default=str, allow_nan=True).encode()
        _atomic_write_bytes(self.dir / meta_filename(self.rank), data)
        self._meta_key, self._meta_time = key, now
        self.meta_writes += 1
        if final:
            self.release()

    def __del__(self) -> None:
        self.release()

    @property
    def _resume_time(self) -> float:
        if not hasattr(self, "_resume_t"):
            self._resume_t = time.time()
        return self._resume_t

    def table_from_columns(self, table: str, columns: Mapping[str, list[Any]]) -> pa.Table | None:
        """An Arrow table of `table`'s schema from {column: list}; absent columns are nulls."""
        sch = self._schemas[table]
        n = max((len(v) for v in columns.values()), default=0)
        if n == 0:
            return None
        arrays = []
        for field in sch:
            values = columns.get(field.name)
            if values is None:
                if field.name == "rank":
                    values = [self.rank] * n
                elif field.name == "attempt":
                    values = [self.attempt] * n
                else:
                    values = [None] * n
            arrays.append(pa.array(values, type=field.type, from_pandas=True))
        return pa.Table.from_arrays(arrays, schema=sch)

    def append(self, table: str, columns: Mapping[str, list[Any]]) -> None:
        """Append rows given as {column: list}; absent columns are filled with nulls.

        Raises on a write error with nothing recorded, so the caller may keep its rows and retry.
        The init table is written once per attempt (a resumed attempt keeps the first one).
        """
        if table == schema.INIT and self._has_init:
            return
        tbl = self.table_from_columns(table, columns)
        if tbl is None:
            return
        self._write_chunk(table, _in_step_order(tbl), self._seq, self._seq)
        if table == schema.INIT:
            self._has_init = True
        if self._level_count(table, 0) >= self.compact_every:
            try:
                self.compact(table)
            except Exception:  # noqa: BLE001 - the small chunks stay valid and listed
                pass

    def _write_chunk(self, table: str, tbl: pa.Table, lo: int, hi: int, level: int = 0) -> str:
        rng = f"{lo:06d}" if lo == hi else f"{lo:06d}_{hi:06d}"
        name = f"r{self.rank}-a{self.attempt}-{rng}-p{os.getpid()}.parquet"
        final = self.dir / table / name
        tmp = final.with_name(f".tmp-{name}")
        sink = pa.BufferOutputStream()
        pq.write_table(tbl, sink, compression="zstd")
        data = sink.getvalue().to_pybytes()
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, final)
        except BaseException:
            _unlink(tmp)
            raise
        key = f"{table}/{name}"
        self._manifest[key] = _entry(table, self.attempt, lo, hi, data, tbl, level)
        try:
            self._save_manifest()
        except BaseException:
            # not recorded: take the chunk back, so that the caller's retry cannot write its rows twice
            self._manifest.pop(key, None)
            _unlink(final)
            raise
        self.bytes_written += len(data)
        return key

    def next_chunk(self) -> None:
        """Advance the chunk counter once per flush (all tables of a flush share a number)."""
        self._seq += 1

    # ------------------------------------------------------------------ compaction
    def _mine(self, table: str) -> list[tuple[str, dict[str, Any]]]:
        return sorted(((k, e) for k, e in self._manifest.items()
                       if e["table"] == table and e["attempt"] == self.attempt), key=lambda kv: kv[1]["lo"])

    def _level_count(self, table: str, level: int) -> int:
        return sum(1 for _, e in self._mine(table) if e.get("level", 0) == level)

    def compact(self, table: str | None = None, final: bool = False) -> None:
        """Merge this attempt's chunks: every `compact_every` chunks of a level become one chunk of the
        next level; `final` (at close) merges a whole table into one chunk when it is small enough."""
        for t in ([table] if table else schema.TABLES):
            if final:
                mine = self._mine(t)
                if len(mine) > 1 and sum(e["bytes"] for _, e in mine) <= CLOSE_COMPACT_MAX_BYTES:
                    self._merge(t, mine, 1 + max(e.get("level", 0) for _, e in mine))
                continue
            level = 0
            while True:
                group = [(k, e) for k, e in self._mine(t) if e.get("level", 0) == level]
                if len(group) < self.compact_every:
                    break
                self._merge(t, group[: self.compact_every], level + 1)
                level += 1

    def _merge(self, table: str, group: list[tuple[str, dict[str, Any]]], level: int) -> None:
        tables = []
        for key, entry in group:
            data = (self.dir / key).read_bytes()
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:  # never bake damage into a new checksum
                raise TrainscopeError(f"{self.dir / key}: changed on disk since it was written; not compacted")
            tables.append(pq.read_table(pa.BufferReader(data)))
        merged = _in_step_order(pa.concat_tables(tables).cast(self._schemas[table]))
        lo, hi = min(e["lo"] for _, e in group), max(e["hi"] for _, e in group)
        self._write_chunk_replacing(table, merged, lo, hi, level, [k for k, _ in group])

    def _write_chunk_replacing(self, table: str, tbl: pa.Table, lo: int, hi: int, level: int,
                               old: list[str]) -> None:
        # rename the merged chunk into place, then one manifest write swaps old for new, then the old
        # files go: a crash at any point leaves either the old chunks or the new one listed, never both
        rng = f"{lo:06d}_{hi:06d}"
        name = f"r{self.rank}-a{self.attempt}-{rng}-p{os.getpid()}.parquet"
        final = self.dir / table / name
        tmp = final.with_name(f".tmp-{name}")
        sink = pa.BufferOutputStream()
        pq.write_table(tbl, sink, compression="zstd")
        data = sink.getvalue().to_pybytes()
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, final)
        for k in old:
            self._manifest.pop(k, None)
        self._manifest[f"{table}/{name}"] = _entry(table, self.attempt, lo, hi, data, tbl, level)
        self._save_manifest()
        for k in old:
            if k != f"{table}/{name}":
                _unlink(self.dir / k)


def _entry(table: str, attempt: int, lo: int, hi: int, data: bytes, tbl: pa.Table, level: int = 0) -> dict[str, Any]:
    max_step = -1
    if "step" in tbl.column_names and tbl.num_rows:
        import pyarrow.compute as pc

        m = pc.max(tbl.column("step")).as_py()
        max_step = int(m) if m is not None else -1
    return {"table": table, "attempt": int(attempt), "lo": int(lo), "hi": int(hi), "level": int(level),
            "rows": int(tbl.num_rows), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "max_step": max_step}


def _unlink(p: Path) -> None:
    try:
        p.unlink()
    except OSError:
        pass


def new_meta(**fields: Any) -> dict[str, Any]:
    return {
        "schema_version": schema.SCHEMA_VERSION,
        "status": "running",
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.time(),
        **fields,
    }


def _in_step_order(tbl: pa.Table) -> pa.Table:
    """The rows in step order (a stable sort: rows of one step keep their order), the order load_run gives
    them: a store written in order loads without sorting (a sort of 10M rows is about a second)."""
    if "step" not in tbl.column_names or tbl.num_rows < 2:
        return tbl
    step = tbl.column("step").to_numpy(zero_copy_only=False)
    if (step[1:] >= step[:-1]).all():
        return tbl
    return tbl.take(pa.array(np.argsort(step, kind="stable")))
