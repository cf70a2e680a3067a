"""Read a run directory (or any supported log) into a `Run`, with one clear error for bad input.

Unreadable is not empty: a table folder that cannot be listed, a symlink loop or a chunk that
cannot be read is an error, and so is a run that holds no rows at all. Chunks listed in the
rank's manifest (chunks-r<rank>.json) are verified against their SHA-256; a mismatch names the
chunk (`skip_corrupt=True` reads the rest and says what was left out in `run.meta["notes"]`).
"""
from __future__ import annotations

import hashlib
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from trainscope.errors import TrainscopeError
from trainscope.store import schema, shards
from trainscope.store.run import Run, empty_frame
from trainscope.store.writer import meta_filename, parse_chunk_name, read_json_file

_STATUS_ORDER = ("crashed", "running", "incomplete", "finished")
_META_TYPES: dict[str, tuple[type, ...]] = {
    "model": (dict,), "optimizer": (dict,), "scheduler": (dict,), "criterion": (dict,), "config": (dict,),
    "world_size": (int,), "every": (int,), "rank": (int,), "num_classes": (int,), "epochs": (int,),
    "name": (str,), "status": (str,), "host": (str,), "disabled_hooks": (list,), "pid": (int,),
}


def _read_json(path: Path) -> dict[str, Any]:
    data = read_json_file(path, "run metadata")
    if not isinstance(data, dict):
        raise TrainscopeError(f"{path}: run metadata is not a JSON object")
    return data


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _effective_status(meta: dict[str, Any]) -> str:
    """'running' in the file but the writer is gone means the run did not end cleanly."""
    status = str(meta.get("status", "unknown"))
    if status == "running" and meta.get("host") == socket.gethostname():
        pid = meta.get("pid")
        if isinstance(pid, int) and not isinstance(pid, bool) and not _process_alive(pid):
            return "crashed"
    return status


def _stat(path: Path) -> os.stat_result | None:
    """os.stat, None if the path does not exist; an error for anything unreadable (loops, permissions)."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        if os.path.lexists(path):
            raise TrainscopeError(f"{path}: dangling symlink") from None
        return None
    except OSError as e:
        raise TrainscopeError(f"{path}: unreadable ({e.strerror or e})") from None


def _listdir(folder: Path) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except OSError as e:
        raise TrainscopeError(f"{folder}: unreadable folder ({e.strerror or e})") from None


class _Chunks:
    """The chunks of a run directory: manifests, file names, attempts."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        self.listed: dict[str, dict[str, Any]] = {}  # "table/name" -> manifest entry
        for name in _listdir(run_dir):
            if name.startswith("chunks-r") and name.endswith(".json"):
                data = read_json_file(run_dir / name, "chunk manifest")
                chunks = data.get("chunks") if isinstance(data, dict) else None
                if not isinstance(chunks, dict):
                    raise TrainscopeError(f"{run_dir / name}: not a trainscope chunk manifest")
                self.listed.update({k: v for k, v in chunks.items() if isinstance(v, dict)})
        self.files: dict[str, list[tuple[str, tuple[int, int, int, int]]]] = {}
        for table in schema.TABLES:
            folder = run_dir / table
            st = _stat(folder)
            if st is None:
                self.files[table] = []
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise TrainscopeError(f"{folder}: not a folder of chunks")
            out = []
            for name in _listdir(folder):
                if name.startswith((".", "_")) or not name.endswith(".parquet"):
                    continue
                parsed = parse_chunk_name(name)
                if parsed is None:  # a foreign parquet file someone put there: read, as before
                    parsed = (-1, 0, -1, -1)
                out.append((name, parsed))
            self.files[table] = out

    def attempts(self) -> set[int]:
        found = {p[1] for files in self.files.values() for _, p in files}
        found |= {int(e.get("attempt", 0)) for e in self.listed.values()}
        return found

    def select(self, table: str, attempt: int) -> list[tuple[Path, dict[str, Any] | None, int]]:
        """(path, manifest entry or None, rank) of the chunks of one attempt, in write order."""
        ranges: dict[int, list[tuple[int, int]]] = {}
        for key, e in self.listed.items():
            if e.get("table") == table and int(e.get("attempt", 0)) == attempt:
                parsed = parse_chunk_name(key.split("/", 1)[1])
                ranges.setdefault(parsed[0] if parsed else -1, []).append((int(e.get("lo", -1)), int(e.get("hi", -1))))
        present = {name for name, _ in self.files[table]}
        out: list[tuple[int, Path, dict[str, Any] | None, int]] = []
        for key, e in self.listed.items():
            t, name = key.split("/", 1)
            if t != table or int(e.get("attempt", 0)) != attempt:
                continue
            parsed = parse_chunk_name(name)
            rank = parsed[0] if parsed else -1
            out.append((int(e.get("lo", 0)), self.dir / key, e, rank))
            if name not in present:
                out[-1] = (out[-1][0], self.dir / key, {**e, "_missing": True}, rank)
        for name, (rank, att, lo, hi) in self.files[table]:
            if f"{table}/{name}" in self.listed or att != attempt:
                continue
            # not in a manifest: a chunk a crash cut off before its manifest update (kept), or a
            # leftover of a compaction whose replacement is listed (skipped)
            if any(lo <= h and l <= hi for l, h in ranges.get(rank, [])):
                continue
            out.append((lo, self.dir / table / name, None, rank))
        out.sort(key=lambda x: (x[3], x[0], x[1].name))
        return [(p, e, r) for _, p, e, r in out]


