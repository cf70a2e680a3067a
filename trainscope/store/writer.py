"""Append-only, crash-safe writer of a run directory.

Each flush writes one Parquet chunk per table to a dot-named temp file and renames it into
place, so a process killed at any instant (even SIGKILL) leaves only complete chunks behind.
meta.json is rewritten the same way at start, on every flush (steps, last flush) and at close.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from trainscope.store import schema

_ARROW_TYPES = {
    "int64": pa.int64(),
    "int32": pa.int32(),
    "float64": pa.float64(),
    "string": pa.string(),
    "bool": pa.bool_(),
}


def arrow_schema(table: str) -> pa.Schema:
    return pa.schema([(c, _ARROW_TYPES[d]) for c, d in schema.COLUMNS[table].items()])


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def meta_filename(rank: int) -> str:
    return schema.META_FILE if rank == 0 else f"meta-r{rank}.json"


class RunWriter:
    """Writes one rank's shard of a run directory."""

    def __init__(self, run_dir: str | os.PathLike[str], rank: int = 0) -> None:
        self.dir = Path(run_dir)
        self.rank = int(rank)
        self.dir.mkdir(parents=True, exist_ok=True)
        for table in schema.TABLES:
            (self.dir / table).mkdir(exist_ok=True)
        self._seq = self._next_seq()
        self._schemas = {t: arrow_schema(t) for t in schema.TABLES}
        self.bytes_written = 0

    def _next_seq(self) -> int:
        # Resume after existing chunks of this rank (a resumed run appends, never overwrites).
        prefix = f"r{self.rank}-"
        seqs = [
            int(p.stem[len(prefix):])
            for t in schema.TABLES
            for p in (self.dir / t).glob(f"{prefix}*.parquet")
            if p.stem[len(prefix):].isdigit()
        ]
        return max(seqs, default=-1) + 1

    def write_meta(self, meta: Mapping[str, Any]) -> None:
        data = json.dumps(meta, indent=1, default=str, allow_nan=True).encode()
        _atomic_write_bytes(self.dir / meta_filename(self.rank), data)

    def append(self, table: str, columns: Mapping[str, list[Any]]) -> None:
        """Append rows given as {column: list}; absent columns are filled with nulls."""
        sch = self._schemas[table]
        n = max((len(v) for v in columns.values()), default=0)
        if n == 0:
            return
        arrays = []
        for field in sch:
            values = columns.get(field.name)
            if values is None:
                if field.name == "rank":
                    values = [self.rank] * n
                else:
                    values = [None] * n
            arrays.append(pa.array(values, type=field.type, from_pandas=True))
        tbl = pa.Table.from_arrays(arrays, schema=sch)
        name = f"r{self.rank}-{self._seq:06d}.parquet"
        final = self.dir / table / name
        tmp = final.with_name(f".tmp-{name}")
        pq.write_table(tbl, tmp, compression="zstd")
        os.replace(tmp, final)
        self.bytes_written += final.stat().st_size

    def next_chunk(self) -> None:
        """Advance the chunk counter once per flush (all tables of a flush share a number)."""
        self._seq += 1


def new_meta(**fields: Any) -> dict[str, Any]:
    return {
        "schema_version": schema.SCHEMA_VERSION,
        "status": "running",
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.time(),
        **fields,
    }
