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
import re
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
            return _import_table(p / "metrics.csv", _read_csv(p / "metrics.csv"), "csv", name=p.name)
        if _event_files(p):
            return _import_tensorboard(p)
        raise TrainscopeError(f"{p}: no metrics.csv or TensorBoard event files in this folder")
    if _is_tfevents(p):
        return _import_tensorboard(p)
    suffix = p.suffix.lower()
    if suffix in JSON_SUFFIXES:
        return _import_table(p, _read_json(p), "jsonl")
    if suffix in CSV_SUFFIXES:
        return _import_table(p, _read_csv(p), "csv")
    raise TrainscopeError(
        f"{p}: not a supported log (CSV/TSV, JSON lines, TensorBoard events) or trainscope run directory"
    )


# ----------------------------------------------------------------------------- reading files
def _read_text(p: Path) -> str:
    try:
        data = p.read_bytes()
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


def _read_csv(p: Path) -> pd.DataFrame:
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
    for engine in ("c", "python"):  # the C parser is fast; the python one copes with odder files
        try:
            df = pd.read_csv(
                io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, skipinitialspace=True,
                on_bad_lines="skip", engine=engine,
            )
            break
        except pd.errors.EmptyDataError:
            raise TrainscopeError(f"{p}: no data rows") from None
        except (pd.errors.ParserError, ValueError) as e:
            if engine == "python":
                raise TrainscopeError(f"{p}: unreadable CSV ({e})") from None
    if df.empty or len(df.columns) < 1:
        raise TrainscopeError(f"{p}: no data rows")
    return df


def _read_json(p: Path) -> pd.DataFrame:
    text = _read_text(p)
    stripped = text.lstrip()
    records: list[dict[str, Any]] = []
    if stripped.startswith(("[", "{")) and p.suffix.lower() == ".json":
        try:
            obj = json.loads(text)
        except ValueError:
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
                r = json.loads(line.replace("NaN", "NaN"))
            except ValueError:
                bad += 1  # e.g. a line cut off by a crash
                continue
            if isinstance(r, dict):
                records.append(r)
        if not records:
            raise TrainscopeError(f"{p}: no JSON objects found (expected one JSON object per line)")
    # strings like a CSV: a JSON null or a key missing from a record is an empty cell ("not logged
    # here"), a JSON NaN/Infinity is the string nan/inf (a real value)
    flat = [{k: ("" if v is None else str(v)) for k, v in _flatten(r).items()} for r in records]
    return pd.DataFrame(flat).fillna("")


def _flatten(r: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in r.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        elif isinstance(v, (int, float, str)) or v is None:
            out[key] = v
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


def _numeric(col: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(values, present): empty cells are absent; nan/inf strings are real non-finite values."""
    s = col.astype(str).str.strip()
    present = (s != "") & (s.str.lower() != "none") & (s.str.lower() != "null")
    values = pd.to_numeric(s.where(present), errors="coerce")
    nonfinite_word = s.str.lower().isin(["nan", "inf", "-inf", "+inf", "infinity", "-infinity"])
    present &= values.notna() | nonfinite_word
    return values.astype(float), present


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


def _import_table(p: Path, df: pd.DataFrame, source: str, name: str | None = None) -> Run:
    df = df.rename(columns=lambda c: str(c).strip())
    df = df.loc[:, [c for c in df.columns if c and not c.lower().startswith("unnamed:")]]
    lower = {c.lower(): c for c in df.columns}
    step_col = next((lower[c] for c in STEP_COLUMNS if c in lower), None)
    epoch_col = next((lower[c] for c in EPOCH_COLUMNS if c in lower), None)
    epoch = _numeric(df[epoch_col])[0] if epoch_col else pd.Series(np.nan, index=df.index)
    if step_col is not None:
        step = _numeric(df[step_col])[0]
    elif epoch_col is not None and epoch.notna().all() and (np.diff(epoch.to_numpy()) != 0).all():
        # an epoch-level log (Keras CSVLogger): one row per epoch, the epoch is the step; an epoch
        # going backwards is a resumed run, handled like any restart below
        step = epoch.copy()
    else:
        step = pd.Series(np.arange(len(df), dtype=float), index=df.index)
    ok = step.notna() & np.isfinite(step)
    df, step, epoch = df[ok], step[ok].astype("int64"), epoch[ok]
    if df.empty:
        raise TrainscopeError(f"{p}: no rows with a usable step or epoch")

    skip = {step_col, epoch_col} | {c for c in df.columns if c.lower() in NON_METRICS}
    metric_cols: dict[str, tuple[pd.Series, pd.Series]] = {}
    for c in df.columns:
        if c in skip:
            continue
        values, present = _numeric(df[c])
        if present.any():
            metric_cols[c] = (values, present)
    if not metric_cols:
        raise TrainscopeError(f"{p}: no numeric metric columns (columns: {', '.join(map(str, df.columns))})")
    names = _column_map(metric_cols, {c: int(pr.sum()) for c, (_, pr) in metric_cols.items()})
    if not any("loss" in names[c].lower() for c in metric_cols):
        raise TrainscopeError(
            f"{p}: no loss column (found {', '.join(metric_cols)}); name one loss, train_loss or val_loss"
        )
    frames = []
    for c, (values, present) in metric_cols.items():
        # restarts per metric, in file order: validation rows interleaved with training rows of a
        # later step are not a restart, a metric logged again at an earlier step is
        st = step[present].to_numpy()
        keep = _drop_restarts(st)
        frames.append(pd.DataFrame({
            "step": st[keep], "name": names[c], "value": values[present].to_numpy()[keep],
            "epoch": epoch[present].to_numpy(dtype=float)[keep],
        }))
    scalars = pd.concat(frames, ignore_index=True)
    return _make_run(p, scalars, source, name)


def _make_run(p: Path, scalars: pd.DataFrame, source: str, name: str | None) -> Run:
    scalars = scalars.drop_duplicates(["step", "name"], keep="last")
    scalars = scalars.sort_values(["step", "name"], kind="stable").reset_index(drop=True)
    scalars["rank"] = 0
    if "time" not in scalars:
        scalars["time"] = np.nan
    cols = schema.COLUMNS[schema.SCALARS]
    scalars = scalars[list(cols)].astype(cols)
    epochs = scalars["epoch"].dropna()
    meta = {
        "name": name or (p.stem if p.is_file() else p.name),
        "status": "imported",
        "source_file": str(p),
        "steps": int(scalars["step"].max()) if len(scalars) else 0,
        "epochs": int(epochs.nunique()) if len(epochs) else None,
        "model": None,
        "optimizer": None,
        "scheduler": None,
        "criterion": None,
        "num_classes": None,
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