def _open_chunks(run_dir: Path, chunks: "_Chunks", table: str, attempt: int) -> tuple[list, "_Chunks"]:
    """Open every chunk of one attempt's table at once: a live writer may compact (delete) chunks
    between our listing and our opening, but a file once opened stays readable. A chunk that
    vanished means look again; after a few tries it is reported as missing."""
    for tries in range(20):
        opened: list[tuple[Path, dict[str, Any] | None, Any]] = []
        vanished = False
        for path, entry, _ in chunks.select(table, attempt):
            if entry is not None and entry.get("_missing"):
                vanished = True
                opened.append((path, entry, TrainscopeError(
                    f"{path}: chunk listed in the manifest is missing (deleted or moved)")))
                continue
            try:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
                opened.append((path, entry, os.fdopen(fd, "rb")))
            except FileNotFoundError:
                vanished = True
                opened.append((path, entry, TrainscopeError(f"{path}: chunk vanished while reading")))
            except OSError as e:
                opened.append((path, entry, TrainscopeError(f"{path}: unreadable chunk ({e.strerror or e})")))
        if not vanished or tries == 19:
            return opened, chunks
        for _, _, f in opened:
            if not isinstance(f, Exception):
                f.close()
        time.sleep(0.01)
        chunks = _Chunks(run_dir)
    raise AssertionError("unreachable")  # pragma: no cover


def _chunk_bytes(path: Path, entry: dict[str, Any] | None, f: Any) -> bytes:
    """One chunk's bytes, checked against its manifest entry (size, SHA-256)."""
    if isinstance(f, Exception):
        raise f
    try:
        with f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise TrainscopeError(f"{path}: chunk is not a regular file")
            data = f.read()
    except OSError as e:
        raise TrainscopeError(f"{path}: unreadable chunk ({e.strerror or e})") from None
    if entry is not None and isinstance(entry.get("bytes"), int) and entry["bytes"] != len(data):
        raise TrainscopeError(f"{path}: corrupt or truncated chunk ({len(data)} bytes, {entry['bytes']} written)")
    if entry is not None and entry.get("sha256") and hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise TrainscopeError(f"{path}: corrupt or truncated chunk (its SHA-256 differs from the manifest's: "
                              "the file changed after it was written)")
    return data


