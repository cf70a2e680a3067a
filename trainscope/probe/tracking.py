"""Tracking that makes runs comparable (production checklist §9: "code commit + config, dataset
snapshot, seeds, environment, metrics + curves + notes"). Written into meta.json as `tracking`:

    git    the training script's repository: commit, branch, dirty flag (`git status --porcelain`), root
    data   a fingerprint of the first `FINGERPRINT_BATCHES` training batches the model saw: shapes,
           dtypes, and a SHA-1 over a slice of each (at most `HASH_ELEMENTS` values per tensor). The slice
           is cloned on the tensor's own device and hashed at the next meta write (a flush, which syncs
           anyway), so no step waits for the host; CPU and GPU runs of the same data hash the same.
           The hash covers the batches as seen: a different shuffle order changes it too.
    env    torch / CUDA / cuDNN versions, device names (only when CUDA is already initialized), world
           size, rank, platform, python, numpy
    seeds  torch.initial_seed() (and CUDA's when initialized), deterministic-algorithm flags
    modules  hyperparameters that live in modules: dropout rates by layer, normalization layers

`watch(..., notes="...")` adds a free-text note beside it (`meta["notes"]`).
"""
from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from trainscope.probe.util import module_type

FINGERPRINT_BATCHES = 4
HASH_ELEMENTS = 4096


_GIT_CACHE: dict[str, tuple[float, dict[str, Any] | None]] = {}
GIT_CACHE_SECONDS = 5.0  # many watch() calls in one process (tests, sweeps) ask git once per few seconds


def _git(folder: str) -> dict[str, Any] | None:
    hit = _GIT_CACHE.get(folder)
    if hit is not None and time.monotonic() - hit[0] < GIT_CACHE_SECONDS:
        return hit[1]
    info = _git_uncached(folder)
    _GIT_CACHE[folder] = (time.monotonic(), info)
    return info


def _git_uncached(folder: str) -> dict[str, Any] | None:
    def run(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=3)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    root = run("rev-parse", "--show-toplevel")
    if root is None:
        return None
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": run("rev-parse", "HEAD"), "branch": run("rev-parse", "--abbrev-ref", "HEAD"),
            "dirty": bool(status) if status is not None else None, "root": root}


def script_path() -> Path | None:
    main = sys.modules.get("__main__")
    f = getattr(main, "__file__", None) or (sys.argv[0] if sys.argv and sys.argv[0] not in ("", "-c") else None)
    if not f:
        return None
    p = Path(f).resolve()
    return p if p.exists() else None


def git_info(script: Path | None = None) -> dict[str, Any] | None:
    """The repository holding the training script (else the working directory), or None outside git."""
    script = script if script is not None else script_path()
    folder = script.parent if script is not None else Path.cwd()
    info = _git(str(folder))
    if info is None and script is not None:
        info = _git(str(Path.cwd()))
    if info is None:
        return None
    return {**info, "script": str(script) if script is not None else None}


