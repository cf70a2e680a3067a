"""Runs trainscope did not record: CSV/TSV metrics, JSON-lines histories, TensorBoard events.

Imported runs have only scalars; the loss-curve rules work on them and the rules that need layer
statistics say they could not run. Metric names are normalised to trainscope's (train_loss,
val_loss, train_acc, val_acc, lr/0); unknown names are kept as they are.

Real logs are messy, so: empty cells are "not logged here" (Lightning writes train and val metrics
on different rows), the strings nan/inf are real values (a loss that blew up), and a restart that
logs a step again supersedes everything the earlier attempt logged from that step on.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import stat
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from trainscope.errors import TrainscopeError
from trainscope.store import schema
from trainscope.store.run import Run

CSV_SUFFIXES = (".csv", ".tsv", ".txt")
JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
STEP_COLUMNS = ("step", "global_step", "trainer/global_step", "_step", "iteration", "iter", "it", "steps", "batch")
EPOCH_COLUMNS = ("epoch", "epochs")
NON_METRICS = ("time", "timestamp", "wall_time", "walltime", "datetime", "date", "created_at", "_runtime",
               "_timestamp", "runtime", "total_flos", "train_runtime")
VAL_TOKENS = {"val", "valid", "validation", "eval", "dev"}
NEUTRAL_TOKENS = {"train", "training", "step", "epoch"}
ACC_TOKENS = {"acc", "accuracy"}
ACC_EXTRA = {"categorical", "binary", "sparse", "top1"}
_MAX_SNIFF = 64 * 1024


def _is_tfevents(p: Path) -> bool:
    return p.is_file() and "tfevents" in p.name


def _event_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*tfevents*") if p.is_file())


def is_log(path: str | Path) -> bool:
    """True for a file or folder `import_log` reads (not a trainscope run directory)."""
    p = Path(path)
    if p.is_file():
        return _is_tfevents(p) or p.suffix.lower() in CSV_SUFFIXES + JSON_SUFFIXES
    if p.is_dir():
        if (p / schema.META_FILE).exists():
            return False
        return (p / "metrics.csv").is_file() or bool(_event_files(p))
    return False


def import_log(path: str | Path) -> Run:
    """A `Run` (scalars only) from a metrics log file or a TensorBoard event folder."""
    p = Path(path)
    if not p.exists():
        raise TrainscopeError(f"{p}: no such file or directory")
    if p.is_dir():
        if (p / "metrics.csv").is_file() and not _event_files(p):
            notes: list[str] = []
            return _import_table(p / "metrics.csv", _read_csv(p / "metrics.csv", notes), "csv", name=p.name,
                                 notes=notes)
        if _event_files(p):
            return _import_tensorboard(p)
        raise TrainscopeError(f"{p}: no metrics.csv or TensorBoard event files in this folder")
    if _is_tfevents(p):
        return _import_tensorboard(p)
    suffix = p.suffix.lower()
    notes = []
    if suffix in JSON_SUFFIXES:
        return _import_table(p, _read_json(p, notes), "jsonl", notes=notes)
    if suffix in CSV_SUFFIXES:
        return _import_table(p, _read_csv(p, notes), "csv", notes=notes)
    raise TrainscopeError(
        f"{p}: not a supported log (CSV/TSV, JSON lines, TensorBoard events) or trainscope run directory"
    )


# ----------------------------------------------------------------------------- reading files
def _read_text(p: Path) -> str:
    try:
        st = os.stat(p)
        if not stat.S_ISREG(st.st_mode):
            raise TrainscopeError(f"{p}: not a regular file (a pipe or device is not a metrics log)")
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            data = f.read()
    except OSError as e:
        raise TrainscopeError(f"{p}: cannot read ({e.strerror or e})") from None
    if not data.strip():
        raise TrainscopeError(f"{p}: empty file")
    if b"\x00" in data[:_MAX_SNIFF]:
        raise TrainscopeError(f"{p}: binary data, not a text metrics log")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise TrainscopeError(f"{p}: not UTF-8 text, not a metrics log") from None


def _read_csv(p: Path, notes: list[str]) -> pd.DataFrame:
    text = _read_text(p)
    sample = text[:_MAX_SNIFF]
    if p.suffix.lower() == ".tsv":
        sep = "\t"
    else:
        try:
            sep = csv.Sniffer().sniff(sample.split("\n", 1)[0] + "\n", delimiters=",\t;| ").delimiter
        except csv.Error:
            sep = ","
    df = None
    caught: list[str] = []
    for engine in ("c", "python"):  # the C parser is fast; the python one copes with odder files
        try:
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                # index_col=False: a trailing delimiter on data rows must not turn the first column
                # into the index and shift every other column by one
                df = pd.read_csv(
                    io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, skipinitialspace=True,
                    on_bad_lines="warn", engine=engine, index_col=False,
                )
            caught = [str(x.message) for x in w]
            break
        except pd.errors.EmptyDataError:
            raise TrainscopeError(f"{p}: no data rows") from None
        except (pd.errors.ParserError, ValueError, csv.Error) as e:
            if engine == "python":
                raise TrainscopeError(f"{p}: unreadable CSV ({' '.join(str(e).split())})") from None
    if df is None or df.empty or len(df.columns) < 1:
        raise TrainscopeError(f"{p}: no data rows")
    skipped = sum(m.count("Skipping line") for m in caught)
    if skipped:
        notes.append(f"{skipped} row(s) with more fields than the header were skipped")
    if any("Length of header" in m for m in caught):
        lines = [ln.rstrip("\r") for ln in text.splitlines()[1:] if ln.strip()]
        trailing = sum(1 for ln in lines if ln.endswith(sep))
        what = f"{trailing} row(s) end with a trailing delimiter" if trailing else "some rows have an extra field"
        notes.append(f"{what}: the empty last field is ignored")
    return df


def _read_json(p: Path, notes: list[str]) -> pd.DataFrame:
    text = _read_text(p)
    stripped = text.lstrip()
    records: list[dict[str, Any]] = []
    if stripped.startswith(("[", "{")) and p.suffix.lower() == ".json":
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("log_history"), list):
            # Hugging Face Trainer's trainer_state.json: train and eval records interleaved
            records = [r for r in obj["log_history"] if isinstance(r, dict)]
        elif isinstance(obj, dict) and obj and all(isinstance(v, list) for v in obj.values()):
            # a Keras History.history dict: {"loss": [...], "val_loss": [...]}
            n = max(len(v) for v in obj.values())
            records = [{k: (v[i] if i < len(v) else None) for k, v in obj.items()} for i in range(n)]
            for i, r in enumerate(records):
                r.setdefault("epoch", i)
        elif isinstance(obj, list):
            records = [r for r in obj if isinstance(r, dict)]
    if not records:
        bad = 0
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except (ValueError, RecursionError):
                bad += 1  # e.g. a line cut off by a crash, or nested beyond reason
                continue
            if isinstance(r, dict):
                records.append(r)
            else:
                bad += 1
        if not records:
            raise TrainscopeError(f"{p}: no JSON objects found (expected one JSON object per line)")
        if bad:
            notes.append(f"{bad} line(s) are not JSON objects (e.g. cut off by a crash) and were skipped")
    # strings like a CSV: a JSON null or a key missing from a record is an empty cell ("not logged
    # here"), a JSON NaN/Infinity is the string nan/inf (a real value)
    flat = []
    for r in records:
        f = _flatten(r)
        flat.append({k: ("" if v is None else (repr(v) if isinstance(v, float) else str(v))) for k, v in f.items()})
    return pd.DataFrame(flat).fillna("")


_MAX_DEPTH = 8


def _flatten(r: dict[str, Any], prefix: str = "", depth: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in r.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            if depth < _MAX_DEPTH:
                for kk, vv in _flatten(v, key + "/", depth + 1).items():
                    out.setdefault(kk, vv)
        elif isinstance(v, (int, float, str)) or v is None:
            out.setdefault(key, v)
    return out


# ----------------------------------------------------------------------------- normalising
def _tokens(name: str) -> set[str]:
    return {t for t in re.split(r"[/_\-\s.:]+", name.strip().lower()) if t}


def normalize_name(name: str) -> str:
    """trainscope's name for a metric (train_loss, val_loss, train_acc, val_acc, lr/0), else `name`."""
    low = name.strip().lower()
    tokens = _tokens(name)
    if low in ("lr", "learning_rate", "learning rate", "lr/0", "lr_0") or re.fullmatch(r"lr[-_ ][a-z]+", low):
        return "lr/0"
    is_val = bool(tokens & VAL_TOKENS)
    if "loss" in tokens and tokens <= {"loss"} | NEUTRAL_TOKENS | VAL_TOKENS:
        return "val_loss" if is_val else "train_loss"
    if tokens & ACC_TOKENS and tokens <= ACC_TOKENS | ACC_EXTRA | NEUTRAL_TOKENS | VAL_TOKENS:
        return "val_acc" if is_val else "train_acc"
    return name.strip()