def _decode(path: Path, data: bytes, table: str, attempt: int) -> pa.Table:
    """One chunk as an Arrow table with the schema's columns (see `_typed`), all columns at once."""
    cols = schema.COLUMNS[table]
    try:
        # string columns decoded as dictionaries (a few distinct layer names over millions of rows):
        # faster to read and to sort, and turned into strings once per table
        strings = [fl.name for fl in pq.read_schema(pa.BufferReader(data)) if cols.get(fl.name) == "string"
                   and (pa.types.is_string(fl.type) or pa.types.is_large_string(fl.type))]
        tbl = pq.read_table(pa.BufferReader(data), read_dictionary=strings)
    except Exception as e:  # noqa: BLE001 - pyarrow raises many types for a damaged file
        raise TrainscopeError(f"{path}: corrupt or truncated chunk ({type(e).__name__}: {e})") from None
    names = set(tbl.column_names)
    missing = [c for c in cols if c not in names and c != "attempt"]
    if missing:
        raise TrainscopeError(f"{path}: not a trainscope {table} chunk (missing columns {', '.join(missing)})")
    tbl = tbl.select([c for c in cols if c in names])
    if "attempt" not in names:
        tbl = tbl.append_column("attempt", pa.array(np.full(tbl.num_rows, attempt, dtype=np.int32)))
    try:
        return _typed(tbl.select(list(cols)), cols)
    except Exception as e:  # noqa: BLE001 - wrong column types and the like
        raise TrainscopeError(f"{path}: unreadable {table} chunk ({type(e).__name__}: {e})") from None


class _NotLazy(Exception):
    """A chunk read column by column turned out not to be the writer's own (a damaged page, a column
    of another type): the table is read again the way `_decode` reads every chunk."""


class _Decoded:
    """A chunk decoded whole (`_decode`)."""

    def __init__(self, tbl: pa.Table) -> None:
        self.tbl, self.num_rows = tbl, tbl.num_rows

    def column(self, c: str) -> pa.ChunkedArray:
        return self.tbl.column(c)

    def drop(self, c: str) -> None:
        self.tbl = self.tbl.drop_columns([c])  # frees the column's buffers


class _Lazy:
    """A chunk the writer wrote (exactly the table's columns), decoded one column at a time when
    the frame is built: a 10M-row table then never holds all its decoded columns besides the
    frame's (a gigabyte less of fresh memory, which costs seconds on some VMs). Every column must
    decode and be of the writer's type (`_native`), or `_NotLazy` is raised."""

    def __init__(self, path: Path, data: bytes, table: str, attempt: int) -> None:
        self.path, self.data, self.table, self.attempt = path, data, table, attempt
        self.cols = schema.COLUMNS[table]
        self.file = pq.ParquetFile(pa.BufferReader(data))
        names = self.file.schema_arrow.names
        if len(set(names)) != len(names) or set(names) not in (set(self.cols), set(self.cols) - {"attempt"}):
            raise _NotLazy(path)
        strings = [fl.name for fl in self.file.schema_arrow if self.cols[fl.name] == "string"
                   and (pa.types.is_string(fl.type) or pa.types.is_large_string(fl.type))]
        if strings:
            self.file = pq.ParquetFile(pa.BufferReader(data), read_dictionary=strings)
        self.names = set(names)
        self.num_rows = self.file.metadata.num_rows

    def column(self, c: str) -> pa.ChunkedArray:
        if c not in self.names:  # an older store: no attempt column
            return pa.chunked_array([np.full(self.num_rows, self.attempt, dtype=np.int32)])
        try:
            col = self.file.read(columns=[c]).column(0)
        except Exception as e:  # noqa: BLE001 - a damaged page: read as every chunk is, for its error
            raise _NotLazy(self.path) from e
        if len(col) != self.num_rows or not _native(col, self.cols[c]):
            raise _NotLazy(self.path)
        return col

    def drop(self, c: str) -> None:
        pass


