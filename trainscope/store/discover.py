"""What `trainscope diagnose DIR` reads when DIR is not itself a run: the run or log found inside it.

Frameworks write their logs into folders of their own making; a user points at the folder they know
(the Trainer's `output_dir`, `lightning_logs`, a TensorBoard log dir). In order of preference:

1. a trainscope run (a folder with `meta.json` or `meta-r<rank>.json`), e.g. `<output_dir>/trainscope`
   written by the framework callbacks: it has everything the logs have and the layer statistics;
2. Hugging Face `trainer_state.json`: in DIR itself, else in the latest `checkpoint-<N>` folder;
3. Lightning's CSVLogger `metrics.csv`: in DIR, else in the latest `version_<N>` folder;
4. TensorBoard event files: the latest `version_<N>` folder holding some, else DIR itself.

"Latest" is the highest N, ties (and unnumbered folders) broken by modification time. The search goes
at most `MAX_DEPTH` folders down, so pointing at a home directory does not crawl the disk.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from trainscope.store import schema

MAX_DEPTH = 4


def is_trainscope_run(p: Path) -> bool:
    return p.is_dir() and ((p / schema.META_FILE).is_file() or any(p.glob("meta-r*.json")))


def _walk(root: Path, depth: int = MAX_DEPTH) -> Iterator[Path]:
    """Folders under root (root first), breadth-first, hidden folders skipped."""
    level = [root]
    for _ in range(depth + 1):
        nxt: list[Path] = []
        for d in level:
            yield d
            try:
                nxt.extend(sorted(c for c in d.iterdir() if c.is_dir() and not c.name.startswith(".")))
            except OSError:
                continue
        level = nxt


def _number(p: Path, prefix: str) -> int:
    """N of the nearest `prefix-N`/`prefix_N` folder on the path (version_3/checkpoint-500), -1 if none."""
    for part in reversed(p.parts):
        m = re.fullmatch(rf"{prefix}[-_](\d+)", part)
        if m:
            return int(m.group(1))
    return -1


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def _latest(paths: list[Path], prefix: str) -> Path | None:
    if not paths:
        return None
    return max(paths, key=lambda p: (_number(p, prefix), _mtime(p)))


def discover(path: str | Path) -> Path:
    """The run directory or log file inside `path` that diagnose should read; `path` itself when it is
    a file, a trainscope run, or holds nothing recognisable (the caller then says what is wrong)."""
    root = Path(path)
    if not root.is_dir() or is_trainscope_run(root):
        return root
    folders = list(_walk(root))
    runs = [d for d in folders if is_trainscope_run(d)]
    if runs:
        return max(runs, key=lambda d: (_number(d, "version"), _number(d, "checkpoint"), _mtime(d)))
    if (root / "trainer_state.json").is_file():
        return root / "trainer_state.json"
    states = [d / "trainer_state.json" for d in folders if (d / "trainer_state.json").is_file()]
    if states:
        return _latest(states, "checkpoint")  # type: ignore[return-value]
    if (root / "metrics.csv").is_file():
        return root
    csvs = [d for d in folders if (d / "metrics.csv").is_file()]
    if csvs:
        return _latest(csvs, "version")  # type: ignore[return-value]
    tb = [d for d in folders if any(p.is_file() for p in d.glob("*tfevents*"))]
    versioned = [d for d in tb if _number(d, "version") >= 0]
    if versioned:
        return _latest(versioned, "version")  # type: ignore[return-value]
    return root
