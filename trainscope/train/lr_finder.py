"""Smith's learning-rate range test (playbook 7.8.2).

Train for up to `num_steps` batches while the learning rate grows exponentially from `start_lr` to
`end_lr`; stop when the smoothed loss blows up (more than `diverge_factor` x its best, or non-finite).
The model, optimizer state, train/eval mode and RNG state are cloned first and restored after, so the
test leaves no trace on the training that follows.

Suggestion rule (stated in the result): the learning rate at the minimum of the smoothed loss,
divided by 10 — "about 10x smaller than where the loss is minimum" (the module). When the loss never
falls clearly (by `min_drop` of its start) the minimum is noise, so the rule becomes 7.8.2's "one
order of magnitude below the point where the loss begins to increase"; when it neither falls nor
rises there is no suggestion (NaN) — a model that does not react to the learning rate has a bug.
The steepest-descent point is reported alongside.
"""
from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from trainscope.errors import TrainscopeError

RULE = "lr at the minimum of the smoothed loss / 10"
RULE_NO_DESCENT = "no clear descent: lr where the smoothed loss starts to rise / 10"
RULE_NOTHING = "no descent and no blow-up in the sweep: no suggestion (suspect a bug; run `trainscope check --model FILE.py:FUNC --data FILE.py:FUNC`)"


@dataclass
class LRFinderResult:
    lrs: list[float]
    losses: list[float]  # raw loss per step
    smoothed: list[float]  # bias-corrected exponential moving average
    suggested_lr: float
    min_loss_lr: float
    steepest_lr: float  # where the smoothed loss falls fastest per decade of lr
    rule: str = RULE
    stopped_early: bool = False
    stop_reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_frame(self):  # type: ignore[no-untyped-def]
        import pandas as pd

        return pd.DataFrame({"lr": self.lrs, "loss": self.losses, "smoothed": self.smoothed})

    def summary(self) -> str:
        lines = [f"suggested lr {self.suggested_lr:.2e}  ({self.rule})",
                 f"  loss minimum at lr {self.min_loss_lr:.2e}; steepest descent at lr {self.steepest_lr:.2e}",
                 f"  {len(self.lrs)} steps from {self.lrs[0]:.1e} to {self.lrs[-1]:.1e}"]
        if self.stopped_early:
            lines.append(f"  stopped: {self.stop_reason}")
        return "\n".join(lines)


def find_lr(
    model: nn.Module,
    train_data: Any,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    batch_size: int = 64,
    smoothing: float = 0.9,
    diverge_factor: float = 4.0,
    min_drop: float = 0.03,
    seed: int = 0,
) -> LRFinderResult:
    """Run the range test; `optimizer` defaults to SGD with momentum 0.9 on the model's parameters."""
    if not 0 < start_lr < end_lr:
        raise TrainscopeError(f"need 0 < start_lr < end_lr (got {start_lr}, {end_lr})")
    if num_steps < 10:
        raise TrainscopeError("num_steps must be at least 10")
    if optimizer is None:
        optimizer = torch.optim.SGD(model.parameters(), lr=start_lr, momentum=0.9)
    saved_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
    saved_opt = copy.deepcopy(optimizer.state_dict())
    saved_rng = torch.get_rng_state()
    was_training = model.training
    from trainscope.train.sanity import _call, _device_of, _logits, _to

    if isinstance(train_data, Dataset) and not isinstance(train_data, DataLoader):
        gen = torch.Generator().manual_seed(seed)
        loader: Any = DataLoader(train_data, batch_size=batch_size, shuffle=True, generator=gen, drop_last=True)
    elif iter(train_data) is train_data:  # a generator or iterator: keep what one pass yields
        loader = list(itertools.islice(train_data, num_steps))
    else:
        loader = train_data  # a DataLoader, a list of batches, any re-iterable of (inputs, targets)
    if hasattr(loader, "__len__") and len(loader) == 0:
        raise TrainscopeError("the LR finder needs at least one full batch of data")
    device = _device_of(model)
    mult = (end_lr / start_lr) ** (1.0 / (num_steps - 1))
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    avg, best = 0.0, math.inf
    stopped, reason = False, ""
    try:
        model.train()
        batches = iter(loader)
        for step in range(num_steps):
            lr = start_lr * mult**step
            for g in optimizer.param_groups:
                g["lr"] = lr
            try:
                batch = next(batches)
            except StopIteration:
                batches = iter(loader)
                try:
                    batch = next(batches)
                except StopIteration:
                    raise TrainscopeError("the LR finder needs at least one batch of data") from None
            if not isinstance(batch, (list, tuple)) or len(batch) != 2:
                raise TrainscopeError("each batch must be a pair (inputs, targets)")
            inputs, targets = _to(batch[0], device), _to(batch[1], device)
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(_logits(_call(model, inputs)), targets)
            value = float(loss.detach())
            lrs.append(lr)
            losses.append(value)
            if not math.isfinite(value):
                smoothed.append(math.inf)
                stopped, reason = True, f"loss became non-finite at lr {lr:.2e}"
                break
            avg = smoothing * avg + (1 - smoothing) * value
            s = avg / (1 - smoothing ** (step + 1))
            smoothed.append(s)
            if step > 0 and s > diverge_factor * best:
                stopped, reason = True, f"smoothed loss {s:.3g} > {diverge_factor:g} x best {best:.3g} at lr {lr:.2e}"
                break
            best = min(best, s)
            loss.backward()
            optimizer.step()
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_opt)
        torch.set_rng_state(saved_rng)
        model.train(was_training)
    finite = [i for i, s in enumerate(smoothed) if math.isfinite(s)]
    if len(finite) < 3:
        raise TrainscopeError("the loss blew up within the first steps; lower start_lr")
    s_arr = np.array([smoothed[i] for i in finite])
    lr_arr = np.array([lrs[i] for i in finite])
    i_min = int(np.argmin(s_arr))
    slope = np.gradient(s_arr, np.log10(lr_arr))
    i_steep = int(np.argmin(slope[: max(1, i_min)])) if i_min > 0 else 0
    min_lr = float(lr_arr[i_min])
    start = float(s_arr[: max(1, len(s_arr) // 10)].mean())  # the flat beginning, noise averaged
    if s_arr[i_min] <= start * (1 - min_drop):
        suggested, rule = min_lr / 10, RULE
    else:
        rising = np.nonzero(s_arr > start * (1 + min_drop))[0]
        if len(rising) or stopped:
            i_rise = int(rising[0]) if len(rising) else len(s_arr) - 1
            suggested, rule = float(lr_arr[i_rise]) / 10, RULE_NO_DESCENT
        else:
            suggested, rule = math.nan, RULE_NOTHING
    return LRFinderResult(lrs=lrs, losses=losses, smoothed=smoothed, suggested_lr=suggested, min_loss_lr=min_lr,
                          steepest_lr=float(lr_arr[i_steep]), rule=rule, stopped_early=stopped, stop_reason=reason)