def _open_chunk(path: Path, data: bytes, table: str, attempt: int) -> "_Lazy | _Decoded":
    """The chunk to be decoded column by column (`_Lazy`), or decoded now when it is anything but
    the writer's own table (its errors then come where they always came, in chunk order)."""
    try:
        return _Lazy(path, data, table, attempt)
    except Exception:  # noqa: BLE001 - not the writer's columns, or an unreadable footer
        return _Decoded(_decode(path, data, table, attempt))


_ARROW = {"int64": pa.int64(), "int32": pa.int32(), "float64": pa.float64(), "bool": pa.bool_()}


def _native(col: pa.ChunkedArray, dtype: str) -> bool:
    """True when the column converts to `dtype` as it is: the writer's own types. Integers and
    booleans without nulls (pandas' astype fails on, or changes, those); NaN/null floats are NaN."""
    if dtype == "string":
        t = col.type.value_type if pa.types.is_dictionary(col.type) else col.type
        return pa.types.is_string(t) or pa.types.is_large_string(t)
    return col.type == _ARROW[dtype] and (dtype == "float64" or col.null_count == 0)


def _typed(tbl: pa.Table, cols: dict[str, str]) -> pa.Table:
    """The chunk with the schema's types. A chunk the writer wrote stays Arrow as it is (converted to
    pandas once per table, after sorting: converting and sorting 10M rows chunk by chunk in pandas
    took seconds); anything else (a foreign or hand-made file) is converted with pandas' astype as
    it always was, so it reads, or fails, the same way."""
    if all(_native(tbl.column(c), d) for c, d in cols.items()):
        return tbl
    return pa.Table.from_pandas(tbl.to_pandas().astype(cols), preserve_index=False)


def _dictionary_codes(arr: pa.ChunkedArray) -> tuple[np.ndarray, pd.Index] | None:
    """`pd.factorize` of the string column a dictionary-decoded column becomes, from its
    dictionary indices (no hashing of millions of strings): codes numbered by first appearance,
    -1 where null, in the smallest signed integer type that holds them; the distinct values as
    the string Index pd.factorize gives. None when the column is not one clean dictionary."""
    if not pa.types.is_dictionary(arr.type) or arr.num_chunks == 0:
        return None
    arr = arr.unify_dictionaries()
    dictionary = arr.chunks[0].dictionary
    k = len(dictionary)
    if dictionary.null_count or k >= 2**15 - 1 or len(pc.unique(dictionary)) != k:  # few distinct values
        return None
    n = len(arr)
    itype = np.int8 if k < 127 else np.int16
    raw = np.empty(n, dtype=itype)  # the dictionary's indices, null -> k
    pos = 0
    for ch in arr.chunks:
        idx = ch.indices.fill_null(k) if ch.null_count else ch.indices
        raw[pos:pos + len(ch)] = idx.to_numpy(zero_copy_only=False)
        pos += len(ch)
    m = 4096  # the first appearances: in a run's first steps (every layer each step), else further on
    while True:
        seen = pd.unique(raw[:m])
        seen = seen[seen < k]
        if len(seen) == k or m >= n:
            break
        m *= 16
    remap = np.full(k + 1, -1, dtype=itype)
    remap[seen] = np.arange(len(seen), dtype=itype)
    uniques = pd.Index(pd.arrays.ArrowStringArray(dictionary.take(pa.array(seen)).cast(pa.large_string())))
    return remap[raw], uniques


class _Owned:
    """A writable numpy view of an Arrow buffer that nothing else holds (see `_owned_view`); keeps it alive."""

    def __init__(self, view: np.ndarray) -> None:
        self.view = view  # read-only, its base holds the Arrow array
        self.__array_interface__ = {**view.__array_interface__, "data": (view.__array_interface__["data"][0], False)}


