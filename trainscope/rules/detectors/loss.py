"""Loss-curve rules (playbook 7.8.1 patterns 1-6 and the StreamRec case study).

All measures are relative (any loss: BCE, CE, MSE) and robust (rolling medians, block medians,
windows that are a fraction of the run), so minibatch noise and thousands of steps are fine.
Validation rules work per evaluation (usually per epoch), training-curve rules per logged step.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from trainscope.numbers import fmt
from trainscope.rules.finding import Finding
from trainscope.rules.registry import Context, NotApplicable, detector
from trainscope.rules.signals import (
    TRAIN_ACC_NAMES,
    TRAIN_LOSS_NAMES,
    VAL_LOSS_NAMES,
    block_medians,
    eval_curve,
    finite,
    first_series,
    has_validation,
    head_level,
    lr_value,
    n_epochs,
    rel,
    smooth,
    tail_level,
)
from trainscope.rules.evidence import early_rise, first_loss, mean_span
from trainscope.store.run import Run

FLAT_DROP = 0.05  # below this relative decrease the curve is "flat" (loss-not-decreasing's default)


def _fmt(x: float) -> str:
    return fmt(x)


def _train_loss(run: Run) -> pd.Series:
    s = first_series(run, TRAIN_LOSS_NAMES)
    if s is None:
        raise NotApplicable("no training loss logged")
    return s


def _finite_train(run: Run, min_points: int) -> pd.Series:
    t = finite(_train_loss(run))
    if len(t) < min_points:
        raise NotApplicable(f"only {len(t)} finite training-loss values (needs {min_points})")
    return t


def chance_loss(run: Run) -> float | None:
    """The loss of an untrained classifier (ln C for cross-entropy, ln 2 for BCE), if known."""
    crit = (run.meta.get("criterion") or {}).get("class", "")
    c = run.meta.get("num_classes")
    if crit in ("CrossEntropyLoss", "NLLLoss") and isinstance(c, int) and c > 1:
        return float(np.log(c))
    if crit in ("BCELoss", "BCEWithLogitsLoss"):
        return float(np.log(2))
    return None


def _common_fix_values(run: Run) -> dict[str, str]:
    lr = lr_value(run)
    bs = first_series(run, ("loop/batch_size", "batch_size"))
    return {
        "lr": _fmt(lr) if lr is not None else "not logged",
        "batch_size": _fmt(float(finite(bs).median())) if bs is not None and len(finite(bs)) else "not logged",
    }


def _span(s: pd.Series) -> tuple[int, int]:
    return int(s.index[0]), int(s.index[-1])


def _unit(run: Run, t: pd.Series) -> str:
    return f"{len(t)} logged values (steps {t.index[0]}-{t.index[-1]})"


def _significant_digits(x: float) -> int:
    if x == 0 or not np.isfinite(x):
        return 0
    mantissa = f"{abs(x):.15g}".split("e")[0].replace(".", "").lstrip("0")
    return len(mantissa.rstrip("0")) or 1


def _frozen(ctx: Context) -> list[Finding] | None:
    """A loss that is the very same number at every logged value (3+): degenerate data, the clearest
    evidence that nothing learns (principle 3), judged even on a short log. Without a training loss the
    validation loss is read: a frozen validation loss means a frozen model too."""
    s = first_series(ctx.run, TRAIN_LOSS_NAMES)
    which = "train loss"
    if s is None:
        s, which = first_series(ctx.run, VAL_LOSS_NAMES), "validation loss (no training loss logged)"
    if s is None:
        return None
    v = finite(s)
    if len(v) < int(ctx.p("min_frozen")) or float(v.max()) != float(v.min()):
        return None
    # "0.01, 0.01, 0.01" (or 0) in a log printed with few digits can be a converged loss that still
    # moves below the printed precision: frozen needs a value written with 3+ significant digits
    if _significant_digits(float(v.iloc[0])) < 3:
        return None
    f = ctx.finding(
        f"the {which} is exactly {fmt(float(v.iloc[0]), 6)} at every one of {_unit(ctx.run, v)}: the model's output "
        "does not change at all (zero gradients, a constant output, or parameters that are not updated)",
        steps=_span(v),
        evidence={"initial_loss": float(v.iloc[0]), "best_loss": float(v.iloc[0]), "relative_drop": 0.0,
                  "points": len(v), "frozen": True},
        fix_values=_common_fix_values(ctx.run),
    )
    # not a single digit moved: look at what blocks learning before tuning the step size
    return [dataclasses.replace(f, fixes=tuple(reversed(f.fixes)))]


@detector("loss-not-decreasing")
def loss_not_decreasing(ctx: Context) -> list[Finding]:
    frozen = _frozen(ctx)
    if frozen:
        return frozen
    t = finite(_train_loss(ctx.run))
    # an epoch-level log of 5+ epochs is judged too; step logs need min_points values
    need = 5 if n_epochs(ctx.run) == len(t) else ctx.p("min_points")
    if len(t) < need:
        raise NotApplicable(f"only {len(t)} finite training-loss values (needs {need})")
    head = head_level(t, 0.1, lo=min(3, len(t)))
    if abs(head) < 1e-8:
        raise NotApplicable("initial training loss is already ~0")
    chance = chance_loss(ctx.run)
    if chance is not None and 0 < head < 0.5 * chance:
        return []  # starts far below chance: fine-tuning or a resumed run, a flat curve is expected
    # lowest level later in the run, from medians of fifths of it: a noisy flat curve has dips
    # that short windows would count as progress
    m = block_medians(t, max(1, len(t) // 5))
    best = float(m.iloc[1:].min()) if len(m) > 1 else float(m.iloc[0])
    drop = (head - best) / abs(head)
    if drop >= ctx.p("min_rel_drop"):
        return []
    # a log that starts late (epoch 154 of a run) is a window of a longer run: a slow fall there is
    # what late training looks like, and the run's start, where "not decreasing" would be harm, is
    # missing. A window that still trends down is decreasing; otherwise it is worth knowing (info).
    first_at = int(t.index[0])
    # in logged points, not steps: a value logged every 500 steps starts at 500 and is not late
    idx = t.index.to_numpy(dtype=float)
    spacing = float(np.median(np.diff(idx))) if len(idx) > 1 else 1.0
    late_start = spacing > 0 and first_at / spacing >= max(10, len(t))
    severity = None
    note = ""
    if late_start:
        rho = float(pd.Series(t.to_numpy()).corr(pd.Series(np.arange(len(t))), method="spearman"))
        if np.isfinite(rho) and rho <= -float(ctx.p("window_trend")) and drop > 0:
            return []
        severity = "info"
        note = f"; the log starts at step/epoch {first_at}, a window of a longer run (its start is not in the log)"
    return [
        ctx.finding(
            (f"smoothed train loss fell only {drop:.1%} (from {_fmt(head)} to at best {_fmt(best)}) " if drop >= 0 else
             f"smoothed train loss never fell below its start (from {_fmt(head)}; its lowest later level {_fmt(best)}) ")
            + f"over {_unit(ctx.run, t)}; threshold {ctx.p('min_rel_drop'):.0%}{note}",
            steps=_span(t),
            evidence={"initial_loss": head, "best_loss": best, "relative_drop": drop, "points": len(t),
                      "first_logged": first_at},
            fix_values=_common_fix_values(ctx.run),
            severity=severity,
        )
    ]


@detector("divergence")
def divergence(ctx: Context) -> list[Finding]:
    raw = _train_loss(ctx.run)
    values = raw.to_numpy(dtype=float)
    fv = _common_fix_values(ctx.run)
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.argmax(bad))
        last = finite(raw.iloc[:i])
        before = f" (last finite value {_fmt(float(last.iloc[-1]))} at step {last.index[-1]})" if len(last) else ""
        return [
            ctx.finding(
                f"train loss became {values[i]} at step {raw.index[i]}{before}; "
                f"{int(bad.sum())} of {len(values)} logged values are not finite",
                steps=(int(raw.index[i]), int(raw.index[-1])),
                evidence={"first_nonfinite_step": int(raw.index[i]), "nonfinite_count": int(bad.sum())},
                fix_values=fv,
            )
        ]
    t = raw
    if len(t) < 4:
        raise NotApplicable(f"only {len(t)} training-loss values")
    # the loss at initialization, from the FIRST logged values (a window would hide an early
    # blow-up, principle 2): for spikes the smallest of the first 3; for slower rises the larger of
    # the first value and the median of the first 3 (one lucky low batch must not fake a rise).
    # Logged means (HF logging_steps, epoch means) are smooth: their first point is the start.
    v = t.to_numpy()
    first = float(np.min(v[:3]))
    span = mean_span(ctx.run)
    head = float(v[0]) if span > 1 or len(v) < 20 else max(float(v[0]), float(np.median(v[:3])))
    probe_first, _ = first_loss(ctx.run)
    if probe_first is not None and span > 1:
        first, head = min(first, probe_first), probe_first
    if first <= 0:
        raise NotApplicable("training loss is not positive; relative divergence tests do not apply")
    spikes = t[t > ctx.p("spike_factor") * first]
    if len(spikes):
        return [
            ctx.finding(
                f"train loss spiked to {_fmt(float(spikes.max()))} at step {spikes.idxmax()}, "
                f"{float(spikes.max()) / first:.3g}x its initial level {_fmt(first)} (threshold {ctx.p('spike_factor'):g}x)",
                steps=(int(spikes.index[0]), int(spikes.index[-1])),
                evidence={"initial_loss": first, "max_loss": float(spikes.max()), "spike_steps": len(spikes)},
                fix_values=fv,
            )
        ]
    sm = smooth(t)
    end = tail_level(sm, 0.05)
    peak_step = sm.idxmax()
    if float(sm.max()) > ctx.p("rise_factor") * head and sm.index.get_loc(peak_step) > 0:
        return [
            ctx.finding(
                f"smoothed train loss rose to {_fmt(float(sm.max()))} at step {peak_step}, "
                f"{float(sm.max()) / head:.3g}x its initial level {_fmt(head)} (threshold {ctx.p('rise_factor'):g}x)",
                steps=(int(sm.index[0]), int(peak_step)),
                evidence={"initial_loss": head, "peak_loss": float(sm.max()), "final_loss": end},
                fix_values=fv,
            )
        ]
    # climbing back: medians of tenths of the run, so minibatch noise cannot fake a rebound
    m = block_medians(t, max(1, len(t) // 10))
    low_pos = int(np.argmin(m.to_numpy()))
    low, end = float(m.iloc[low_pos]), float(m.iloc[-1])
    progress = head - low
    if progress > 0.2 * head and low_pos < len(m) - 1:
        undone = (end - low) / progress
        if undone >= ctx.p("undo_fraction"):
            return [
                ctx.finding(
                    f"train loss (medians of tenths of the run) fell from {_fmt(head)} to {_fmt(low)} by step "
                    f"{m.index[low_pos]} then climbed back to {_fmt(end)}, undoing {undone:.0%} of its progress "
                    f"(threshold {ctx.p('undo_fraction'):.0%})",
                    steps=(int(m.index[low_pos]), int(t.index[-1])),
                    evidence={"initial_loss": head, "lowest_loss": low, "final_loss": end, "undone": undone},
                    fix_values=fv,
                )
            ]
    return []


def _val_noise(v: np.ndarray) -> float:
    """Point-to-point noise of a validation curve (robust, trend-insensitive)."""
    if len(v) < 4:
        return 0.0
    d = np.diff(v)
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2))


def _eval(ctx: Context, min_evals: int):
    e = eval_curve(ctx.run, VAL_LOSS_NAMES)
    if e is None:
        logged = first_series(ctx.run, VAL_LOSS_NAMES) is not None
        raise NotApplicable("no finite validation loss" if logged else "no validation loss logged")
    if len(e) < min_evals:
        raise NotApplicable(f"only {len(e)} validation points (needs {min_evals})")
    return e


def _epoch_word(e) -> str:
    return "epoch" if e.per_epoch else "evaluation"


def _at(e, i: int) -> str:
    """'epoch 13', or 'evaluation 7 (step 700)' when validation is not per epoch."""
    return f"epoch {e.label(i)}" if e.per_epoch else f"evaluation {e.label(i)} (step {int(e.steps[i])})"


@detector("overfitting")
def overfitting(ctx: Context) -> list[Finding]:
    e = _eval(ctx, ctx.p("min_evals"))
    v, t = e.val, e.train
    b = int(np.argmin(v))
    after = len(v) - 1 - b
    if after < 1 or not np.isfinite(t[b]):
        return []
    k = min(3, after)
    v_end = float(np.median(v[-k:]))
    t_end = float(np.nanmedian(t[-k:])) if np.isfinite(t[-k:]).any() else np.nan
    if not np.isfinite(t_end):
        return []
    train_drop = -rel(t_end, t[b])  # positive when training kept falling
    val_rise = rel(v_end, v[b])
    gap_best, gap_end = v[b] - t[b], v_end - t_end
    rel_gap = gap_end / max(abs(v_end), 1e-12)  # how far validation sits above training at the end
    noise = _val_noise(v)
    rising = val_rise >= ctx.p("min_val_rise") and (v_end - v[b]) > 3 * noise and after >= 2
    plateau = after >= max(2, int(0.2 * len(v)))
    gap_growth = (gap_end - gap_best) / max(abs(v_end), 1e-12)
    if train_drop < ctx.p("min_train_drop") or rel_gap < ctx.p("min_gap") or not (rising or plateau):
        return []
    if gap_growth < ctx.p("min_gap_growth"):
        return []
    word = _epoch_word(e)
    best_epoch = e.label(b)
    how = f"rose {val_rise:.0%} to {_fmt(v_end)}" if rising else f"plateaued ({_fmt(v_end)})"
    # Ended shortly after the minimum: early stopping (or the user) already stopped it (pattern 6).
    contained = after <= ctx.p("contained_evals") and after < 0.3 * len(v)
    note = (f"; the run ended {after} {word}{'s' if after > 1 else ''} after the minimum, so early stopping "
            "caught it" if contained else "")
    # probe.log(restored_epoch=N) (the reference trainer writes it): the returned model is epoch N's.
    kept = ctx.run.scalar("restored_epoch").dropna() if "restored_epoch" in ctx.run.scalar_names() else ()
    i = next((j for j in range(len(v)) if len(kept) and e.label(j) == kept.iloc[-1]), None)
    if i is not None and v[i] <= v[b] + max(3 * noise, ctx.p("min_val_rise") * abs(v[b])):
        contained = True
        note = (f"; the run restored the weights of {word} {e.label(i)} (val loss {_fmt(v[i])}), so the model "
                "it returned is the validation minimum's")
    return [
        ctx.finding(
            f"val loss lowest {_fmt(v[b])} at {word} {best_epoch}, then {how} by {word} {e.label(len(v) - 1)} "
            f"while train loss fell {train_drop:.0%} ({_fmt(t[b])} -> {_fmt(t_end)}); "
            f"train-val gap {_fmt(gap_best)} -> {_fmt(gap_end)} ({rel_gap:.0%} of val loss; threshold {ctx.p('min_gap'):.0%})"
            f"{note}",
            severity="info" if contained else None,
            steps=(int(e.steps[b]), int(e.steps[-1])),
            evidence={
                "best_epoch": best_epoch,
                "best_val_loss": round(float(v[b]), 6),
                "final_val_loss": v_end,
                "train_loss_at_best": float(t[b]),
                "final_train_loss": t_end,
                "gap_at_best": gap_best,
                "final_gap": gap_end,
                "val_rise": val_rise,
                "relative_gap": rel_gap,
            },
            fix_values={**_common_fix_values(ctx.run), "best_at": _at(e, b)},
        )
    ]


@detector("no-early-stopping")
def no_early_stopping(ctx: Context) -> list[Finding]:
    e = _eval(ctx, 4)
    v = e.val
    n = len(v)
    b = int(np.argmin(v))
    after = n - 1 - b
    v_end = float(v[-1])
    if after < ctx.p("min_extra_fraction") * n:
        return []
    if rel(v_end, v[b]) < ctx.p("min_val_rise") or (v_end - v[b]) <= 2 * _val_noise(v):
        return []
    # smallest patience that still reaches the minimum: one more than the longest stall before it
    stall = longest = 0
    best_so_far = np.inf
    for x in v[: b + 1]:
        if x < best_so_far:
            best_so_far, stall = x, 0
        else:
            stall += 1
            longest = max(longest, stall)
    min_patience = longest + 1
    patience = max(min_patience, int(ctx.p("patience")))
    stop = min(b + patience, n - 1)
    wasted = n - 1 - stop
    if wasted < ctx.p("min_extra_epochs"):
        return []  # early stopping would barely have saved anything
    word = _epoch_word(e)
    return [
        ctx.finding(
            f"val loss reached its minimum {_fmt(v[b])} at {word} {e.label(b)} but training ran "
            f"{after} more {word}s (to {e.label(n - 1)}, val loss {_fmt(v_end)}, +{rel(v_end, v[b]):.0%}); "
            f"early stopping with patience {patience} would have stopped at {word} {e.label(stop)}, "
            f"{wasted} {word}s earlier (threshold {ctx.p('min_extra_epochs')}; smallest patience reaching the minimum: {min_patience})",
            steps=(int(e.steps[b]), int(e.steps[-1])),
            evidence={
                "best_epoch": e.label(b),
                "best_val_loss": round(float(v[b]), 6),
                "final_val_loss": v_end,
                "extra_epochs": after,
                "wasted_epochs": wasted,
                "min_patience": min_patience,
                "patience": patience,
                "stop_epoch": e.label(stop),
            },
            fix_values={**_common_fix_values(ctx.run), "best_at": _at(e, b), "stop_at": _at(e, stop)},
        )
    ]


@detector("underfitting")
def underfitting(ctx: Context) -> list[Finding]:
    t = _finite_train(ctx.run, 5)
    span = mean_span(ctx.run)
    if len(t) < 20 and n_epochs(ctx.run) is None and span <= 1:
        raise NotApplicable(f"only {len(t)} training-loss values")
    head = head_level(t, 0.05, lo=min(3, len(t)))
    if span > 1:
        # each point is a mean over `span` steps (HF logging_steps, epoch means): the first point
        # already averages the fast early drop, and a median of the first points starts later still
        # (principle: judge a logged mean as a mean). The probe's own first loss is the start.
        probe_first, _ = first_loss(ctx.run)
        head = max(float(t.iloc[0]), probe_first or 0.0)
    if head <= 0:
        raise NotApplicable("training loss is not positive")
    chance = chance_loss(ctx.run)
    if chance is not None and head < 0.5 * chance:
        return []  # starts far below chance (fine-tuning, resumed run): "high" does not apply
    sm = smooth(t)
    end = tail_level(sm, 0.05)
    low = float(sm.min())
    if rel(head, low) < FLAT_DROP:  # never moved: loss-not-decreasing's case
        return []
    remaining = end / head
    third = float(sm.iloc[int(len(sm) * 2 / 3)])
    tail_drop = (third - end) / head
    if not ctx.p("min_remaining") <= remaining <= 1.0 or tail_drop >= ctx.p("max_tail_drop"):
        return []
    acc = first_series(ctx.run, TRAIN_ACC_NAMES)
    if acc is not None and len(finite(acc)) and tail_level(finite(acc), 0.1) > ctx.p("max_train_acc"):
        return []
    e = eval_curve(ctx.run, VAL_LOSS_NAMES)
    val_note = ""
    if e is not None and len(e) >= 3:
        v_end = float(np.median(e.val[-min(3, len(e)):]))
        if v_end < ctx.p("min_remaining") * float(e.val[0]) or v_end > end * 1.25:
            return []  # validation did not plateau high, or the gap says overfitting instead
        val_note = f"; val loss also plateaued at {_fmt(v_end)}"
    return [
        ctx.finding(
            f"train loss plateaued at {_fmt(end)}, still {remaining:.0%} of its initial {_fmt(head)} "
            f"(threshold {ctx.p('min_remaining'):.0%}); last third of the run improved it only "
            f"{tail_drop:.1%}{val_note}",
            steps=(int(sm.index[int(len(sm) * 2 / 3)]), int(sm.index[-1])),
            evidence={"initial_loss": head, "final_loss": end, "remaining": remaining, "tail_drop": tail_drop},
            fix_values=_common_fix_values(ctx.run),
        )
    ]


def _d2_amplitude(v: np.ndarray) -> float:
    """Robust amplitude of up-and-down swings: second differences remove any linear trend
    (a falling or rising curve is not an oscillation); for white noise of std s they have std s*sqrt(6)."""
    d2 = v[2:] - 2 * v[1:-1] + v[:-2]
    return float(1.4826 * np.median(np.abs(d2)) / np.sqrt(6))


@detector("oscillation")
def oscillation(ctx: Context) -> list[Finding]:
    fv = _common_fix_values(ctx.run)
    # 1. validation curve: evaluated on a fixed set, so its swings are the weights jumping around
    e = eval_curve(ctx.run, VAL_LOSS_NAMES)
    if e is not None and len(e) >= 8:
        v = e.val
        level = float(np.median(v))
        d = np.diff(v)
        reversals = float(np.mean(np.sign(d[1:]) != np.sign(d[:-1])))
        # distance of each point from the median of it and its neighbours: zero on any monotone
        # stretch however curved, the size of the swing at each peak or trough
        mid = np.median(np.stack([v[:-2], v[1:-1], v[2:]]), axis=0)
        off = np.abs(v[1:-1] - mid) / level if level > 0 else np.zeros(len(v) - 2)
        swings = int(np.sum(off >= ctx.p("min_val_swing")))
        share = swings / len(off)
        if swings >= 3 and share >= ctx.p("min_swing_share") and reversals >= ctx.p("min_reversals"):
            word = _epoch_word(e)
            amp = float(np.mean(off[off >= ctx.p("min_val_swing")]))
            # harm: swings that matter on the scale the run travelled (its first loss down to this
            # level); a val loss bouncing 20% around 2% of where training started has converged
            t_all = first_series(ctx.run, TRAIN_LOSS_NAMES)
            t0 = finite(t_all) if t_all is not None else pd.Series(dtype=float)
            start = max(float(t0.iloc[0]) if len(t0) else float("nan"), float(np.max(v)))
            travelled = start - level if np.isfinite(start) else float("nan")
            of_range = amp * level / travelled if np.isfinite(travelled) and travelled > 0 else float("nan")
            small = bool(np.isfinite(of_range) and of_range < float(ctx.p("min_swing_of_range")))
            note = (f"; small next to the {_fmt(travelled)} the loss came down (swings {of_range:.1%} of it, below "
                    f"{float(ctx.p('min_swing_of_range')):.0%}): noise around a converged level" if small else "")
            return [
                ctx.finding(
                    f"val loss zigzags: {swings} of {len(off)} {word}s are peaks or troughs standing "
                    f"{amp:.1%} (on average) of its level {_fmt(level)} off their neighbours "
                    f"(thresholds {ctx.p('min_val_swing'):.0%}, {ctx.p('min_swing_share'):.0%} of {word}s); "
                    f"it changes direction at {reversals:.0%} of {word}s instead of settling{note}",
                    steps=(int(e.steps[0]), int(e.steps[-1])),
                    evidence={"swings": swings, "swing_share": share, "val_swing": amp, "reversals": reversals,
                              "level": level, "points": len(v),
                              "swing_of_range": of_range if np.isfinite(of_range) else None},
                    fix_values=fv,
                    severity="info" if small else None,
                )
            ]
    # 2. training curve, second half, in windows (medians kill minibatch noise)
    t = finite(_train_loss(ctx.run))
    half = t.iloc[len(t) // 2 :]
    if len(half) < ctx.p("min_points"):
        if e is not None and len(e) >= 8:
            return []
        raise NotApplicable(f"only {len(half)} training-loss values in the second half (needs {ctx.p('min_points')})")
    size = max(3, len(half) // 20)
    m = block_medians(half, size).to_numpy()
    level = float(np.median(m))
    if level <= 0 or len(m) < 6:
        return []
    vals = half.to_numpy()[: len(m) * size].reshape(len(m), size)
    within = 1.4826 * np.median(np.abs(vals - np.median(vals, axis=1, keepdims=True)))
    amp = _d2_amplitude(m)
    swing = amp / level
    expected = (1.2533 * within) ** 2 / size  # variance of a block median under pure minibatch noise
    excess = amp**2 / max(expected, 1e-30)
    if swing < ctx.p("min_swing") or excess < ctx.p("min_excess"):
        return []
    return [
        ctx.finding(
            f"in the second half of the run the train loss swings {swing:.0%} of its level {_fmt(level)} "
            f"between windows of {size} values (threshold {ctx.p('min_swing'):.0%}), "
            f"{excess:.3g}x the variance minibatch noise explains (threshold {ctx.p('min_excess'):g}x)",
            steps=_span(half),
            evidence={"swing": swing, "level": level, "noise_excess": excess, "window": size},
            fix_values=fv,
        )
    ]


@detector("slow-start")
def slow_start(ctx: Context) -> list[Finding]:
    t = finite(_train_loss(ctx.run))
    if len(t) < 8:
        raise NotApplicable(f"only {len(t)} training-loss values")
    size = max(1, int(round(len(t) * ctx.p("early_fraction"))))
    m = block_medians(t, size)
    if len(m) < 4:
        return []
    mv = m.to_numpy()
    total = mv[0] - mv.min()
    if mv[0] <= 0 or total < 0.2 * mv[0]:
        return []  # little learning overall: other rules' business
    early = mv[0] - mv[1]
    later = mv[1:-1] - mv[2:]
    j = int(np.argmax(later))
    fastest = float(later[j])
    if early >= ctx.p("max_early_share") * total or fastest < ctx.p("min_speedup") * max(early, 1e-12):
        return []
    if early < 0 and early_rise(ctx.run) is not None:
        return []  # the loss ROSE first: an early blow-up (lr-too-high / divergence), not a slow start
    # noise: a block median of `size` noisy batches wanders by ~1.25 sigma / sqrt(size); a later
    # window must beat the early one by clearly more than that (small or binary batches are noisy)
    if size >= 3:
        vals = t.to_numpy()[: len(mv) * size].reshape(len(mv), size)
        sigma = 1.4826 * float(np.median(np.abs(vals - np.median(vals, axis=1, keepdims=True))))
        se = 1.2533 * sigma / np.sqrt(size) * np.sqrt(2)
        if fastest - max(early, 0.0) < float(ctx.p("noise_factor")) * se:
            return []
    lr = first_series(ctx.run, ("lr/0",))
    if lr is not None and len(finite(lr)):
        first = finite(lr)[finite(lr).index <= m.index[1]]
        if len(first) >= 2 and first.iloc[-1] >= 1.5 * first.iloc[0]:
            return []  # learning-rate warmup: a slow start is by design
    epoch_level = n_epochs(ctx.run) == len(t)
    unit = "epoch" if epoch_level else "step"

    def span(i: int) -> str:  # the steps (or epochs) block i covers
        lo, hi = t.index[i * size], t.index[(i + 1) * size - 1]
        return f"{unit} {lo}" if lo == hi else f"{unit}s {lo}-{hi}"

    # how long the loss stayed near its start: blocks still within max_early_share of the total
    # decrease below the first block. A plateau over a quarter of the run is compute really lost.
    near = mv[0] - mv <= ctx.p("max_early_share") * total
    flat_blocks = int(np.argmin(near)) if not near.all() else len(near)
    flat_frac = flat_blocks * size / len(t)
    harmful = flat_frac >= float(ctx.p("warn_fraction"))
    return [
        ctx.finding(
            f"smoothed train loss moved from {_fmt(float(mv[0]))} ({span(0)}) to {_fmt(float(mv[1]))} ({span(1)}): "
            f"{early / total:.0%} of its total decrease (threshold {ctx.p('max_early_share'):.0%}); "
            + (f"a later window fell {fastest / early:.3g}x faster (threshold {ctx.p('min_speedup'):g}x)"
               if early > 0 else f"then a later window fell by {_fmt(fastest)}")
            + f"; the loss stayed near its start for {flat_frac:.0%} of the run"
            + (f" (>= {float(ctx.p('warn_fraction')):.0%})" if harmful else ""),
            steps=(int(t.index[0]), int(t.index[2 * size - 1])),
            severity="warning" if harmful else "info",
            evidence={
                "flat_fraction": flat_frac,
                "early_drop": float(early),
                "total_drop": float(total),
                "early_share": float(early / total),
                "speedup": fastest / max(early, 1e-12),
                "window": size,
            },
            fix_values={**_common_fix_values(ctx.run), "init_fix": _init_fix(ctx.run)},
        )
    ]


def _init_fix(run: Run) -> str:
    """He init advice only where the init table shows ReLU-family layers well below He."""
    init = run.init
    if init.empty:
        return ("If this is a ReLU network with PyTorch's default init, use He (Kaiming) initialization: "
                "nn.init.kaiming_normal_(w, nonlinearity='relu')")
    relu = init[init["target_scheme"].astype(str) == "he"]
    if len(relu) and float(relu["ratio"].median()) < 0.5:
        return "Use He (Kaiming) initialization for the ReLU layers: nn.init.kaiming_normal_(w, nonlinearity='relu')"
    return "The initialization fits the nonlinearities (init table): look at the input scale and the warmup instead"


@detector("no-validation")
def no_validation(ctx: Context) -> list[Finding]:
    if has_validation(ctx.run):
        return []
    if ctx.run.scalars.empty:
        raise NotApplicable("no scalar metrics at all (incomplete-recording's finding)")
    epochs = n_epochs(ctx.run)
    steps = int(ctx.run.scalars["step"].max()) if not ctx.run.scalars.empty else 0
    long_enough = epochs >= ctx.p("min_epochs") if epochs is not None else steps >= ctx.p("min_steps")
    # no validation metric at all is always worth saying (principle 3); a warning once the run is
    # long enough for overfitting to matter
    length = f"{epochs} epochs ({steps} steps)" if epochs is not None else f"{steps} steps"
    logged = ", ".join(ctx.run.scalar_names()[:8])
    return [
        ctx.finding(
            f"no validation metric in a run of {length}; logged: {logged}"
            + ("" if long_enough else f" (a short run: below {ctx.p('min_epochs')} epochs / {ctx.p('min_steps')} steps, so info)"),
            steps=(int(ctx.run.scalars["step"].min()), steps),
            evidence={"epochs": epochs, "steps": steps, "scalars": ctx.run.scalar_names()},
            severity=None if long_enough else "info",
        )
    ]
