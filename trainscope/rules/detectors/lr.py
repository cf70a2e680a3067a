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

from trainscope.rules.detectors._common import (compute_rows, current_lr, fmt, kind_mask, layer_codes, layer_name,
                                                 pivot, sig1, train_loss)
from trainscope.rules.evidence import (
    clip_facts,
    early_rise,
    first_loss,
    log_of_probabilities,
    lr_trace,
    rise_after_progress,
    too_high_signs,
    update_ratio_per_step,
)
from trainscope.rules.signals import lr_value
from trainscope.rules.finding import Finding
from trainscope.rules.registry import Context, NotApplicable, detector


def _ratios(ctx: Context, min_steps: int | None = None) -> tuple[pd.Series, pd.DataFrame]:
    """Median update ratio across compute layers per recorded step, and the step x layer table,
    both restricted to the run's working LR."""
    rows = kind_mask(ctx.run, "update") & compute_rows(ctx.run)
    table = pivot(ctx.run.layers, "ratio", rows=rows, codes=layer_codes(ctx.run))
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


def _window_drop(ctx: Context) -> float | None:
    """Relative drop of the training loss from the median of its first tenth to its last tenth: a
    loss that fell in the first few steps and then stalled."""
    loss = train_loss(ctx.run)
    loss = loss[np.isfinite(loss)]
    if len(loss) < 10:
        return None
    k = max(2, len(loss) // 10)
    start, end = float(loss.iloc[:k].median()), float(loss.iloc[-k:].median())
    return (start - end) / abs(start) if start > 0 else None


def _loss_drop(ctx: Context) -> tuple[float | None, bool, float]:
    """Relative drop of the training loss from its FIRST logged value to its last tenth (median),
    whether it went non-finite, and its largest value relative to the first (a spike). The first
    value, not a median of the first tenth: a blow-up within the first steps must not be averaged
    away (principle 2)."""
    loss = train_loss(ctx.run)
    if loss.empty:
        return None, False, float("nan")
    nonfinite = bool((~np.isfinite(loss)).any())
    loss = loss[np.isfinite(loss)]
    if len(loss) < 4:
        return None, nonfinite, float("nan")
    first, _ = first_loss(ctx.run)
    k = max(2, len(loss) // 10)
    start = first if first is not None else float(loss.iloc[:k].median())
    end = float(loss.iloc[-k:].median())
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
    if too_high_signs(ctx.run):
        return  # principle 2: never "raise the LR" on a run that shows it may be too high
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
    ur = update_ratio_per_step(ctx.run)  # every recorded step, warmup included
    rise = early_rise(ctx.run, float(ctx.p("loss_spike")))
    clip = clip_facts(ctx.run)
    clip_heavy = bool(clip and clip["clip_rate"] >= float(ctx.p("min_clip_rate"))
                      and np.isfinite(clip["preclip_norm"])
                      and clip["preclip_norm"] >= float(ctx.p("clip_factor")) * clip["max_norm"])
    spiked = np.isfinite(spike) and spike >= float(ctx.p("loss_spike"))
    blew_up = nonfinite or spiked or rise is not None
    wdrop = _window_drop(ctx)
    stalled = wdrop is not None and wdrop < float(ctx.p("min_loss_drop"))
    struggling = blew_up or clip_heavy or stalled or (drop is not None and drop < float(ctx.p("min_loss_drop")))
    peak = lr_value(ctx.run)
    trace = lr_trace(ctx.run)
    thr = float(ctx.p("ratio_max"))
    extreme = float(ctx.p("ratio_extreme"))
    med, which, used = float("nan"), "", ur.iloc[0:0]
    if len(ur) >= (1 if nonfinite or blew_up else int(ctx.p("min_steps"))):
        candidates = [(float(ur.iloc[: int(ctx.p("early_steps"))].median()), "first recorded steps",
                       ur.iloc[: int(ctx.p("early_steps"))]),
                      (float(ur.median()), "all recorded steps", ur)]
        if len(trace) and peak:
            near = trace[trace >= 0.5 * float(trace.max())].index
            at_peak = ur[ur.index.isin(near)]
            if len(at_peak):
                candidates.append((float(at_peak.median()), "steps at the peak LR", at_peak))
        med, which, used = max(candidates, key=lambda c: c[0])
    # principle 1: a large ratio alone is a smell; it needs the loss to show it (a blow-up, a stall,
    # heavy clipping), or, above ratio_extreme, at least a loss that did not halve
    ratio_fires = bool(np.isfinite(med) and med > thr and (
        struggling or drop is None or (med > extreme and drop < float(ctx.p("extreme_min_drop")))))
    # without update ratios (or below them): two independent signs measured in this run
    other_fires = blew_up and clip_heavy
    # a loss that fell, then climbed back and lost most of its progress, while the updates leading
    # into the climb were 10x+ the healthy ~1e-3: the optimizer overshoots (a momentum/summed-loss
    # LR that is too large), not a bad batch (that leaves the update ratio alone)
    late = rise_after_progress(ctx.run, float(ctx.p("loss_spike")))
    late_ur = ur[ur.index <= late[2]] if late is not None else ur.iloc[0:0]
    late_med = float(late_ur.median()) if len(late_ur) >= 3 else float("nan")
    late_fires = bool(not ratio_fires and np.isfinite(late_med) and late_med > float(ctx.p("ratio_blowup")))
    if late_fires:
        med, which, used = late_med, "steps up to the climb", late_ur
    if not (ratio_fires or other_fires or late_fires):
        if ur.empty and not (blew_up or clip_heavy):
            raise NotApplicable("no weight-update statistics, and no loss blow-up or heavy clipping")
        return
    # the LR that would give the target ratio, from the LR in force at the steps measured
    target = float(ctx.p("target_ratio"))
    if (ratio_fires or late_fires) and len(used):
        lrs = trace.reindex(used.index, method="nearest") if len(trace) else pd.Series(dtype=float)
        if len(lrs) and np.isfinite(lrs.to_numpy(dtype=float)).all():
            new = float(np.median(lrs.to_numpy(dtype=float) * target / used.to_numpy(dtype=float)))
        else:
            new = (peak or 0.0) * target / med
        factor = new / peak if peak else target / med
    else:
        factor = 0.1
        new = (peak or 0.0) * factor
    new_lr = sig1(new) if peak else f"{sig1(factor)}x the current value"
    notes = []
    if nonfinite:
        notes.append("the loss went NaN/Inf")
    elif rise is not None and np.isfinite(rise[0]):
        notes.append(f"the loss rose to {fmt(rise[0])}x its first logged value by step {rise[1]}")
    elif spiked:
        notes.append(f"the loss spiked to {fmt(spike)}x its first logged value")
    elif drop is not None and drop < float(ctx.p("min_loss_drop")):
        notes.append(f"loss {'fell only' if drop >= 0 else 'rose'} {abs(drop):.1%} from its first logged value")
    elif stalled and not late_fires:
        notes.append(f"after its first tenth the loss {'fell only' if wdrop >= 0 else 'rose'} {abs(wdrop):.1%}")
    if late_fires and late is not None:
        notes.append(f"the smoothed loss fell to {fmt(late[3])} (step {late[1]}), then climbed back to {fmt(late[4])} "
                     f"(step {late[2]}, {fmt(late[0])}x its best)")
    if clip_heavy:
        notes.append(f"gradients clipped at {clip['clip_rate']:.0%} of steps (median pre-clip norm "
                     f"{fmt(clip['preclip_norm'])} vs max_norm {fmt(clip['max_norm'])})")
    warm = ""
    if len(trace) >= 2 and float(trace.iloc[0]) < 0.5 * float(trace.max()):
        warm = f"; LR warms up from {fmt(float(trace.iloc[0]))} to a peak of {fmt(float(trace.max()))}"
    if late_fires:
        head = (f"median update ratio ||dW||/||W|| {fmt(med)} > {fmt(float(ctx.p('ratio_blowup')))} (10x the healthy "
                f"~1e-3) over the {which} ({int(used.index[0])}-{int(used.index[-1])})")
        steps = (int(used.index[0]), int(late[2])) if late is not None else None
    elif ratio_fires:
        head = (f"median update ratio ||dW||/||W|| {fmt(med)} > {fmt(thr if med <= extreme else extreme)} per step "
                f"over the {which} ({int(used.index[0])}-{int(used.index[-1])})")
        steps = (int(used.index[0]), int(used.index[-1]))
    else:
        head = "the loss blew up early while the gradient norm before clipping stayed far above max_norm"
        t = train_loss(ctx.run)
        steps = (int(t.index[0]), int(t.index[-1])) if len(t) else None
    yield ctx.finding(
        head + ("; " + "; ".join(notes) if notes else "") + warm,
        steps=steps,
        evidence={"update_ratio": med if np.isfinite(med) else None,
                  "update_ratio_early": float(ur.iloc[: int(ctx.p("early_steps"))].median()) if len(ur) else None,
                  "update_ratio_overall": float(ur.median()) if len(ur) else None,
                  "threshold": thr, "lr": peak, "peak_lr": peak, "loss_drop": drop, "loss_nonfinite": nonfinite,
                  "loss_spike": spike if np.isfinite(spike) else None,
                  "clip_rate": clip["clip_rate"] if clip else None,
                  "preclip_norm": clip["preclip_norm"] if clip else None,
                  "suggested_lr": new_lr},
        fix_values={"lr": fmt(peak) if peak else "?", "lr_new": new_lr, "factor": fmt(factor)},
        # a NaN from log(softmax(x)) comes from the construction, not from the step size
        explains=() if log_of_probabilities(ctx.run) else ("nan-or-inf",),
    )