def _owned_view(arr: pa.ChunkedArray, dtype: str, pieces: list, where: np.ndarray | None) -> np.ndarray | None:
    """The column as a writable numpy array over its own Arrow buffer, when that is safe and exact:
    one chunk file decoded column by column (`_Lazy`), the column one chunk of the schema's type
    (integers without nulls; a float's nulls become NaN in place, as Arrow's `to_numpy` makes them),
    in place (no sort), its values not inside the file's bytes. Nothing else holds the decoded
    column, so writing to the frame changes no other Arrow object."""
    if where is not None or len(pieces) != 1 or not isinstance(pieces[0], _Lazy) or arr.num_chunks != 1:
        return None
    ch = arr.chunk(0)
    if dtype not in ("int64", "int32", "float64") or ch.type != _ARROW[dtype] or (ch.null_count and dtype != "float64"):
        return None
    values = ch.buffers()[1]
    itemsize = np.dtype(dtype).itemsize
    if values is None or values.size < (ch.offset + len(ch)) * itemsize:
        return None
    view = np.frombuffer(values, dtype=dtype, count=len(ch), offset=ch.offset * itemsize)
    lo, file = view.__array_interface__["data"][0], pa.py_buffer(pieces[0].data)
    if file.address <= lo + view.nbytes and lo <= file.address + file.size:  # a slice of the file image
        return None
    out = np.asarray(_Owned(view))
    if not out.flags.writeable or out.dtype != np.dtype(dtype) or len(out) != len(arr):
        return None
    if ch.null_count:
        out[ch.is_null().to_numpy(zero_copy_only=False)] = np.nan
    return out


def _to_frame(tables: list["_Lazy | _Decoded"], cols: dict[str, str],
              codes: dict[str, tuple[np.ndarray, pd.Index]] | None = None) -> pd.DataFrame:
    """One DataFrame of the chunks in (step, rank) order (a stable sort; chunks are written in step
    order, their rows often are not), with the schema's dtypes.

    Built for 10M rows, where touching fresh memory is what costs (a page fault per page: seconds
    per GB on some VMs): each column is converted once, numbers written straight into their sorted
    place in memory from Arrow's pool, the column's Arrow buffers freed before the next, so that the
    pool hands the same memory on; strings last, when most of the decoded buffers are free.
    `codes` receives the codes of the dictionary-decoded string columns (`_dictionary_codes`)."""

    decoded: dict[str, pa.ChunkedArray] = {}

    def column(c: str) -> pa.ChunkedArray:
        if c in decoded:
            return decoded.pop(c)
        per_chunk = [t.column(c) for t in tables]
        chunks = [ch for col in per_chunk for ch in col.chunks]
        if len({ch.type for ch in chunks}) > 1:  # dictionary and plain strings (a converted chunk)
            chunks = [ch.cast(pa.large_string()) for ch in chunks]
        return pa.chunked_array(chunks, type=chunks[0].type if chunks else per_chunk[0].type)

    n = sum(t.num_rows for t in tables)
    order = where = None  # the sorted position of each row is where[row]
    if "step" in cols:
        decoded["step"], decoded["rank"] = column("step"), column("rank")
        step, rank = decoded["step"].to_numpy(), decoded["rank"].to_numpy()
        if not _sorted_by_step_rank(step, rank):
            order = np.lexsort((rank, step))
            where = np.empty(n, dtype=np.int64)
            where[order] = np.arange(n)
        del step, rank
    data: dict[str, Any] = {}
    for c, dtype in sorted(cols.items(), key=lambda cd: cd[1] == "string"):
        arr = column(c)
        if dtype == "string":
            if order is not None:
                arr = arr.take(order)  # on a dictionary's codes, before the strings exist
            if arr.num_chunks > 1 and pa.types.is_dictionary(arr.type):
                # one chunk of strings: Arrow's take (every row selection of the frame) first
                # concatenates a chunked string column, a copy of all its strings each time
                arr = arr.unify_dictionaries()
                arr = pa.chunked_array([pa.concat_arrays(arr.chunks)], type=arr.type)
            if codes is not None and (found := _dictionary_codes(arr)) is not None:
                codes[c] = found
            data[c] = pd.arrays.ArrowStringArray(arr.cast(pa.large_string()))
        elif (own := _owned_view(arr, dtype, tables, where)) is not None:
            data[c] = own  # the decoded column itself: no copy, no second buffer of fresh memory
        else:  # a plain writable numpy array (a view of Arrow's buffer would be read-only)
            out = np.frombuffer(pa.allocate_buffer(n * np.dtype(dtype).itemsize), dtype=dtype)  # np.empty
            pos = 0
            for ch in arr.chunks:
                values = ch.to_numpy(zero_copy_only=False)  # NaN for a null float
                out[slice(pos, pos + len(values)) if where is None else where[pos:pos + len(values)]] = values
                pos += len(values)
            data[c] = out
        del arr
        for t in tables:
            t.drop(c)
    return pd.DataFrame({c: data[c] for c in cols}, copy=False).astype(cols)