def _column_map(columns: Iterable[str], counts: dict[str, int]) -> dict[str, str]:
    """Source column -> metric name; two columns wanting one name: the one with most values wins."""
    wanted: dict[str, list[str]] = {}
    for c in columns:
        wanted.setdefault(normalize_name(c), []).append(c)
    out: dict[str, str] = {}
    for target, sources in wanted.items():
        sources = sorted(sources, key=lambda c: (-counts.get(c, 0), c != target))
        out[sources[0]] = target
        for c in sources[1:]:  # the others keep their own name (made unique if it is the target's)
            out[c] = c.strip() if c.strip() != target else f"{target}_other"
    return out


_NONFINITE_WORDS = ["nan", "inf", "-inf", "+inf", "infinity", "-infinity", "+infinity"]
UNUSABLE_FRAC = 0.2  # a column with at least this fraction of unparsed cells is not used at all
INT64_MAX = 2**63 - 1


def _numeric(col: pd.Series) -> tuple[pd.Series, pd.Series, pd.Series]:
    """(values, present, unparsed): empty cells are absent; nan/inf strings are real non-finite
    values; anything else that is not a number is `unparsed` (counted, never a value)."""
    s = col.astype(str).str.strip()
    low = s.str.lower()
    filled = (s != "") & (low != "none") & (low != "null")
    values = pd.to_numeric(s.where(filled), errors="coerce")
    nonfinite_word = low.isin(_NONFINITE_WORDS)
    present = filled & (values.notna() | nonfinite_word)
    unparsed = filled & ~present
    return values.astype(float), present, unparsed


