"""Facts several rules weigh before they speak: what the run recorded, read the same way everywhere.

Principle 2 of docs/diagnose.md: never advise the opposite of the truth. Before any rule says "raise
the learning rate", `too_high_signs` must come back empty: the loss did not rise early (judged from
the first logged value, never from a window that hides a rise), updates were not large during
warmup, and the gradient norm before clipping was not far above `max_norm`. LRs quoted in fixes are
the peak (`peak_lr`): the maximum of the recorded LR trace, or the param groups' `max_lr` /
`initial_lr`, never the first warmup value.

Principle 5: infer from what was recorded. The LR trace (`lr/<group>`) tells the schedule whether or
not a scheduler was handed to the probe (nanoGPT writes `param_group['lr']` itself).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from trainscope.rules.signals import TRAIN_LOSS_NAMES, finite, first_series, lr_value
from trainscope.store.run import Run

# the thresholds behind "the LR may be too high" (shared by every rule that would otherwise
# advise raising it); lr-too-high itself has its own tunable parameters
EARLY_RISE = 1.5  # the loss went above 1.5x its first logged value in the first third of the run
UPDATE_RATIO_HIGH = 0.1  # a median update ratio above this at any recorded step (warmup included)
CLIP_RATE_HIGH = 0.5  # clipping active at half the steps or more ...
CLIP_FACTOR_HIGH = 5.0  # ... with the median pre-clip norm 5x max_norm or more


def lr_trace(run: Run) -> pd.Series:
    """The recorded learning rate of group 0 by step (lr/0, else lr or learning_rate), finite only."""
    s = first_series(run, ("lr/0", "lr", "learning_rate"))
    if s is None:
        return pd.Series(dtype=float)
    return finite(s)


def peak_lr(run: Run) -> float | None:
    """The run's peak learning rate (see signals.lr_value)."""
    return lr_value(run)


def training_loss(run: Run) -> pd.Series:
    s = first_series(run, TRAIN_LOSS_NAMES)
    return s if s is not None else pd.Series(dtype=float)


def first_loss(run: Run) -> tuple[float | None, int | None]:
    """The loss before (or at) the first update: the probe's criterion_input loss at the first step
    when it saw one at or before the first logged loss, else the first finite logged training loss."""
    t = finite(training_loss(run))
    first = (float(t.iloc[0]), int(t.index[0])) if len(t) else (None, None)
    ev = run.events
    if not ev.empty:
        ci = ev[ev["kind"] == "criterion_input"].sort_values("step", kind="stable")
        if not ci.empty:
            v = float(ci.iloc[0]["value"]) if ci.iloc[0]["value"] is not None else float("nan")
            s = int(ci.iloc[0]["step"])
            if math.isfinite(v) and v > 0 and (first[1] is None or s <= first[1]) and mean_span(run) > 1:
                # logged points are means over several steps: the probe's own first loss is earlier
                return v, s
    return first


def mean_span(run: Run) -> float:
    """How many optimizer steps each logged training-loss point stands for (1 for per-step logs).

    A Hugging Face log with logging_steps=10 has a point every 10 steps, each the mean of those 10
    batches; a Keras/Lightning epoch log one point per epoch. Such curves are smoother than per-step
    losses and have fewer points, and the first point already averages the fast early drop."""
    t = finite(training_loss(run))
    if len(t) < 2:
        return 1.0
    d = np.diff(t.index.to_numpy(dtype=float))
    d = d[d > 0]
    return float(np.median(d)) if len(d) else 1.0


def early_rise(run: Run, factor: float = EARLY_RISE, frac: float = 1 / 3) -> tuple[float, int] | None:
    """(peak / first, step of the peak) when the training loss rose above `factor` x its first
    logged value (or became non-finite) within the first `frac` of the run; None otherwise."""
    raw = training_loss(run)
    if raw.empty:
        return None
    first, _ = first_loss(run)
    if first is None or first <= 0:
        return None
    n = max(3, int(math.ceil(len(raw) * frac)))
    head = raw.iloc[:n].to_numpy(dtype=float)
    bad = ~np.isfinite(head)
    if bad.any():
        return float("inf"), int(raw.index[int(np.argmax(bad))])
    i = int(np.argmax(head))
    peak = float(head[i])
    if peak >= factor * first:
        return peak / first, int(raw.index[i])
    return None