def _read_table(run_dir: Path, chunks: "_Chunks", table: str, attempt: int, skip_corrupt: bool,
                notes: list[str], codes: dict[str, tuple[np.ndarray, pd.Index]] | None = None
                ) -> tuple[pd.DataFrame, "_Chunks"]:
    opened, chunks = _open_chunks(run_dir, chunks, table, attempt)
    read: list[tuple[Path, bytes | TrainscopeError]] = []  # each chunk's bytes, or why it has none
    pieces: list[_Lazy | _Decoded] = []
    noted = len(notes)
    for i, (path, entry, f) in enumerate(opened):
        try:
            data: bytes | TrainscopeError = _chunk_bytes(path, entry, f)
        except TrainscopeError as e:
            data = e
        read.append((path, data))
        err = data if isinstance(data, TrainscopeError) else None
        if err is None:
            try:
                pieces.append(_open_chunk(path, data, table, attempt))
            except TrainscopeError as e:
                err = e
        if err is not None:
            if not skip_corrupt:
                for _, _, g in opened[i + 1:]:
                    if not isinstance(g, Exception):
                        g.close()
                try:  # an earlier chunk's own error comes first, as it always did
                    for p in pieces:
                        if isinstance(p, _Lazy):
                            _decode(p.path, p.data, table, attempt)
                except TrainscopeError as first:
                    err = first
                raise TrainscopeError(f"{err} (--skip-corrupt reads the rest)") from None
            notes.append(f"skipped {err}")
    if not pieces:
        return empty_frame(table), chunks
    try:
        return _to_frame(pieces, schema.COLUMNS[table], codes), chunks
    except _NotLazy:
        pass
    # a chunk that is not what the writer writes after all: every chunk decoded whole, in order,
    # its errors raised or noted as they always were
    del notes[noted:]
    tables: list[_Lazy | _Decoded] = []
    for path, data in read:
        try:
            if isinstance(data, TrainscopeError):
                raise data
            tables.append(_Decoded(_decode(path, data, table, attempt)))
        except TrainscopeError as e:
            if not skip_corrupt:
                raise TrainscopeError(f"{e} (--skip-corrupt reads the rest)") from None
            notes.append(f"skipped {e}")
    if not tables:
        return empty_frame(table), chunks
    if codes is not None:
        codes.clear()
    return _to_frame(tables, schema.COLUMNS[table], codes), chunks


def _sanitize_meta(meta: dict[str, Any], notes: list[str], where: Path) -> None:
    """Fields of the wrong type (a hand-edited or foreign meta.json) become None, with a note."""
    for key, types in _META_TYPES.items():
        v = meta.get(key)
        if v is None:
            continue
        if not isinstance(v, types) or (int in types and isinstance(v, bool)):
            notes.append(f"{where}: meta field {key!r} is {type(v).__name__} {str(v)[:40]!r}, not "
                         f"{types[0].__name__}; ignored")
            meta[key] = None
    steps = meta.get("steps")
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 0):
        notes.append(f"{where}: meta field 'steps' is {str(steps)[:40]!r}, not a step count; counted from the data")
        meta["steps"] = None


