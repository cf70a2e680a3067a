"""Small helpers shared by the probe's collectors: finding tensors in outputs, JSON-safe values."""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
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


def module_type(m: nn.Module) -> str:
    """The module's class name; for a module FSDP2's `fully_shard` re-classed (FSDPLinear, a subclass of
    FSDPModule and Linear) the original one, so rules see "Linear" either way."""
    cls = type(m)
    bases = cls.__bases__
    if len(bases) == 2 and bases[0].__name__ == "FSDPModule" and cls.__name__ == "FSDP" + bases[1].__name__:
        return bases[1].__name__
    return cls.__name__


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


_INPUT_KEYS = ("input_ids", "pixel_values", "input_values", "input_features", "inputs_embeds", "x", "input",
               "inputs", "features", "images", "image")


def first_input(kwargs: dict[str, Any]) -> Tensor | None:
    """The model input among keyword arguments (`model(**batch)`): the usual names first, then the first
    tensor that is not a label or mask."""
    for key in _INPUT_KEYS:
        if isinstance(kwargs.get(key), Tensor):
            return kwargs[key]
    for key, v in kwargs.items():
        if isinstance(v, Tensor) and "label" not in key and "mask" not in key and "target" not in key:
            return v
    return None


def unwrap_optimizer(opt: Any) -> Any:
    """The torch optimizer inside accelerate's AcceleratedOptimizer (an Optimizer subclass that keeps no
    hooks of its own), Lightning's LightningOptimizer, deepspeed's wrappers, ..."""
    for _ in range(4):
        inner = getattr(opt, "optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer):
            inner = getattr(opt, "_optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer) or inner is opt:
            return opt
        opt = inner
    return opt


def rank_known() -> bool:
    """torch.distributed is initialized, or the launcher said which rank this is (RANK)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return True
    except Exception:  # pragma: no cover
        pass
    return "RANK" in os.environ


def default_run_dir(model_name: str) -> Path:
    """runs/<Model>-<time>, the same in every process of one distributed job: under torchrun (or
    mp.spawn) the time is the launcher's (parent process's) start, so all ranks agree."""
    import multiprocessing

    from trainscope.store.writer import safe_name

    model_name = safe_name(model_name, "model")
    stamp = time.time()
    if "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ or multiprocessing.parent_process():
        started = _process_start(os.getppid())
        if started is not None:
            stamp = started
        else:
            return Path("runs") / f"{model_name}-{time.strftime('%Y%m%d', time.localtime())}-p{os.getppid()}"
    return Path("runs") / f"{model_name}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(stamp))}"


def _process_start(pid: int) -> float | None:
    """Wall-clock start time of a process (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of stat: start time in clock ticks after boot
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except Exception:
        return None


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


# autograd nodes that only move or reshape values: the op that made a loss input is behind them
# (sigmoid(x).squeeze(-1) is still a sigmoid's output)
_SHAPE_ONLY = ("View", "UnsafeView", "Reshape", "Squeeze", "Unsqueeze", "Permute", "Transpose", "T", "Expand",
               "Clone", "Alias", "Select", "Slice", "AsStrided", "Flatten", "Unflatten", "ToCopy")


def _through_shape_ops(fn: Any) -> Any:
    for _ in range(8):
        if fn is None:
            return None
        base = type(fn).__name__.rstrip("0123456789")
        base = base[: -len("Backward")] if base.endswith("Backward") else base
        if base not in _SHAPE_ONLY:
            break
        inputs = [f for f, _ in fn.next_functions if f is not None]
        if len(inputs) != 1:
            break
        fn = inputs[0]
    return fn


def producer_chain(t: torch.Tensor, depth: int = 2) -> list[str]:
    """The ops that computed `t`, newest first, looking through shape-only ops: ['LogBackward0',
    'SoftmaxBackward0'] for torch.log(torch.softmax(x, 1)); [] for a leaf."""
    out: list[str] = []
    fn = _through_shape_ops(t.grad_fn)
    while fn is not None and len(out) < depth:
        out.append(type(fn).__name__)
        inputs = [f for f, _ in fn.next_functions if f is not None and type(f).__name__ != "AccumulateGrad"]
        fn = _through_shape_ops(inputs[0]) if len(inputs) == 1 else None
    return out


def producer_name(t: torch.Tensor) -> str:
    """The autograd node that computed `t`'s values, looking through shape-only ops; '' for a leaf."""
    chain = producer_chain(t, 1)
    return chain[0] if chain else ""