def _parse_steps(col: pd.Series, what: str, p: Path, notes: list[str]) -> pd.Series:
    """Integer steps (float NaN where unusable); a step beyond int64 is an error, never a wrap."""
    exact: list[int | None] = []
    bad = fractional = 0
    example = None
    for raw in col.astype(str):
        cell = raw.strip()
        if not cell:
            exact.append(None)
            continue
        v: int | None = None
        try:
            v = int(cell)
        except ValueError:
            try:
                f = float(cell)
            except (ValueError, OverflowError):
                f = math.nan
            if math.isfinite(f):
                if f != int(f):
                    fractional += 1
                v = math.floor(f)
        if v is None:
            bad += 1
            example = example or cell
        elif not -INT64_MAX - 1 <= v <= INT64_MAX:
            raise TrainscopeError(f"{p}: {what} {cell[:30]!r} does not fit a 64-bit step number; "
                                  "steps that large are not a training log")
        exact.append(v)
    if bad:
        notes.append(f"{bad} row(s) with a {what} that is not a number (e.g. {example[:20]!r}) were skipped")
    if fractional:
        notes.append(f"{fractional} {what} value(s) are not whole numbers and were rounded down")
    return pd.Series(pd.array(exact, dtype="Int64"), index=col.index)


def _order(steps: np.ndarray) -> tuple[np.ndarray, str | None]:
    """Rows to keep, in the order to keep them, and what was done ("restart", "unsorted",
    "duplicate" or None). A step going back a few times, each attempt logging several steps in
    order, is a restart: the later attempt supersedes the earlier one's rows from that step on.
    Rows in no order (a shuffled or merged file) are sorted; a step logged twice keeps its last value."""
    n = len(steps)
    idx = np.arange(n)
    if n < 2:
        return idx, None
    back = np.flatnonzero(steps[1:] < steps[:-1]) + 1
    if len(back) == 0:
        dup = steps[1:] == steps[:-1]
        if not dup.any():
            return idx, None
        keep = np.ones(n, dtype=bool)
        keep[:-1] = ~dup  # the last of each run of equal steps
        return idx[keep], "duplicate"
    bounds = np.concatenate([[0], back, [n]])
    seg_len = np.diff(bounds)
    if len(back) <= 10 and (seg_len[:-1] >= 3).all() and all(
            (np.diff(steps[a:b]) > 0).all() for a, b in zip(bounds[:-1], bounds[1:])):
        return idx[_drop_restarts(steps)], "restart"
    order = np.argsort(steps, kind="stable")
    st = steps[order]
    keep = np.ones(n, dtype=bool)
    keep[:-1] = st[1:] != st[:-1]  # among equal steps (file order kept by the stable sort) the last wins
    return order[keep], "unsorted"