def _metas_of_attempt(run_dir: Path, attempt: int, latest: int) -> dict[int, dict[str, Any]]:
    """rank -> meta of one attempt (the top-level files hold each rank's latest attempt)."""
    top: dict[int, Path] = {}
    if _stat(run_dir / schema.META_FILE) is not None:
        top[0] = run_dir / schema.META_FILE
    for name in _listdir(run_dir):
        if name.startswith("meta-r") and name.endswith(".json") and name[6:-5].isdigit():
            top[int(name[6:-5])] = run_dir / name
    metas: dict[int, dict[str, Any]] = {}
    for rank, p in top.items():
        m = _read_json(p)
        a = m.get("attempt", 0)
        if (a if isinstance(a, int) else 0) == attempt:
            metas[rank] = m
    archived = run_dir / "attempts" / f"a{attempt}"
    if _stat(archived) is not None:
        for name in _listdir(archived):
            if name == schema.META_FILE:
                metas.setdefault(0, _read_json(archived / name))
            elif name.startswith("meta-r") and name.endswith(".json") and name[6:-5].isdigit():
                metas.setdefault(int(name[6:-5]), _read_json(archived / name))
    return metas


def _sorted_by_step_rank(step: np.ndarray, rank: np.ndarray) -> bool:
    """True when a stable sort by (step, rank) would not move any row (sorting 10M rows takes seconds).
    Checked a block at a time (blocks overlap by one row): small temporaries, stops at the first
    row out of order."""
    block = 1 << 16
    for lo in range(0, len(step) - 1, block):
        s, r = step[lo:lo + block + 1], rank[lo:lo + block + 1]
        ds = s[1:] - s[:-1]
        if not np.all((ds > 0) | ((ds == 0) & (r[1:] >= r[:-1]))):
            return False
    return True


