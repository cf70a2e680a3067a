"""Small helpers shared by the probe's collectors: finding tensors in outputs, JSON-safe values."""
from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import Tensor, nn


def jsonable(v: Any) -> Any:
    """A value json.dumps accepts: non-finite floats as strings, tensors as numbers or a shape."""
    if isinstance(v, (bool, int, str)) or v is None:
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, Tensor):
        return jsonable(v.item()) if v.numel() == 1 else f"tensor{tuple(v.shape)}"
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    return repr(v)


def first_tensor(x: Any) -> Tensor | None:
    """The tensor that matters in a module's args or output: the first one, or `logits`/`out`/`output`."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (list, tuple)):
        for y in x:
            t = first_tensor(y)
            if t is not None:
                return t
    if isinstance(x, dict):
        for key in ("logits", "out", "output"):
            if isinstance(x.get(key), Tensor):
                return x[key]
        for y in x.values():
            t = first_tensor(y)
            if t is not None:
                return t
    return None


def unwrap(model: nn.Module) -> tuple[nn.Module, bool]:
    """The module whose submodules we hook: inside DDP/DataParallel and torch.compile wrappers."""
    compiled = False
    for _ in range(4):
        if hasattr(model, "_orig_mod"):
            model, compiled = model._orig_mod, True
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            break
    return model, compiled


def dist_rank_world() -> tuple[int, int]:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except Exception:  # pragma: no cover - exotic builds
        pass
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def distribution_facts(x: Tensor) -> dict[str, Any]:
    """Is this tensor already a probability (or log-probability) distribution over dim 1?"""
    xf = x.detach().float()
    facts: dict[str, Any] = {}
    if xf.numel() == 0:
        return facts
    lo, hi = torch.aminmax(xf)
    if xf.dim() >= 2 and xf.shape[1] > 1:
        rows = xf.sum(dim=1)
        lse = torch.logsumexp(xf, dim=1)
        vals = torch.stack([lo, hi, rows.mean(), (rows - 1).abs().max(), lse.abs().max()]).tolist()
        facts.update(min=vals[0], max=vals[1], row_sum_mean=vals[2])
        facts["is_prob"] = bool(vals[0] >= 0 and vals[3] < 1e-3)
        facts["is_log_prob"] = bool(vals[1] <= 0 and vals[4] < 1e-3)
    else:
        vals = torch.stack([lo, hi]).tolist()
        facts.update(min=vals[0], max=vals[1])
        facts["is_prob"] = bool(vals[0] >= 0 and vals[1] <= 1)  # e.g. sigmoid output
        facts["is_log_prob"] = False
    return facts
