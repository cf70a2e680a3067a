"""Learning-rate schedules (playbook 7.5), built from PyTorch's own schedulers.

Every schedule here is stepped once per optimizer step (per batch), so one-cycle and warmup are
never compressed into a handful of epoch steps (the 7.5.5 mistake); "step" decays every
`step_epochs` epochs, counted in batches.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import lr_scheduler

from trainscope.errors import TrainscopeError

SCHEDULES = ("constant", "step", "cosine", "warmup_cosine", "onecycle", "cosine_restarts")


@dataclass(frozen=True)
class ScheduleSpec:
    """A schedule and its knobs; unused knobs are ignored by the other schedules."""

    name: str = "constant"
    max_lr: float | None = None  # onecycle peak (default: the optimizer's lr)
    pct_start: float = 0.3  # onecycle warmup fraction
    div_factor: float = 25.0  # onecycle: initial lr = max_lr / div_factor
    final_div_factor: float = 1e4  # onecycle: final lr = initial lr / final_div_factor
    cycle_momentum: bool = True  # onecycle: momentum (or Adam's beta1) cycles 0.95 -> 0.85 -> 0.95
    warmup_frac: float = 0.05  # warmup_cosine: warmup steps as a fraction of training
    warmup_start: float = 1e-3  # warmup_cosine: first lr as a fraction of the peak
    min_lr_frac: float = 0.0  # cosine schedules: eta_min as a fraction of the peak
    step_epochs: int = 10  # step: decay every this many epochs
    gamma: float = 0.1  # step: multiply by this
    restart_epochs: int = 10  # cosine_restarts: first period in epochs (T_0)
    t_mult: int = 2  # cosine_restarts: period multiplier


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    spec: ScheduleSpec | str,
    total_steps: int,
    steps_per_epoch: int,
) -> lr_scheduler.LRScheduler | None:
    """The scheduler for `spec`, to be stepped after every optimizer step; None for constant."""
    if isinstance(spec, str):
        spec = ScheduleSpec(name=spec)
    if spec.name not in SCHEDULES:
        raise TrainscopeError(f"unknown schedule {spec.name!r}; valid: {', '.join(SCHEDULES)}")
    if total_steps <= 0 or steps_per_epoch <= 0:
        raise TrainscopeError("a schedule needs total_steps and steps_per_epoch > 0")
    base = optimizer.param_groups[0]["lr"]
    if spec.name == "constant":
        return None
    if spec.name == "step":
        return lr_scheduler.StepLR(optimizer, step_size=max(1, spec.step_epochs * steps_per_epoch), gamma=spec.gamma)
    if spec.name == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=base * spec.min_lr_frac)
    if spec.name == "warmup_cosine":
        warmup = max(1, int(round(spec.warmup_frac * total_steps)))
        if warmup >= total_steps:
            raise TrainscopeError(f"warmup ({warmup} steps) must be shorter than training ({total_steps} steps)")
        return lr_scheduler.SequentialLR(
            optimizer,
            [
                lr_scheduler.LinearLR(optimizer, start_factor=spec.warmup_start, end_factor=1.0, total_iters=warmup),
                lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps - warmup, eta_min=base * spec.min_lr_frac),
            ],
            milestones=[warmup],
        )
    if spec.name == "onecycle":
        return lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=spec.max_lr or base,
            total_steps=total_steps,
            pct_start=spec.pct_start,
            div_factor=spec.div_factor,
            final_div_factor=spec.final_div_factor,
            anneal_strategy="cos",
            cycle_momentum=spec.cycle_momentum and _has_momentum(optimizer),
        )
    # cosine_restarts (SGDR), periods counted in optimizer steps
    return lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=max(1, spec.restart_epochs * steps_per_epoch), T_mult=spec.t_mult, eta_min=base * spec.min_lr_frac
    )


def _has_momentum(optimizer: torch.optim.Optimizer) -> bool:
    d = optimizer.defaults
    return "betas" in d or d.get("momentum", 0) > 0


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, peak: float, start_frac: float = 1e-3,
                  min_frac: float = 0.0) -> float:
    """Closed form of the warmup_cosine schedule (what `make_scheduler` must reproduce)."""
    if step < warmup_steps:
        frac = start_frac + (1.0 - start_frac) * step / warmup_steps
        return peak * frac
    t = step - warmup_steps
    t_max = total_steps - warmup_steps
    lo = peak * min_frac
    return lo + (peak - lo) * (1 + math.cos(math.pi * t / t_max)) / 2


def trace(spec: ScheduleSpec | str, total_steps: int = 1000, steps_per_epoch: int = 100, lr: float = 0.1,
          optimizer: str = "sgd") -> dict[str, list[float]]:
    """Learning rate (and momentum) at each of `total_steps` steps, for plots and tests."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt: torch.optim.Optimizer
    if optimizer == "sgd":
        opt = torch.optim.SGD([p], lr=lr, momentum=0.9)
    else:
        opt = torch.optim.AdamW([p], lr=lr)
    sched = make_scheduler(opt, spec, total_steps, steps_per_epoch)
    lrs, moms = [], []
    for _ in range(total_steps):
        g = opt.param_groups[0]
        lrs.append(float(g["lr"]))
        moms.append(float(g["betas"][0] if "betas" in g else g.get("momentum", 0.0)))
        opt.step()
        if sched is not None:
            sched.step()
    return {"lr": lrs, "momentum": moms}


def describe(spec: ScheduleSpec) -> dict[str, Any]:
    """The knobs that matter for this schedule (for meta and docs)."""
    keys = {
        "constant": [],
        "step": ["step_epochs", "gamma"],
        "cosine": ["min_lr_frac"],
        "warmup_cosine": ["warmup_frac", "warmup_start", "min_lr_frac"],
        "onecycle": ["max_lr", "pct_start", "div_factor", "final_div_factor", "cycle_momentum"],
        "cosine_restarts": ["restart_epochs", "t_mult", "min_lr_frac"],
    }[spec.name]
    return {"name": spec.name, **{k: getattr(spec, k) for k in keys}}
