"""Checkpoints that resume exactly: model, optimizer, scheduler, scaler, epoch, best, RNG state.

Files: `ckpt-epoch0003.pt` (the last `keep_last` are kept) and `best.pt` (the best epoch so far).
Each is written to a temporary name and renamed, so a crash mid-save never leaves a torn file.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainscope.errors import TrainscopeError

CKPT_RE = re.compile(r"^ckpt-epoch(\d+)\.pt$")
BEST = "best.pt"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class Checkpointer:
    def __init__(self, directory: str | os.PathLike[str], keep_last: int = 2) -> None:
        if keep_last < 1:
            raise TrainscopeError("keep_last must be >= 1")
        self.dir = Path(directory)
        self.keep_last = keep_last

    def save(self, state: dict[str, Any], epoch: int, is_best: bool) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"ckpt-epoch{epoch:04d}.pt"
        _atomic_save(state, path)
        if is_best:
            _atomic_save(state, self.dir / BEST)
        for old in self.epoch_checkpoints()[: -self.keep_last]:
            old.unlink(missing_ok=True)
        return path

    def epoch_checkpoints(self) -> list[Path]:
        """Epoch checkpoints, oldest first (by epoch number, not mtime)."""
        if not self.dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.dir.iterdir() if (m := CKPT_RE.match(p.name))]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        cks = self.epoch_checkpoints()
        return cks[-1] if cks else None


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by the Trainer (a directory means its latest epoch checkpoint)."""
    p = Path(path)
    if p.is_dir():
        latest = Checkpointer(p).latest()
        if latest is None:
            raise TrainscopeError(f"no checkpoint (ckpt-epochNNNN.pt) in {p}")
        p = latest
    if not p.is_file():
        raise TrainscopeError(f"checkpoint {p} does not exist")
    try:
        state = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is bad input here
        raise TrainscopeError(f"checkpoint {p} could not be read: {e}") from None
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise TrainscopeError(f"{p} is not a trainscope checkpoint")
    return state