def _drop_restarts(steps: np.ndarray) -> np.ndarray:
    """Mask of rows to keep: a step going backwards starts a new attempt that supersedes the old
    attempt's rows from that step on (the last occurrence of a step wins)."""
    n = len(steps)
    keep = np.ones(n, dtype=bool)
    seg_start = [0] + [i for i in range(1, n) if steps[i] < steps[i - 1]]
    if len(seg_start) == 1:
        return keep
    bounds = seg_start + [n]
    later_min = np.inf
    for k in range(len(seg_start) - 1, -1, -1):
        a, b = bounds[k], bounds[k + 1]
        if np.isfinite(later_min):
            keep[a:b] = steps[a:b] < later_min
        later_min = min(later_min, float(np.min(steps[a:b])))
    return keep


def _check_columns(p: Path, columns: Iterable[Any]) -> list[str]:
    stripped: dict[str, str] = {}
    for c in columns:
        name = str(c).strip()
        if name in stripped and name:
            raise TrainscopeError(f"{p}: columns {stripped[name]!r} and {str(c)!r} have the same name once "
                                  "spaces are stripped; rename one")
        stripped[name] = str(c)
    return list(stripped)


def _import_table(p: Path, df: pd.DataFrame, source: str, name: str | None = None,
                  notes: list[str] | None = None) -> Run:
    notes = notes if notes is not None else []
    df = df.set_axis(_check_columns(p, df.columns), axis=1)
    df = df.loc[:, [c for c in df.columns if c and not c.lower().startswith("unnamed:")]]
    lower: dict[str, str] = {}
    for c in df.columns:
        lower.setdefault(c.lower(), c)
    step_col = next((lower[c] for c in STEP_COLUMNS if c in lower), None)
    epoch_col = next((lower[c] for c in EPOCH_COLUMNS if c in lower), None)
    epoch = _numeric(df[epoch_col])[0] if epoch_col else pd.Series(np.nan, index=df.index)
    if step_col is not None:
        step = _parse_steps(df[step_col], f"{step_col!r} value", p, notes)
    elif epoch_col is not None and epoch.notna().all() and (np.diff(epoch.to_numpy()) != 0).all():
        # an epoch-level log (Keras CSVLogger): one row per epoch, the epoch is the step; an epoch
        # going backwards is a resumed run, handled like any restart below
        step = _parse_steps(df[epoch_col], f"{epoch_col!r} value", p, notes)
    else:
        step = pd.Series(np.arange(len(df)), index=df.index).astype("Int64")
    ok = step.notna().to_numpy(dtype=bool)
    df, step, epoch = df[ok], step[ok].astype("int64"), epoch[ok]
    if df.empty:
        raise TrainscopeError(f"{p}: no rows with a usable step or epoch")

    skip = {step_col, epoch_col} | {c for c in df.columns if c.lower() in NON_METRICS}
    metric_cols: dict[str, tuple[pd.Series, pd.Series]] = {}
    unusable: list[str] = []
    for c in df.columns:
        if c in skip:
            continue
        values, present, unparsed = _numeric(df[c])
        n_ok, n_bad = int(present.sum()), int(unparsed.sum())
        if n_ok == 0:
            continue  # a text column (notes, tags): not a metric
        if n_bad:
            example = str(df[c][unparsed].iloc[0]).strip()[:20]
            frac = n_bad / (n_ok + n_bad)
            if frac >= UNUSABLE_FRAC:
                unusable.append(c)
                notes.append(f"column {c!r}: {n_bad} of {n_ok + n_bad} cells ({frac:.0%}) are not numbers "
                             f"(e.g. {example!r}); the column is not used")
                continue
            notes.append(f"column {c!r}: {n_bad} of {n_ok + n_bad} cells are not numbers (e.g. {example!r}) "
                         "and were left out")
        metric_cols[c] = (values, present)
    if not metric_cols:
        if unusable:
            raise TrainscopeError(f"{p}: no usable metric column ({'; '.join(notes[-len(unusable):])})")
        raise TrainscopeError(f"{p}: no numeric metric columns (columns: {', '.join(map(str, df.columns))})")
    names = _column_map(metric_cols, {c: int(pr.sum()) for c, (_, pr) in metric_cols.items()})
    if not any("loss" in names[c].lower() for c in metric_cols):
        bad_loss = [c for c in unusable if "loss" in normalize_name(c).lower()]
        if bad_loss:
            raise TrainscopeError(f"{p}: no usable loss column: {'; '.join(n for n in notes if n.startswith('column ' + repr(bad_loss[0])))}")
        raise TrainscopeError(
            f"{p}: no loss column (found {', '.join(metric_cols)}); name one loss, train_loss or val_loss"
        )
    frames = []
    done: dict[str, list[str]] = {}
    for c, (values, present) in metric_cols.items():
        # order per metric, in file order: validation rows interleaved with training rows of a
        # later step are not a restart, a metric logged again at an earlier step is
        st = step[present].to_numpy()
        keep, what = _order(st)
        if what:
            done.setdefault(what, []).append(f"{names[c]} ({len(st) - len(keep)} row(s) dropped)"
                                             if len(keep) < len(st) else names[c])
        frames.append(pd.DataFrame({
            "step": st[keep], "name": names[c], "value": values[present].to_numpy()[keep],
            "epoch": epoch[present].to_numpy(dtype=float)[keep],
        }))
    words = {"restart": "the step goes back (a resumed run): the later rows supersede the earlier ones from "
                        "that step on",
             "unsorted": "rows are not in step order: sorted by step, a step logged twice keeps its last value",
             "duplicate": "steps logged more than once: the last value kept"}
    for what, cols in done.items():
        notes.append(f"{words[what]}; {', '.join(cols)}")
    scalars = pd.concat(frames, ignore_index=True)
    return _make_run(p, scalars, source, name, notes)