def rise_after_progress(run: Run, factor: float = EARLY_RISE, keep: float = 0.5) -> tuple[float, int, int, float, float] | None:
    """(peak / best, step of the best, step of the peak, best, peak) when the smoothed training loss,
    after falling to a best value, climbed back to `factor` x that best AND to at least `keep` x its
    first logged value (most of the progress lost); None otherwise. The second condition keeps the
    multiplicative noise of a loss near zero from counting as a blow-up."""
    raw = training_loss(run)
    raw = raw[np.isfinite(raw.to_numpy(dtype=float))]
    if len(raw) < 10:
        return None
    first, _ = first_loss(run)
    if first is None or first <= 0:
        return None
    w = max(5, len(raw) // 50) | 1
    smooth = raw.rolling(w, center=True, min_periods=3).median()
    best = smooth.cummin()
    ok = best > 0
    if not ok.any():
        return None
    ratio = (smooth[ok] / best[ok]).replace([np.inf, -np.inf], np.nan).dropna()
    if ratio.empty:
        return None
    peak_step = ratio.idxmax()
    rise = float(ratio.loc[peak_step])
    peak = float(smooth.loc[peak_step])
    if rise < factor or peak < keep * first:
        return None
    best_val = float(best.loc[peak_step])
    best_step = smooth[:peak_step][smooth[:peak_step] <= best_val].index
    return rise, int(best_step[-1] if len(best_step) else raw.index[0]), int(peak_step), best_val, peak


def update_ratio_per_step(run: Run) -> pd.Series:
    """Median update ratio ||dW||/||W|| across compute layers at each recorded step (all steps,
    warmup included); empty without update statistics."""
    from trainscope.rules.detectors._common import compute_rows, kind_mask
    from trainscope.rules.registry import NotApplicable

    try:
        rows = kind_mask(run, "update")
    except NotApplicable:  # no layer statistics, or no update rows
        return pd.Series(dtype=float)
    u = run.layers.loc[rows & compute_rows(run), ["step", "ratio"]]
    if u.empty:
        return pd.Series(dtype=float)
    r = u["ratio"].replace([np.inf, -np.inf], np.nan)
    u = u.assign(ratio=r.where(r > 0))
    s = u.groupby("step")["ratio"].median().dropna()
    return s[np.isfinite(s)]


def clip_facts(run: Run) -> dict[str, float] | None:
    """Clipping as recorded: rate of steps where clipping was active, the median pre-clip norm and
    the median max_norm; None when the run recorded no clipping."""
    clipped = run.scalar("loop/clipped")
    max_norm = finite(run.scalar("clip/max_norm"))
    if clipped.empty or max_norm.empty:
        return None
    gn = finite(run.scalar("grad_norm"))
    gn = gn[gn.index.isin(max_norm.index)] if len(gn) else gn
    return {
        "clip_rate": float(clipped.mean()),
        "clip_steps": float(len(clipped)),
        "max_norm": float(max_norm.median()),
        "preclip_norm": float(gn.median()) if len(gn) else float("nan"),
        "preclip_norm_max": float(gn.max()) if len(gn) else float("nan"),
    }


def too_high_signs(run: Run) -> list[str]:
    """Reasons, measured in this run, to think the learning rate is too high (empty: none seen)."""
    out: list[str] = []
    rise = early_rise(run)
    if rise is not None:
        ratio, step = rise
        out.append("the loss became NaN/Inf early" if not math.isfinite(ratio)
                   else f"the loss rose to {ratio:.3g}x its first logged value by step {step}")
    ur = update_ratio_per_step(run)
    if len(ur) and float(ur.max()) > UPDATE_RATIO_HIGH:
        out.append(f"update ratios ||dW||/||W|| reached {float(ur.max()):.2g} (> {UPDATE_RATIO_HIGH:g}) "
                   f"at step {int(ur.idxmax())}")
    c = clip_facts(run)
    if c is not None and c["clip_rate"] >= CLIP_RATE_HIGH and math.isfinite(c["preclip_norm"]) \
            and c["preclip_norm"] >= CLIP_FACTOR_HIGH * c["max_norm"]:
        out.append(f"gradients were clipped at {c['clip_rate']:.0%} of steps, median pre-clip norm "
                   f"{c['preclip_norm']:.3g} vs max_norm {c['max_norm']:.3g}")
    return out


LR_RAISE_WORDS = ("increase the learning rate", "raise the learning rate", "initial learning rate",
                  "lr x10", "lr×10", "learning rate by 10x")


def raises_lr(fix: str) -> bool:
    f = fix.lower()
    return any(w in f for w in LR_RAISE_WORDS)


def guard_lr_fixes(fixes: tuple[str, ...], signs: list[str], lr_text: str | None = None) -> tuple[str, ...]:
    """Drop fixes that raise the LR when the run shows it may be too high, and say why instead."""
    if not signs:
        return fixes
    kept = tuple(f for f in fixes if not raises_lr(f))
    lr = f" (peak {lr_text})" if lr_text else ""
    return kept + (f"The learning rate{lr} may be too high, not too low ({'; '.join(signs)}): "
                   "see lr-too-high before changing it",)


def log_of_probabilities(run: Run) -> str | None:
    """'log(softmax(x))' / 'log(sigmoid(x))' when a loss input was computed in two steps (the probe's
    criterion_input producer and producer_input): -inf as soon as a probability underflows to 0."""
    from trainscope.rules.detectors._common import detail, events

    for _, row in events(run, "criterion_input").iterrows():
        d = detail(row)
        prod, inp = str(d.get("producer") or ""), str(d.get("producer_input") or "")
        if prod.startswith("LogBackward") and inp.startswith(("SoftmaxBackward", "SigmoidBackward")):
            return "log(softmax(x))" if inp.startswith("Softmax") else "log(sigmoid(x))"
    return None
