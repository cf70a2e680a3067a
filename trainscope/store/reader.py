"""Read a run directory (or any supported log) into a `Run`, with one clear error for bad input."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from trainscope.errors import TrainscopeError
from trainscope.store import schema
from trainscope.store.run import Run, empty_frame

_STATUS_ORDER = ("crashed", "running", "incomplete", "finished")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise TrainscopeError(f"{path}: unreadable run metadata ({e.__class__.__name__}: {e})") from None
    if not isinstance(data, dict):
        raise TrainscopeError(f"{path}: run metadata is not a JSON object")
    return data


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _effective_status(meta: dict[str, Any]) -> str:
    """'running' in the file but the writer is gone means the run did not end cleanly."""
    status = str(meta.get("status", "unknown"))
    if status == "running" and meta.get("host") == socket.gethostname():
        pid = meta.get("pid")
        if isinstance(pid, int) and not _process_alive(pid):
            return "crashed"
    return status


def _read_table(run_dir: Path, table: str) -> pd.DataFrame:
    folder = run_dir / table
    cols = schema.COLUMNS[table]
    if not folder.is_dir():
        return empty_frame(table)
    chunks = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith((".", "_")))
    frames = []
    for chunk in chunks:
        try:
            tbl = pq.read_table(chunk)
        except (OSError, pa.ArrowException) as e:
            raise TrainscopeError(f"{chunk}: corrupt or truncated chunk ({e})") from None
        missing = [c for c in cols if c not in tbl.column_names]
        if missing:
            raise TrainscopeError(f"{chunk}: not a trainscope {table} chunk (missing columns {', '.join(missing)})")
        frames.append(tbl.select(list(cols)).to_pandas())
    if not frames:
        return empty_frame(table)
    df = pd.concat(frames, ignore_index=True)
    return df.astype(cols)


def load_run(path: str | os.PathLike[str]) -> Run:
    """Load a trainscope run directory (all ranks merged; `rank` column tells them apart)."""
    run_dir = Path(path)
    if not run_dir.exists():
        raise TrainscopeError(f"{run_dir}: no such run directory")
    if not run_dir.is_dir():
        raise TrainscopeError(f"{run_dir}: not a directory")
    entries = [p for p in run_dir.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise TrainscopeError(f"{run_dir}: empty directory, not a trainscope run")
    meta_path = run_dir / schema.META_FILE
    rank_metas = sorted(run_dir.glob("meta-r*.json"))
    if not meta_path.exists() and not rank_metas:
        found = ", ".join(sorted(p.name for p in entries)[:5])
        raise TrainscopeError(f"{run_dir}: not a trainscope run (no meta.json; found {found})")
    metas = {}
    if meta_path.exists():
        metas[0] = _read_json(meta_path)
    for p in rank_metas:
        m = _read_json(p)
        metas[int(m.get("rank", p.stem.split("-r")[-1]))] = m
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
    tables = {t: _read_table(run_dir, t) for t in schema.TABLES}
    for t in (schema.SCALARS, schema.LAYERS, schema.EVENTS):
        tables[t] = tables[t].sort_values(["step", "rank"], kind="stable").reset_index(drop=True)
    return Run(path=run_dir, meta=meta, source="trainscope", **tables)


def load_any(path: str | os.PathLike[str]) -> Run:
    """A run directory, or a metrics log (CSV/TSV, JSON lines, TensorBoard events); a folder that is
    neither is searched for one (`store.discover`: a trainscope run, trainer_state.json, metrics.csv,
    TensorBoard events inside it)."""
    from trainscope.store.discover import discover

    given = Path(path)
    p = discover(given)
    if p.is_dir() and ((p / schema.META_FILE).exists() or any(p.glob("meta-r*.json"))):
        run = load_run(p)
    else:
        run = None
        if p.exists():
            try:
                from trainscope.store import importers
            except ImportError:  # pragma: no cover - importers ship with the package
                importers = None
            if importers is not None and importers.is_log(p):
                run = importers.import_log(p)
        if run is None:
            run = load_run(p)
    if p != given:
        run.meta["found_in"] = str(given)
    return run