def load_run(path: str | os.PathLike[str], attempt: int | None = None, skip_corrupt: bool = False) -> Run:
    """Load a trainscope run directory (all ranks merged; the `rank` column tells them apart).

    attempt: which attempt to read when the directory was reused (0, 1, ...; default the latest;
    `run.meta["attempt"]` / `run.meta["attempts"]` say which was read and which exist).
    skip_corrupt: leave out chunks that fail their checksum or cannot be read (listed in
    `run.meta["notes"]`) instead of raising.
    """
    run_dir = Path(path)
    st = _stat(run_dir)
    if st is None:
        raise TrainscopeError(f"{run_dir}: no such run directory")
    if not stat.S_ISDIR(st.st_mode):
        raise TrainscopeError(f"{run_dir}: not a directory")
    entries = [n for n in _listdir(run_dir) if not n.startswith(".")]
    if not entries:
        raise TrainscopeError(f"{run_dir}: empty directory, not a trainscope run")
    has_meta = schema.META_FILE in entries or any(n.startswith("meta-r") and n.endswith(".json") for n in entries)
    if not has_meta:
        found = ", ".join(sorted(entries)[:5])
        raise TrainscopeError(f"{run_dir}: not a trainscope run (no meta.json; found {found})")
    chunks = _Chunks(run_dir)
    top_meta = _read_json(run_dir / meta_filename(0)) if schema.META_FILE in entries else None
    attempts = chunks.attempts()
    for m in ([top_meta] if top_meta else []):
        a = m.get("attempt", 0)
        attempts.add(a if isinstance(a, int) and not isinstance(a, bool) else 0)
    attempts = attempts or {0}
    latest = max(attempts)
    if attempt is None:
        attempt = latest
    elif isinstance(attempt, bool) or not isinstance(attempt, int) or attempt not in attempts:
        raise TrainscopeError(f"{run_dir}: no attempt {attempt!r}; this run holds attempt(s) "
                              f"{', '.join(map(str, sorted(attempts)))}")
    metas = _metas_of_attempt(run_dir, attempt, latest)
    if not metas:  # an old store, or a rank file without its attempt: take what is there
        metas = {0: top_meta} if top_meta else {}
        for n in entries:
            if n.startswith("meta-r") and n.endswith(".json") and n[6:-5].isdigit():
                metas[int(n[6:-5])] = _read_json(run_dir / n)
    notes: list[str] = []
    for m in metas.values():
        _sanitize_meta(m, notes, run_dir)
    meta = dict(metas.get(0) or metas[min(metas)])
    version = str(meta.get("schema_version", "0"))
    if version.split(".")[0] != schema.SCHEMA_VERSION.split(".")[0]:
        raise TrainscopeError(
            f"{run_dir}: run store schema {version} is not supported (this trainscope reads {schema.SCHEMA_VERSION})"
        )
    statuses = {r: _effective_status(m) for r, m in metas.items()}
    meta["ranks"] = {str(r): {"status": s, "steps": metas[r].get("steps")} for r, s in sorted(statuses.items())}
    meta["status"] = min(statuses.values(), key=lambda s: _STATUS_ORDER.index(s) if s in _STATUS_ORDER else 99)
    meta.setdefault("name", run_dir.resolve().name)
    meta["attempt"] = attempt
    meta["attempts"] = sorted(attempts)
    tables, codes = {}, {}
    for t in schema.TABLES:  # each in (step, rank) order (init has no step: as written)
        codes[t] = {}
        tables[t], chunks = _read_table(run_dir, chunks, t, attempt, skip_corrupt, notes, codes[t])
    read = dict(tables)
    # FSDP2: each rank recorded its shards; give every rank's row the full tensor's statistics
    tables[schema.SCALARS], tables[schema.LAYERS] = shards.merge(meta, tables[schema.SCALARS],
                                                                 tables[schema.LAYERS], notes)
    if all(tables[t].empty for t in (schema.SCALARS, schema.LAYERS, schema.EVENTS)):
        more = (f"; earlier attempt(s) {', '.join(str(a) for a in sorted(attempts) if a != attempt)} "
                "hold data (--attempt N)") if len(attempts) > 1 else ""
        raise TrainscopeError(f"{run_dir}: the run holds no recorded data (attempt {attempt}: no step was "
                              f"written, e.g. killed before its first flush){more}")
    if meta.get("steps") is None:
        steps = [int(df["step"].max()) + 1 for t, df in tables.items() if t != schema.INIT and not df.empty]
        meta["steps"] = max(steps, default=0)
    if notes:
        meta["notes"] = notes
    run = Run(path=run_dir, meta=meta, source="trainscope", **tables)
    for t, found in codes.items():
        if tables[t] is read[t]:  # the frame as read (not one shards.merge rebuilt)
            for c, (cd, uniques) in found.items():
                run._give_codes(t, c, cd, uniques)
    return run


def is_run_dir(p: Path) -> bool:
    try:
        return p.is_dir() and ((p / schema.META_FILE).exists() or any(p.glob("meta-r*.json")))
    except OSError:
        return False


def load_any(path: str | os.PathLike[str], attempt: int | None = None, skip_corrupt: bool = False) -> Run:
    """A run directory, or a metrics log (CSV/TSV, JSON lines, TensorBoard events); a folder that is
    neither is searched for one (`store.discover`: a trainscope run, trainer_state.json, metrics.csv,
    TensorBoard events inside it)."""
    from trainscope.store.discover import discover

    given = Path(path)
    _stat(given)  # a symlink loop or an unreadable path is an error, not "nothing found"
    p = discover(given)
    if is_run_dir(p):
        run = load_run(p, attempt=attempt, skip_corrupt=skip_corrupt)
    else:
        run = None
        if _stat(p) is not None:
            try:
                from trainscope.store import importers
            except ImportError:  # pragma: no cover - importers ship with the package
                importers = None
            if importers is not None and importers.is_log(p):
                if attempt is not None:
                    raise TrainscopeError(f"{p}: a metrics log has no attempts (--attempt is for run directories)")
                run = importers.import_log(p)
        if run is None:
            run = load_run(p, attempt=attempt, skip_corrupt=skip_corrupt)
    if p != given:
        run.meta["found_in"] = str(given)
    return run