def _make_run(p: Path, scalars: pd.DataFrame, source: str, name: str | None, notes: list[str] | None = None) -> Run:
    scalars = scalars.drop_duplicates(["step", "name"], keep="last")
    scalars = scalars.sort_values(["step", "name"], kind="stable").reset_index(drop=True)
    scalars["rank"] = 0
    scalars["attempt"] = 0
    if "time" not in scalars:
        scalars["time"] = np.nan
    cols = schema.COLUMNS[schema.SCALARS]
    scalars = scalars[list(cols)].astype(cols)
    epochs = scalars["epoch"].dropna()
    meta = {
        "name": name or (p.stem if p.is_file() else p.name),
        "status": "imported",
        "source_file": str(p),
        "steps": int(scalars["step"].max()) + 1 if len(scalars) else 0,
        "epochs": int(epochs.nunique()) if len(epochs) else None,
        "model": None,
        "optimizer": None,
        "scheduler": None,
        "criterion": None,
        "num_classes": None,
        "notes": [f"{p.name}: {n}" for n in (notes or [])],
    }
    return Run(path=p, meta=meta, scalars=scalars, source=source)


# ----------------------------------------------------------------------------- TensorBoard
_TB_SPLITS = {"train": "", "training": "", "validation": "val_", "val": "val_", "valid": "val_", "eval": "val_"}