def environment(world_size: int = 1, rank: int = 0) -> dict[str, Any]:
    env: dict[str, Any] = {
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "platform": platform.platform(), "world_size": int(world_size), "rank": int(rank),
    }
    try:
        import numpy

        env["numpy"] = numpy.__version__
    except ImportError:  # pragma: no cover
        pass
    try:
        env["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except Exception:  # pragma: no cover
        env["cudnn"] = None
    devices: list[str] = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        try:
            devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        except Exception:  # pragma: no cover
            devices = []
    env["devices"] = devices
    env["cuda_available"] = bool(torch.cuda.is_available())
    return env


def seeds() -> dict[str, Any]:
    out: dict[str, Any] = {"torch": int(torch.initial_seed()),
                           "deterministic_algorithms": bool(torch.are_deterministic_algorithms_enabled()),
                           "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
                           "cudnn_benchmark": bool(torch.backends.cudnn.benchmark)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        try:
            out["cuda"] = int(torch.cuda.initial_seed())
        except Exception:  # pragma: no cover
            pass
    return out


def _tensors(obj: Any, depth: int = 0) -> list[Tensor]:
    if isinstance(obj, Tensor):
        return [obj]
    if depth > 3:
        return []
    if isinstance(obj, (list, tuple)):
        return [t for o in obj[:8] for t in _tensors(o, depth + 1)]
    if isinstance(obj, dict):
        return [t for o in list(obj.values())[:8] for t in _tensors(o, depth + 1)]
    return []


def _digest(t: Tensor) -> bytes:
    t = t.cpu().contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16
        t = t.view(torch.int16)
    try:
        return t.numpy().tobytes()
    except (TypeError, RuntimeError):
        return repr(t.tolist()).encode()


def module_hparams(model: torch.nn.Module | None) -> dict[str, Any]:
    """Hyperparameters that live in modules, not the optimizer: dropout rates, normalization layers."""
    if model is None:
        return {}
    dropout, norms = {}, {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            dropout[name] = float(m.p)
        elif isinstance(m, (torch.nn.modules.batchnorm._NormBase, torch.nn.LayerNorm, torch.nn.GroupNorm)) or \
                module_type(m).endswith(("RMSNorm", "LayerNorm")):
            norms[name] = module_type(m)
    return {"dropout": dropout, "norm_layers": norms}


class Tracking:
    """Collects the run's provenance; `on_batch` sees the first training batches (inputs, and targets
    when the criterion watch passes them)."""

    def __init__(self, notes: str | None = None, world_size: int = 1, rank: int = 0,
                 model: torch.nn.Module | None = None) -> None:
        self.notes = notes
        try:
            self.hparams = module_hparams(model)
        except Exception:  # pragma: no cover - an exotic module must not break watch()
            self.hparams = {}
        self.git = git_info()
        self.env = environment(world_size, rank)
        self.seeds = seeds()
        self.batches: list[dict[str, Any]] = []
        self._pending: list[tuple[str, Tensor]] = []  # (header, slice) still to hash
        self._hash = hashlib.sha1()
        self.targets: list[dict[str, Any]] = []

    def install(self, criterion: Any) -> None:
        """A pre-hook on an nn.Module criterion for the targets; it removes itself after the first batches."""
        self._handle = None
        if isinstance(criterion, torch.nn.Module):
            def pre(module: Any, args: tuple[Any, ...]) -> None:
                try:  # never break the training loop over a fingerprint
                    if torch.is_grad_enabled() and len(args) > 1:
                        self.on_target(args[1])
                    if len(self.targets) >= FINGERPRINT_BATCHES:
                        self.close()
                except Exception:
                    self.close()

            self._handle = criterion.register_forward_pre_hook(pre)

    def close(self) -> None:
        h, self._handle = getattr(self, "_handle", None), None
        if h is not None:
            h.remove()

    @property
    def done(self) -> bool:
        return len(self.batches) >= FINGERPRINT_BATCHES

    def on_batch(self, inputs: Any) -> None:
        """A training forward's inputs (the model's positional/keyword arguments)."""
        if self.done:
            return
        ts = _tensors(inputs)
        i = len(self.batches)
        self.batches.append({"inputs": [{"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
                                         "device": t.device.type} for t in ts]})
        for t in ts:
            self._add(i, "x", t)

    def on_target(self, target: Any) -> None:
        """The targets that reached the loss (first batches only)."""
        if len(self.targets) >= FINGERPRINT_BATCHES or not isinstance(target, Tensor):
            return
        self.targets.append({"shape": list(target.shape), "dtype": str(target.dtype).replace("torch.", "")})
        self._add(len(self.targets) - 1, "y", target)

    def _add(self, i: int, role: str, t: Tensor) -> None:
        # A clone of a slice (at most HASH_ELEMENTS values), on the tensor's own device; hashed in order
        # at the next meta write, so CPU and GPU runs of the same data give the same hash.
        self._pending.append((f"{i}{role}{tuple(t.shape)}{t.dtype}", t.detach().reshape(-1)[:HASH_ELEMENTS].clone()))

    def _resolve(self) -> None:
        for header, s in self._pending:  # at a flush: the host copy of a few KB per tensor
            self._hash.update(header.encode())
            self._hash.update(_digest(s))
        self._pending = []

    def data_fingerprint(self) -> dict[str, Any] | None:
        if not self.batches and not self.targets:
            return None
        self._resolve()
        shapes = sorted({str(b["inputs"]) for b in self.batches})
        return {"batches": len(self.batches), "inputs": self.batches[0]["inputs"] if self.batches else [],
                "targets": self.targets[0] if self.targets else None,
                "same_shapes": len(shapes) <= 1 or len({str([d["shape"][1:] for d in b["inputs"]])
                                                        for b in self.batches}) <= 1,
                "hash": self._hash.hexdigest()[:16], "hashed_elements_per_tensor": HASH_ELEMENTS}

    def summary(self) -> dict[str, Any]:
        return {"git": self.git, "data": self.data_fingerprint(), "env": self.env, "seeds": self.seeds,
                "modules": self.hparams}
