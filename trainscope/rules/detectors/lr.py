"""Learning-rate rules: update-to-weight ratios (||dW||/||W|| per optimizer step) and the loss.

A healthy step changes a weight by about 1e-3 of its norm (healthy band roughly 1e-4..1e-1). The
ratio alone is not enough: fine-tuning legitimately takes tiny steps, small nets under Adam take
large ones. So a too-low ratio needs a loss that is not falling, and a too-high ratio needs a loss
that is not falling, swinging or blowing up (unless the ratio is absurd on its own). The suggested
LR scales the current one so that the median ratio lands on `target_ratio` (updates scale
linearly with the LR for SGD and Adam alike).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pandas as pd

from trainscope.rules.detectors._common import compute_mask, current_lr, fmt, layer_name, layer_rows, pivot, sig1, train_loss
from trainscope.rules.finding import Finding
from trainscope.rules.registry import Context, NotApplicable, detector


def _ratios(ctx: Context, min_steps: int | None = None) -> tuple[pd.Series, pd.DataFrame]:
    """Median update ratio across compute layers per recorded step, and the step x layer table,
    both restricted to the run's working LR."""
    u = layer_rows(ctx.run, "update")
    u = u[compute_mask(u["module_type"])]
    table = pivot(u, "ratio")
    # an exact 0 is a frozen layer (another problem); inf is a zero-initialized weight's first step
    table = table.where(table > 0).replace([np.inf, -np.inf], np.nan)
    per_step = table.median(axis=1, skipna=True).dropna()
    per_step = per_step[np.isfinite(per_step)]
    need = int(ctx.p("min_steps")) if min_steps is None else min_steps
    # judge at the working LR: leave out warmup and the decayed tail of a schedule
    lr = ctx.run.scalar("lr/0")
    if not lr.empty and lr.max() > 0:
        working = lr[lr >= 0.3 * lr.max()].index
        kept = per_step[per_step.index.isin(working)]
        if len(kept) >= need:
            per_step = kept
            table = table[table.index.isin(working)]
    if len(per_step) < max(1, need):
        raise NotApplicable(f"only {len(per_step)} recorded steps with weight updates")
    return per_step, table


def _loss_drop(ctx: Context) -> tuple[float | None, bool, float]:
    """Relative drop of the training loss (first vs last tenth), whether it went non-finite, and
    its largest value relative to the start (a spike)."""
    loss = train_loss(ctx.run)
    if loss.empty:
        return None, False, float("nan")
    nonfinite = bool((~np.isfinite(loss)).any())
    loss = loss[np.isfinite(loss)]
    if len(loss) < 4:
        return None, nonfinite, float("nan")
    k = max(2, len(loss) // 10)
    start, end = float(loss.iloc[:k].median()), float(loss.iloc[-k:].median())
    if start <= 0:
        return None, nonfinite, float("nan")
    return (start - end) / abs(start), nonfinite, float(loss.max()) / start


def _suggest(ctx: Context, measured: float) -> tuple[str, float]:
    lr = current_lr(ctx.run)
    factor = float(ctx.p("target_ratio")) / measured
    factor = float(np.clip(factor, 1e-3, 1e3))
    return (sig1(lr * factor) if lr else f"{sig1(factor)}x the current value"), factor


@detector("lr-too-low")
def lr_too_low(ctx: Context) -> Iterator[Finding]:
    per_step, table = _ratios(ctx)
    # Judge the fastest-moving layer: when only the first layers crawl, gradients vanish (another
    # rule); the LR is too low when no layer moves at a healthy rate.
    per_layer = table.median(skipna=True).dropna()
    if per_layer.empty:
        return
    fastest = str(per_layer.idxmax())
    top = float(per_layer.max())
    thr = float(ctx.p("ratio_min"))
    if top >= thr:
        return
    drop, _, _ = _loss_drop(ctx)
    max_drop = float(ctx.p("max_loss_drop"))
    if drop is not None and drop > max_drop:
        return  # the loss is falling well: small steps are working (e.g. fine-tuning)
    new_lr, factor = _suggest(ctx, top)
    lr = current_lr(ctx.run)
    if drop is None:
        loss_note = ""
    elif drop >= 0:
        loss_note = f"; loss fell only {drop:.1%} (<= {max_drop:.0%})"
    else:
        loss_note = f"; loss rose {-drop:.1%}"
    yield ctx.finding(
        f"update ratio ||dW||/||W|| of the fastest-moving layer ({layer_name(fastest)}) {fmt(top)} < "
        f"{fmt(thr)} per step "
        f"(median over layers {fmt(per_step.median())}) over steps {int(per_step.index[0])}-"
        f"{int(per_step.index[-1])}{loss_note}",
        steps=(int(per_step.index[0]), int(per_step.index[-1])),
        evidence={"update_ratio": top, "fastest_layer": fastest, "update_ratio_median": float(per_step.median()),
                  "threshold": thr, "lr": lr, "loss_drop": drop, "suggested_lr": new_lr},
        fix_values={"lr": fmt(lr) if lr else "?", "lr_new": new_lr, "factor": fmt(factor)},
    )


@detector("lr-too-high")
def lr_too_high(ctx: Context) -> Iterator[Finding]:
    drop, nonfinite, spike = _loss_drop(ctx)
    # a run that went NaN within a few steps leaves few finite updates: judge those it has
    per_step, _ = _ratios(ctx, min_steps=1 if nonfinite else None)
    # the first recorded steps show an oversized LR before weights grow to absorb it
    early = float(per_step.iloc[: int(ctx.p("early_steps"))].median())
    overall = float(per_step.median())
    med = max(early, overall)
    which = "first recorded steps" if early >= overall else "all recorded steps"
    thr = float(ctx.p("ratio_max"))
    extreme = float(ctx.p("ratio_extreme"))
    spiked = np.isfinite(spike) and spike >= float(ctx.p("loss_spike"))
    struggling = nonfinite or spiked or (drop is not None and drop < float(ctx.p("min_loss_drop")))
    if not (med > extreme or (med > thr and (struggling or drop is None))):
        return
    new_lr, factor = _suggest(ctx, med)
    lr = current_lr(ctx.run)
    if nonfinite:
        loss_note = "; the loss went NaN/Inf"
    elif spiked:
        loss_note = f"; the loss spiked to {fmt(spike)}x its initial value"
    elif drop is not None:
        loss_note = f"; loss {'fell only' if drop >= 0 else 'rose'} {abs(drop):.1%}"
    else:
        loss_note = ""
    yield ctx.finding(
        f"median update ratio ||dW||/||W|| {fmt(med)} > {fmt(thr if med <= extreme else extreme)} per step "
        f"over the {which} ({int(per_step.index[0])}-{int(per_step.index[-1])}){loss_note}",
        steps=(int(per_step.index[0]), int(per_step.index[-1])),
        evidence={"update_ratio": med, "update_ratio_early": early, "update_ratio_overall": overall,
                  "threshold": thr, "lr": lr, "loss_drop": drop, "loss_nonfinite": nonfinite,
                  "loss_spike": spike if np.isfinite(spike) else None, "suggested_lr": new_lr},
        fix_values={"lr": fmt(lr) if lr else "?", "lr_new": new_lr, "factor": fmt(factor)},
    )
