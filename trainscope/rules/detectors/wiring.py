"""Silent PyTorch wiring bugs seen in real bug reports (issue 8), from the probe's facts:

- loss-shape-mismatch: criterion input and target broadcast ((N, 1) against (N,));
- parameters-not-updated: trainable parameters with no gradient, outside the optimizer, never
  changing, or weights used in forward that are not parameters of the model (a Python list);
- train-mode-during-evaluation: grad-disabled forwards of the watched model in train mode while it
  has dropout or BatchNorm;
- unshuffled-data: training batches arriving in label order.

Each reads what the probe recorded (events `criterion_input`, `parameter_status`, `foreign_weight`,
`eval_forward`; scalars `batch/target_*`), never the live model.
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np
import pandas as pd

from trainscope.rules.detectors._common import all_ranks_mask, detail, events, fmt, step_span, train_loss
from trainscope.rules.detectors.loop import REGRESSION, _criterion_inputs, _criterion_name, canonical_criterion
from trainscope.rules.finding import Finding
from trainscope.rules.registry import Context, NotApplicable, detector

ELEMENTWISE = REGRESSION + ("BCELoss", "BCEWithLogitsLoss", "KLDivLoss", "PoissonNLLLoss", "GaussianNLLLoss")


def _shape(v: Any) -> tuple[int, ...] | None:
    if not isinstance(v, (list, tuple)):
        return None
    try:
        return tuple(int(x) for x in v)
    except (TypeError, ValueError):
        return None


def _broadcast(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...] | None:
    n = max(len(a), len(b))
    a2, b2 = (1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b
    out = []
    for x, y in zip(a2, b2):
        if x != y and 1 not in (x, y):
            return None
        out.append(max(x, y))
    return tuple(out)


@detector("loss-shape-mismatch")
def loss_shape_mismatch(ctx: Context) -> Iterator[Finding]:
    for row, d in _criterion_inputs(ctx):
        crit = canonical_criterion(_criterion_name(ctx, d))
        a = _shape(d.get("input_shape") or d.get("shape"))
        b = _shape(d.get("target_shape"))
        if a is None or b is None:
            continue
        if crit not in ELEMENTWISE and not d.get("broadcast"):
            continue  # CrossEntropyLoss/NLLLoss take (N, C) against (N,) by design
        if a == b:
            continue
        out = _broadcast(a, b)
        if out is None:
            continue  # would have raised; not a silent bug
        if not d.get("broadcast") and math.prod(out) <= max(math.prod(a), math.prod(b)):
            continue  # same number of elements (e.g. (N,) vs (N, 1) squeezed by the loss): harmless
        yield ctx.finding(
            f"{crit} input {list(a)} and target {list(b)} broadcast to {list(out)}: every prediction is compared "
            f"with every target ({math.prod(out)} pairs instead of {max(math.prod(a), math.prod(b))}), so the model "
            f"learns the mean (step {int(row['step'])})",
            steps=(int(row["step"]), int(row["step"])),
            evidence={"criterion": crit, "input_shape": list(a), "target_shape": list(b), "broadcast_shape": list(out)},
            fix_values={"fix_line": "loss = criterion(output.squeeze(-1), target)" if a[-1:] == (1,)
                        else "loss = criterion(output, target.view_as(output))"},
        )
        return


def _names(v: Any) -> list[str]:
    return [str(x) for x in v] if isinstance(v, (list, tuple)) else []


@detector("parameters-not-updated")
def parameters_not_updated(ctx: Context) -> Iterator[Finding]:
    st = events(ctx.run, "parameter_status")
    fw = events(ctx.run, "foreign_weight")
    if st.empty and fw.empty:
        raise NotApplicable("no parameter_status event (recorded by an older probe, or fewer than 3 steps)")
    d = detail(st.iloc[-1]) if not st.empty else {}
    n = int(d.get("n_trainable") or 0)
    never = _names(d.get("never_grad"))
    zero = set(_names(d.get("all_zero_grad")))
    outside = _names(d.get("not_in_optimizer"))
    unchanged = [p for p in _names(d.get("unchanged")) if p not in never and p not in outside]
    # a weight whose gradient is ~1e-11 (a collapsed signal) does not change in float32 either: that
    # is vanishing-gradients' finding, not a wiring bug
    if unchanged and not ctx.run.layers.empty:
        g = ctx.run.layers.loc[all_ranks_mask(ctx.run, "grad"), ["layer", "norm"]]
        tiny = set(g.groupby("layer")["norm"].median().loc[lambda x: x < 1e-6].index.astype(str))
        unchanged = [p for p in unchanged if p.rsplit(".", 1)[0] not in tiny]
    try:
        foreign_opt = int(d.get("optimizer_foreign") or 0)
    except (TypeError, ValueError):
        foreign_opt = 0
    if n and len(zero) >= n:
        return  # every gradient is zero: zero-gradients' finding
    parts: list[str] = []
    fixes: list[str] = []
    if foreign_opt:
        parts.append(f"the optimizer holds {foreign_opt} parameter tensor(s) that are not in the model (built for a "
                     "model that was replaced?)")
        fixes.append("Build the optimizer after the final model: optimizer = torch.optim.Adam(model.parameters(), ...)")
    if outside:
        parts.append(f"{len(outside)} trainable parameter(s) are in no optimizer param group: {_list(outside)}")
        fixes.append("Pass every trainable parameter to the optimizer: torch.optim.Adam(model.parameters(), ...)")
    if never:
        parts.append(f"{len(never)} of {n or '?'} trainable parameter(s) never received a gradient: {_list(never)}")
        fixes.append("Keep the forward in torch ops (no .data, .detach(), .item() or numpy inside forward) and use "
                     "every layer you define; freeze on purpose with requires_grad_(False)")
    if unchanged:
        parts.append(f"{len(unchanged)} parameter(s) got gradients but never changed: {_list(unchanged)}")
        fixes.append("Check the param group's lr (0?) and that optimizer.step() runs after backward")
    if not fw.empty:
        fd = detail(fw.iloc[0])
        cnt = int(fd.get("count") or len(fw))
        parts.append(f"{cnt} weight tensor(s) used by {fd.get('op') or 'a weight op'} in forward are not parameters of "
                     f"the model (shapes {fd.get('shapes')}): layers kept in a Python list are never registered, "
                     "so model.parameters() and the optimizer miss them")
        fixes.append("Hold sub-layers in nn.ModuleList / nn.ModuleDict (or assign them as attributes), not in a "
                     "Python list or dict")
    if not parts or parts == [p for p in parts if "never changed" in p]:
        return  # weights that merely did not change (tiny gradients, lr 0) are other rules' business
    severe = bool(foreign_opt or outside or not fw.empty or (n and len(never) >= max(1, n // 2)))
    yield ctx.finding(
        "; ".join(parts),
        steps=(int(st.iloc[-1]["step"]), int(st.iloc[-1]["step"])) if not st.empty else None,
        evidence={"n_trainable": n or None, "never_grad": never, "not_in_optimizer": outside,
                  "unchanged": unchanged, "optimizer_foreign": foreign_opt, "foreign_weights": len(fw)},
        severity=None if severe else "warning",
        extra_fixes=fixes,
        # no model parameter in the optimizer: optimizer.zero_grad() resets none of them, so their .grad
        # piles up; that missing reset is this finding's consequence, not a second bug
        explains=("missing-zero-grad",) if n and len(outside) >= n else (),
    )


def _list(names: list[str], k: int = 4) -> str:
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


@detector("train-mode-during-evaluation")
def train_mode_during_evaluation(ctx: Context) -> Iterator[Finding]:
    ev = events(ctx.run, "eval_forward")
    if ev.empty:
        raise NotApplicable("no grad-disabled forward of the watched model recorded")
    in_train = ev[ev["value"] >= 0.5]
    if in_train.empty:
        return
    d = detail(in_train.iloc[0])
    mods = [m for m, k in (("Dropout", "has_dropout"), ("BatchNorm", "has_batchnorm")) if d.get(k)]
    effect = (f"the model has {' and '.join(mods)}: {'dropout drops units' if 'Dropout' in mods else ''}"
              f"{' and ' if len(mods) == 2 else ''}{'BatchNorm uses (and updates) batch statistics' if 'BatchNorm' in mods else ''}"
              " during evaluation, so the metrics are noisy and wrong" if mods
              else "no Dropout/BatchNorm today, so the numbers are right, but they will not be once one is added")
    step = int(in_train.iloc[0]["step"])
    what = (f"{d.get('forwards')} forwards of the model after step {step} were never backpropagated (a validation "
            "pass, without torch.no_grad()) and ran with model.training == True" if d.get("grad_enabled") else
            f"a grad-disabled forward of the model (validation/inference) ran with model.training == True at step {step}")
    yield ctx.finding(
        what + "; " + effect,
        steps=(step, int(in_train.iloc[-1]["step"])),
        evidence={"first_step": step, "modules": mods, "evals_in_train_mode": len(in_train)},
        severity=None if mods else "info",
    )


def _longest_same(values: np.ndarray) -> tuple[int, int]:
    """(number of changes, longest run) of consecutive equal values."""
    changes = int(np.sum(values[1:] != values[:-1])) if len(values) > 1 else 0
    best = cur = 1
    for a, b in zip(values[:-1], values[1:]):
        cur = cur + 1 if a == b else 1
        best = max(best, cur)
    return changes, best


@detector("unshuffled-data")
def unshuffled_data(ctx: Context) -> Iterator[Finding]:
    frac = ctx.run.scalar("batch/target_mode_frac").dropna()
    mode = ctx.run.scalar("batch/target_mode").dropna()
    mean = ctx.run.scalar("batch/target_mean").dropna()
    min_steps = int(ctx.p("min_steps"))
    if len(frac) >= min_steps and len(mode) >= min_steps:
        modes = mode.to_numpy()
        distinct = len(np.unique(modes))
        changes, longest = _longest_same(modes)
        pure = float(frac.median())
        # share of batches led by the most common majority class: ~1 for an imbalanced dataset (one
        # class leads every batch), ~1/K for K classes that take turns (sorted data)
        _, counts = np.unique(modes, return_counts=True)
        dominant = float(counts.max() / counts.sum())
        bs = ctx.run.scalar("loop/batch_size").dropna()
        batch = float(bs.median()) if len(bs) else float("nan")
        if distinct < 2 or pure < float(ctx.p("min_mode_frac")):
            return  # one class in every batch's lead (imbalance) or mixed batches: shuffled
        if dominant > float(ctx.p("max_dominant_share")):
            return  # one class leads nearly every batch: an imbalanced dataset, not an order
        if not batch >= float(ctx.p("min_batch_size")) and changes > float(ctx.p("max_change_rate")) * len(modes):
            # batches of a few samples are pure by chance; without the batch size, or with tiny batches, ask
            # for the order itself: a sorted dataset keeps one class for several consecutive batches
            return
        size = f"batches of {batch:.0f}, " if batch == batch else ""
        yield ctx.finding(
            f"training batches arrive in label order: the median batch is {pure:.0%} one class "
            f"(threshold {float(ctx.p('min_mode_frac')):.0%}; {size}{distinct} classes take turns, the most common "
            f"leading {dominant:.0%} of batches), and the batch's majority class changed {changes} times in "
            f"{len(modes)} steps (longest stretch {longest} batches of the same class)",
            steps=step_span(mode.index),
            evidence={"median_mode_frac": pure, "mode_changes": changes, "steps": len(modes), "classes": distinct,
                      "longest_run": longest, "dominant_share": dominant,
                      "batch_size": batch if batch == batch else None},
        )
        return
    if len(mean) >= min_steps:
        # float targets: batch means that drift steadily (sorted regression targets)
        v = mean.to_numpy()
        n = len(v)
        rank = pd.Series(v).rank().to_numpy()
        rho = float(np.corrcoef(rank, np.arange(n))[0, 1]) if np.std(rank) > 0 else 0.0
        lag1 = float(np.corrcoef(v[:-1], v[1:])[0, 1]) if n > 3 and np.std(v) > 0 else 0.0
        if lag1 >= float(ctx.p("min_lag1")) and abs(rho) >= 0.5:
            yield ctx.finding(
                f"the mean target of consecutive training batches is strongly correlated (lag-1 autocorrelation "
                f"{lag1:.2f} >= {float(ctx.p('min_lag1')):.2f}, rank correlation with the step {rho:.2f}): the data "
                "is sorted by target",
                steps=step_span(mean.index),
                evidence={"lag1": lag1, "rank_corr": rho, "steps": n},
            )
        return
    yield from _sawtooth(ctx)


def _sawtooth(ctx: Context) -> Iterator[Finding]:
    """Without per-batch target facts: a loss whose within-epoch profile repeats every epoch."""
    from trainscope.rules.detectors.loop import _epoch_of_steps

    t = train_loss(ctx.run)
    t = t[np.isfinite(t)]
    if len(t) < 30:
        raise NotApplicable("no per-batch target statistics and too short a loss curve for a sawtooth")
    ep = _epoch_of_steps(ctx, t.index.to_numpy())
    if ep is None:
        raise NotApplicable("no per-batch target statistics and no epochs to look for an epoch-periodic loss")
    df = pd.DataFrame({"loss": t.to_numpy(), "epoch": ep})
    sizes = df.groupby("epoch").size()
    p = int(sizes.median())
    if p < 8 or (sizes >= p).sum() < 3:
        raise NotApplicable("fewer than 3 epochs of 8+ logged steps: no sawtooth test")
    # remove the run's own descent with a running median one epoch wide: what an epoch-periodic
    # pattern leaves behind is the pattern, what a smooth decrease leaves behind is noise
    trend = df["loss"].rolling(p | 1, center=True, min_periods=max(3, p // 2)).median()
    df["loss"] = df["loss"] - trend + float(np.median(t.to_numpy()))
    full = sizes[sizes >= p].index
    if p < 8 or len(full) < 3:
        raise NotApplicable("fewer than 3 epochs of 8+ logged steps: no sawtooth test")
    prof = np.stack([df[df["epoch"] == e]["loss"].to_numpy()[:p] for e in full])
    prof = prof[:, np.isfinite(prof).all(axis=0)]
    if prof.shape[1] < 8:
        raise NotApplicable("too few steps per epoch after detrending")
    prof = prof[1:]  # the first epoch is mostly the initial descent
    if len(prof) < 2:
        raise NotApplicable("too few epochs after the first")
    # detrend each epoch (its own median) and scale by the run's level
    level = float(np.median(prof))
    if level <= 0:
        return
    x = (prof - np.median(prof, axis=1, keepdims=True)) / level
    mean_prof = x.mean(axis=0)
    resid = x - mean_prof
    # share of within-epoch variation that repeats every epoch, and its size
    explained = float(np.var(mean_prof) / max(np.var(x), 1e-30))
    corr = [np.corrcoef(x[i], x[i + 1])[0, 1] for i in range(len(x) - 1) if np.std(x[i]) > 0 and np.std(x[i + 1]) > 0]
    r = float(np.median(corr)) if corr else 0.0
    amp = float(np.percentile(mean_prof, 90) - np.percentile(mean_prof, 10))
    # a sorted dataset gives a smooth profile (neighbouring batches hold the same class); a fixed
    # order of shuffled-once data gives a rough one (each batch its own difficulty): not a sawtooth
    smooth_r = float(np.corrcoef(mean_prof[:-1], mean_prof[1:])[0, 1]) if np.std(mean_prof) > 0 else 0.0
    if r < float(ctx.p("min_profile_corr")) or amp < float(ctx.p("min_profile_amp")) or smooth_r < float(ctx.p("min_smoothness")):
        return
    yield ctx.finding(
        f"the training loss repeats the same shape every epoch (sawtooth): consecutive epochs' loss profiles "
        f"correlate {r:.2f} (>= {float(ctx.p('min_profile_corr')):.2f}), swinging {amp:.0%} of the loss level within an "
        f"epoch ({len(prof) + 1} epochs of {p} steps): batches come in the same order, likely sorted by label",
        steps=(int(t.index[0]), int(t.index[-1])),
        evidence={"profile_corr": r, "profile_amplitude": amp, "explained": explained, "steps_per_epoch": p,
                  "epochs": int(len(prof) + 1), "resid_std": float(resid.std()),
                  "profile_smoothness": smooth_r},
    )