def _import_tensorboard(p: Path) -> Run:
    try:
        from tensorboard.backend.event_processing import event_accumulator
        from tensorboard.util import tensor_util
    except ImportError:
        raise TrainscopeError(
            f'{p}: reading TensorBoard logs needs the tensorboard package: pip install "trainscope[tensorboard]"'
        ) from None
    folders = sorted({f.parent for f in _event_files(p)}) if p.is_dir() else [p]
    root = p if p.is_dir() else p.parent
    rows: list[tuple[float, int, str, float]] = []
    for folder in folders:
        acc = event_accumulator.EventAccumulator(
            str(folder), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0}
        )
        try:
            acc.Reload()
        except Exception as e:  # noqa: BLE001 - corrupt/truncated event files
            raise TrainscopeError(f"{folder}: unreadable TensorBoard events ({type(e).__name__}: {e})") from None
        rel = folder.relative_to(root).as_posix() if folder != root and p.is_dir() else ""
        split = _TB_SPLITS.get(Path(rel).name.lower()) if rel else ""
        prefix = split if split is not None else rel + "/"
        tags = acc.Tags()
        for tag in tags.get("scalars", []):
            tname = _tb_name(prefix, tag)
            rows.extend((e.wall_time, e.step, tname, float(e.value)) for e in acc.Scalars(tag))
        for tag in tags.get("tensors", []):
            tname = _tb_name(prefix, tag)
            for e in acc.Tensors(tag):
                arr = tensor_util.make_ndarray(e.tensor_proto)
                if arr.size == 1 and np.issubdtype(arr.dtype, np.number):
                    rows.append((e.wall_time, e.step, tname, float(arr.reshape(()))))
    if not rows:
        raise TrainscopeError(f"{p}: TensorBoard events hold no scalars")
    df = pd.DataFrame(rows, columns=["time", "step", "raw", "value"]).sort_values("time", kind="stable")
    parts = []
    for raw, g in df.groupby("raw", sort=False):
        keep = _drop_restarts(g["step"].to_numpy())  # per tag: a restart re-logs old steps
        parts.append(g[keep])
    df = pd.concat(parts)
    t0 = df["time"].min()
    counts = df.groupby("raw").size().to_dict()
    names = _column_map(counts, counts)
    if not any("loss" in names[r].lower() for r in counts):
        raise TrainscopeError(f"{p}: no loss scalar among TensorBoard tags ({', '.join(sorted(counts))})")
    scalars = pd.DataFrame({
        "step": df["step"].astype("int64").to_numpy(), "name": df["raw"].map(names).to_numpy(),
        "value": df["value"].to_numpy(), "epoch": np.nan, "time": (df["time"] - t0).to_numpy(),
    })
    # Keras writes an "epoch_*" tag per epoch: the step there is the epoch
    return _make_run(p, scalars, "tensorboard", None)


def _tb_name(prefix: str, tag: str) -> str:
    """Keras' epoch_loss in validation/ -> val_epoch_loss -> val_loss once normalised."""
    return f"{prefix}{tag}" if prefix else tag
