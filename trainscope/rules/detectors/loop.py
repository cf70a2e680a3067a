"""Loop and wiring bugs (document-classifier case study, checklist, common mistakes).

These read what the probe saw at the first steps (what reached the loss, the train/eval flag at
each optimizer step, whether .grad was reset, the scheduler's call count) and the model, optimizer
and scheduler metadata, so they fire from the first recorded steps rather than after epochs of
bad curves.
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np
import pandas as pd

from trainscope.rules.detectors._common import (
    compute_mask,
    current_lr,
    detail,
    events,
    fmt,
    layer_name,
    layer_rows,
    modules,
    optimizer_meta,
    step_span,
    train_loss,
)
from trainscope.rules.finding import Finding
from trainscope.rules.registry import Context, NotApplicable, detector
from trainscope.store import schema

CE_LOSSES = ("CrossEntropyLoss",)
NLL_LOSSES = ("NLLLoss",)
DROPOUT_TYPES = ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout")
# Modules between a dropout and a batchnorm that do not change the argument (no weights).
TRANSPARENT = ("ReLU", "ReLU6", "LeakyReLU", "GELU", "SiLU", "ELU", "Tanh", "Sigmoid", "Identity", "Flatten")
NORM_BN = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "LazyBatchNorm1d", "LazyBatchNorm2d",
           "LazyBatchNorm3d")


def _criterion_input(ctx: Context) -> tuple[pd.Series, dict[str, Any]]:
    ev = events(ctx.run, "criterion_input")
    if ev.empty:
        raise NotApplicable("no criterion_input event (the probe was not given the criterion)")
    row = ev.iloc[0]
    return row, detail(row)


def _producer(d: dict[str, Any]) -> str:
    """The op that made the criterion's input, e.g. SoftmaxBackward0 (autograd node name)."""
    return str(d.get("producer") or "")


def _op(producer: str) -> str:
    """softmax | log_softmax | sigmoid | "" (anything else) from an autograd node or module name."""
    p = producer.lower().replace("_", "")
    if "logsoftmax" in p:
        return "log_softmax"
    if "softmax" in p:
        return "softmax"
    if "sigmoid" in p:
        return "sigmoid"
    return ""


def _op_name(producer: str) -> str:
    return {"softmax": "softmax", "log_softmax": "log_softmax", "sigmoid": "sigmoid"}.get(_op(producer), producer)


def _criterion_name(ctx: Context, d: dict[str, Any]) -> str:
    name = d.get("criterion") or (ctx.run.meta.get("criterion") or {}).get("class") or ""
    return str(name)


def _probabilities_into_ce(ctx: Context, d: dict[str, Any]) -> bool:
    return canonical_criterion(_criterion_name(ctx, d)) in CE_LOSSES and (
        _op(_producer(d)) == "softmax" or (bool(d.get("is_prob")) and not bool(d.get("is_log_prob"))))


@detector("softmax-before-cross-entropy")
def softmax_before_cross_entropy(ctx: Context) -> Iterator[Finding]:
    try:
        inputs = _criterion_inputs(ctx)
    except NotApplicable:
        inputs = []
    rows = [(r, d) for r, d in inputs if _probabilities_into_ce(ctx, d)]
    if not rows:
        # the validation step's own loss call (grad disabled): a softmax added only there distorts the
        # validation loss, which early stopping and checkpointing then act on
        ev = events(ctx.run, "criterion_input_eval")
        evals = [(r, detail(r)) for _, r in ev.iterrows()]
        bad = [(r, d) for r, d in evals if _probabilities_into_ce(ctx, d) and _dim1(d) != 1]
        if not inputs and not evals:
            raise NotApplicable("no criterion_input event (the probe saw no loss function)")
        if bad:
            row, d = bad[0]
            rs = d.get("row_sum_mean")
            yield ctx.finding(
                f"{canonical_criterion(_criterion_name(ctx, d))} receives probabilities in evaluation (a grad-disabled "
                f"call at step {int(row['step'])}: rows are probabilities"
                + (f", summing to {fmt(rs)}" if rs is not None else "")
                + "), while training feeds it logits: the validation loss is computed on softmax(logits) and is "
                "squashed toward a floor, so early stopping and checkpoint choices read a distorted curve",
                steps=(int(row["step"]), int(row["step"])),
                evidence={"criterion": canonical_criterion(_criterion_name(ctx, d)), "phase": "eval",
                          "is_prob": True, "row_sum_mean": rs},
                fix_values={"producer": "the softmax in the validation step"},
            )
        return
    row, d = rows[0]
    crit = canonical_criterion(_criterion_name(ctx, d))
    if crit not in CE_LOSSES:
        return
    producer = _producer(d)
    is_prob = bool(d.get("is_prob")) and not bool(d.get("is_log_prob"))
    if _op(producer) != "softmax" and not is_prob:
        return
    if _dim1(d) == 1:
        return  # a softmax over one unit: output-activation-mismatch's (constant output) case
    why = f"produced by {_op_name(producer)}" if _op(producer) == "softmax" else "rows are probabilities"
    rs = d.get("row_sum_mean")
    yield ctx.finding(
        f"{crit} receives probabilities ({why}"
        + (f", rows sum to {fmt(rs)}" if rs is not None else "")
        + f") at step {int(row['step'])}; it expects raw logits",
        layers=[str(row.get("layer") or "")] if row.get("layer") else [],
        steps=(int(row["step"]), int(row["step"])),
        evidence={"criterion": crit, "producer": producer or None, "is_prob": bool(d.get("is_prob")),
                  "row_sum_mean": rs, "num_classes": d.get("num_classes")},
        fix_values={"producer": "the final softmax"},
    )


# Functional losses (F.cross_entropy, ...) are named by the probe after the function; judge them as
# the module they stand for.
FUNCTIONAL = {"cross_entropy": "CrossEntropyLoss", "nll_loss": "NLLLoss", "binary_cross_entropy": "BCELoss",
              "binary_cross_entropy_with_logits": "BCEWithLogitsLoss", "mse_loss": "MSELoss", "l1_loss": "L1Loss",
              "smooth_l1_loss": "SmoothL1Loss", "huber_loss": "HuberLoss", "kl_div": "KLDivLoss"}
REGRESSION = ("MSELoss", "L1Loss", "SmoothL1Loss", "HuberLoss")


def canonical_criterion(name: str) -> str:
    n = str(name or "")
    short = n.rsplit(".", 1)[-1]
    return FUNCTIONAL.get(short, FUNCTIONAL.get(short.lower(), short))


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _dim1(d: dict[str, Any]) -> int | None:
    v = d.get("dim1_size")
    if v is None:
        shape = d.get("input_shape") or d.get("shape")
        if isinstance(shape, list) and len(shape) >= 2:
            v = shape[1]
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def _mismatch(crit: str, producer: str, d: dict[str, Any]) -> tuple[str, str] | None:
    """(problem, severity override or "") for what reaches the criterion, or None when it fits."""
    is_prob = bool(d.get("is_prob")) and not bool(d.get("is_log_prob"))
    is_log_prob = bool(d.get("is_log_prob"))
    op = _op(producer)
    lo, hi = _num(d.get("min")), _num(d.get("max"))
    t_lo, t_hi = _num(d.get("target_min")), _num(d.get("target_max"))
    target_integer = d.get("target_integer")
    if target_integer is None and d.get("target_dtype"):
        target_integer = str(d.get("target_dtype")).startswith(("int", "long", "uint", "bool"))
    in_unit = d.get("target_in_unit")
    if in_unit is None and t_lo is not None and t_hi is not None:
        in_unit = 0 <= t_lo and t_hi <= 1
    # class targets: integers, or floats that are all exactly 0 or 1 (a Gaussian heatmap or a soft
    # target also spans 0..1 and is a regression target); older stores lack target_binary
    hard = d.get("target_binary")
    binary_targets = t_lo is not None and t_hi is not None and t_lo >= 0 and t_hi <= 1 and (
        bool(target_integer) or (bool(hard) if hard is not None else (t_lo == 0 and t_hi == 1)))
    # 1. a softmax over a dimension of size 1 is the constant 1.0: every gradient is zero
    if op in ("softmax", "log_softmax") and _dim1(d) == 1:
        const = "1.0" if op == "softmax" else "0.0"
        return (f"{crit} receives a {op} over a dimension of size 1, which is the constant {const} whatever the "
                "input: every gradient is exactly zero", "error")
    if crit == "BCEWithLogitsLoss" and op == "sigmoid":
        return ("BCEWithLogitsLoss applies the sigmoid itself and expects raw logits, but it receives sigmoid outputs",
                "")
    if crit in CE_LOSSES and (op == "log_softmax" or is_log_prob):
        return ("CrossEntropyLoss applies log_softmax itself and expects raw logits, but it receives log-probabilities",
                "")
    if crit in NLL_LOSSES:
        if op == "softmax" or is_prob:
            return "NLLLoss expects log-probabilities (log_softmax), but it receives probabilities (softmax)", ""
        if producer and op != "log_softmax" and not is_log_prob:
            return f"NLLLoss expects log-probabilities (log_softmax), but it receives raw outputs ({producer})", ""
    # raw outputs are told by their values: a sigmoid behind a clamp or a max-pool is still in 0..1
    # (and BCELoss itself refuses values outside 0..1, so a run that trains mostly has them inside)
    outside_unit = (lo is not None and lo < 0) or (hi is not None and hi > 1)
    if crit == "BCELoss" and producer and op not in ("sigmoid", "softmax") and not is_prob and outside_unit:
        return f"BCELoss expects probabilities, but it receives raw outputs ({producer}); use BCEWithLogitsLoss", ""
    # 2. a softmax (one class per row) against multi-label targets (several 1s per row)
    if op == "softmax" and d.get("target_multi_label") and crit in ("BCELoss", "MSELoss", "BCEWithLogitsLoss"):
        return (f"{crit} compares softmax outputs (rows sum to 1: one class per sample) with multi-label targets "
                "(several 1s per row): the classes compete instead of being predicted independently", "")
    # 3. probabilities into a regression loss against class targets
    if crit in REGRESSION and (op in ("softmax", "sigmoid") or is_prob and op) and binary_targets:
        return (f"{crit} on {op or 'probability'} outputs against class targets: the gradient vanishes when the "
                "prediction is confidently wrong (use a cross-entropy loss on logits)", "warning")
    # 4. a bounded output that cannot reach the targets
    relu_out = producer.startswith(("Relu", "ReLU", "Threshold"))
    if relu_out and t_lo is not None and t_lo < 0 and crit in REGRESSION:
        return (f"the model ends in a ReLU (outputs >= 0) but the targets go down to {fmt(t_lo)}: negative targets "
                "can never be reached", "")
    if op == "sigmoid" and crit in REGRESSION and in_unit is False and t_hi is not None:
        return (f"the model ends in a sigmoid (outputs in 0..1) but the targets range {fmt(t_lo)}..{fmt(t_hi)}: "
                "they can never be reached", "")
    if op == "sigmoid" and crit == "BCELoss" and t_hi is not None and in_unit is False:
        return f"BCELoss targets range {fmt(t_lo)}..{fmt(t_hi)}, outside 0..1", ""
    return None


FIX_FOR = {
    "BCEWithLogitsLoss": "Remove the final Sigmoid from the model: BCEWithLogitsLoss takes logits "
                         "(apply torch.sigmoid only at inference)",
    "CrossEntropyLoss": "Remove the final LogSoftmax: CrossEntropyLoss takes logits (or switch the criterion "
                        "to NLLLoss and keep the LogSoftmax)",
    "NLLLoss": "Use log_softmax (nn.LogSoftmax(dim=1)) as the last op, or drop it and use CrossEntropyLoss on logits",
    "BCELoss": "Use BCEWithLogitsLoss on the raw outputs (numerically safer than sigmoid + BCELoss)",
}


def _specific_fix(problem: str, crit: str) -> str:
    if "dimension of size 1" in problem:
        return ("A softmax over one unit is always 1: for two classes use one logit with BCEWithLogitsLoss "
                "(no softmax), or two logits with CrossEntropyLoss")
    if "multi-label" in problem:
        return "Use independent sigmoids: raw logits into BCEWithLogitsLoss, one per label"
    if "class targets" in problem:
        return "Use CrossEntropyLoss (class indices) or BCEWithLogitsLoss (0/1 targets) on the raw logits"
    if "ReLU" in problem:
        return "Remove the final ReLU: a regression head ends in a plain Linear layer"
    if "sigmoid (outputs in 0..1)" in problem:
        return "Remove the final sigmoid, or scale the targets into 0..1"
    return FIX_FOR.get(crit, "Match the model's last op to what the criterion expects")


def _criterion_inputs(ctx: Context) -> list[tuple[pd.Series, dict[str, Any]]]:
    """The first criterion_input event of each (criterion, producer) the probe saw: a validation loss
    computed on softmax outputs is a second event of the same criterion."""
    ev = events(ctx.run, "criterion_input")
    if ev.empty:
        raise NotApplicable("no criterion_input event (the probe saw no loss function)")
    seen: dict[tuple[str, str], tuple[pd.Series, dict[str, Any]]] = {}
    for _, row in ev.iterrows():
        d = detail(row)
        name = canonical_criterion(_criterion_name(ctx, d))
        seen.setdefault((name, _op(_producer(d)) or _producer(d)), (row, d))
    return list(seen.values())


@detector("output-activation-mismatch")
def output_activation_mismatch(ctx: Context) -> Iterator[Finding]:
    try:
        inputs = _criterion_inputs(ctx)
    except NotApplicable:
        # no loss seen: the model's own output can still show a softmax over one unit
        out = events(ctx.run, "model_output")
        if out.empty:
            raise
        od = detail(out.iloc[0])
        shape = od.get("shape") or []
        if _op(_producer(od)) == "softmax" and isinstance(shape, list) and len(shape) >= 2 and shape[-1] == 1:
            yield ctx.finding(
                f"the model ends in a softmax over a dimension of size 1 (output shape {shape}): the constant 1.0, "
                f"so every gradient is exactly zero (step {int(out.iloc[0]['step'])})",
                steps=(int(out.iloc[0]["step"]), int(out.iloc[0]["step"])),
                evidence={"producer": _producer(od), "shape": shape},
                fix_values={"specific_fix": _specific_fix("dimension of size 1", "")},
                explains=("zero-gradients",),
            )
        return
    for row, d in inputs:
        crit = canonical_criterion(_criterion_name(ctx, d))
        producer = _producer(d)
        got = _mismatch(crit, producer, d)
        if got is None:
            continue
        problem, sev = got
        yield ctx.finding(
            f"{problem} (last op {_op_name(producer) or 'unknown'}, step {int(row['step'])})",
            steps=(int(row["step"]), int(row["step"])),
            evidence={"criterion": crit, "producer": producer or None, "is_prob": bool(d.get("is_prob")),
                      "is_log_prob": bool(d.get("is_log_prob")), "min": d.get("min"), "max": d.get("max"),
                      "target_min": d.get("target_min"), "target_max": d.get("target_max"),
                      "dim1_size": _dim1(d)},
            fix_values={"specific_fix": _specific_fix(problem, crit)},
            severity=sev or None,
            explains=("zero-gradients",) if "size 1" in problem else (),
        )
        return


def _loop_scalar(ctx: Context, name: str) -> pd.Series:
    s = ctx.run.scalar(name)
    if s.empty:
        raise NotApplicable(f"no {name} scalar (not recorded by the trainscope probe)")
    return s


@detector("eval-mode-during-training")
def eval_mode_during_training(ctx: Context) -> Iterator[Finding]:
    training = _loop_scalar(ctx, schema.LOOP_TRAINING)
    evals = training[training < 0.5]
    frac = len(evals) / len(training)
    if evals.empty or frac < float(ctx.p("min_frac")):
        return
    types = {str(m.get("type", "")) for m in modules(ctx.run)}
    affected = sorted(t for t in types if t.startswith(("Dropout", "BatchNorm", "AlphaDropout", "SyncBatchNorm",
                                                          "InstanceNorm")))
    effect = (f"the model has {', '.join(affected)}, which behave differently in eval mode" if affected
              else "no Dropout/BatchNorm today, so the damage is latent until one is added")
    yield ctx.finding(
        f"model was in eval mode at {len(evals)}/{len(training)} optimizer steps ({frac:.0%} >= "
        f"{float(ctx.p('min_frac')):.0%}), first at step {int(evals.index[0])}; {effect}",
        steps=(int(evals.index[0]), int(evals.index[-1])),
        evidence={"frac_eval_steps": frac, "threshold": float(ctx.p("min_frac")), "first_step": int(evals.index[0]),
                  "mode_sensitive_modules": affected},
        severity=None if affected else "warning",
        # only a model whose modules behave differently in eval mode can have its curves explained by it
        explains=("overfitting", "loss-not-decreasing", "divergence", "underfitting") if affected else (),
    )


@detector("missing-zero-grad")
def missing_zero_grad(ctx: Context) -> Iterator[Finding]:
    reset = _loop_scalar(ctx, schema.LOOP_GRAD_RESET)
    backwards = ctx.run.scalar(schema.LOOP_BACKWARDS)
    # the first step starts from .grad None: it says nothing about the loop
    reset = reset.iloc[1:]
    if len(reset) < int(ctx.p("min_steps")):
        raise NotApplicable(f"only {len(reset)} optimizer steps after the first")
    stale = reset[reset < 0.5]
    frac = len(stale) / len(reset)
    if frac < float(ctx.p("min_frac")):
        return
    bw = backwards.reindex(stale.index).dropna()
    accum = float(bw.median()) if not bw.empty else float("nan")
    if np.isfinite(accum) and accum > 1:
        pattern = (f"{fmt(accum)} backward passes per optimizer step and .grad is never cleared between "
                   "optimizer steps: accumulation without a reset")
    else:
        pattern = "one backward per optimizer step, so gradients of all past batches add up"
    yield ctx.finding(
        f".grad was not reset before backward at {len(stale)}/{len(reset)} optimizer steps ({frac:.0%} >= "
        f"{float(ctx.p('min_frac')):.0%}), from step {int(stale.index[0])}; {pattern}",
        steps=step_span(stale.index),
        evidence={"frac_not_reset": frac, "threshold": float(ctx.p("min_frac")),
                  "backwards_per_step": accum if np.isfinite(accum) else None},
    )


@detector("adam-l2-weight-decay")
def adam_l2_weight_decay(ctx: Context) -> Iterator[Finding]:
    opt = optimizer_meta(ctx.run)
    if not opt:
        raise NotApplicable("no optimizer metadata")
    cls = str(opt.get("class") or "")
    if cls not in ("Adam", "Adamax", "NAdam", "RAdam"):
        return
    defaults = opt.get("defaults") or {}
    if defaults.get("decoupled_weight_decay"):
        return  # Adam(decoupled_weight_decay=True) is AdamW
    def as_float(v: Any) -> float:
        try:
            return float(v or 0)
        except (TypeError, ValueError):
            return 0.0

    wds = [as_float(g.get("weight_decay")) for g in opt.get("param_groups") or []] or [
        as_float(defaults.get("weight_decay"))]
    wd = max(wds)
    if wd <= 0:
        return
    lr = current_lr(ctx.run)
    yield ctx.finding(
        f"{cls} with weight_decay={fmt(wd)} adds an L2 term to the gradient, which the adaptive step rescales; "
        "the decay is not decoupled",
        evidence={"optimizer": cls, "weight_decay": wd, "lr": lr},
        fix_values={"lr": fmt(lr) if lr else "...", "weight_decay": fmt(wd)},
    )


# scheduler class -> (horizon parameter, cadence it is designed for)
# (LinearLR/ConstantLR are left out: once their horizon is spent they hold the LR constant, so a
# short warmup stepped per batch is harmless.)
EPOCH_STYLE = {"StepLR": "step_size", "MultiStepLR": "milestones", "ExponentialLR": None,
               "CosineAnnealingLR": "T_max", "PolynomialLR": "total_iters"}
BATCH_STYLE = {"OneCycleLR": "total_steps", "CyclicLR": None}


def _horizon(cls: str, params: dict[str, Any]) -> float | None:
    if cls == "OneCycleLR":
        total = params.get("total_steps")
        if total is None and params.get("epochs") and params.get("steps_per_epoch"):
            total = params["epochs"] * params["steps_per_epoch"]
        return float(total) if total else None
    key = EPOCH_STYLE.get(cls)
    if key is None:
        return None
    v = params.get(key)
    if isinstance(v, (list, tuple)):
        v = max(v) if v else None
    try:
        return float(v) if v is not None else None
    except (TypeError, ValueError):
        return None


@detector("scheduler-step-cadence")
def scheduler_step_cadence(ctx: Context) -> Iterator[Finding]:
    sched = ctx.run.meta.get("scheduler") or {}
    if not sched:
        # principle 5: the LR trace tells the schedule, whether or not a scheduler was handed to the
        # probe (built before watch(), or a hand-written schedule writing param_group['lr'])
        yield from _cadence_from_trace(ctx)
        return
    cls = str(sched.get("class") or "")
    params = dict(sched.get("params") or {})
    steps = _loop_scalar(ctx, schema.LOOP_SCHEDULER_STEPS)
    n_opt = len(steps)
    s_total = float(steps.iloc[-1]) - float(steps.iloc[0]) + 1 if n_opt else 0.0
    epochs = events(ctx.run, "epoch")
    n_epochs = int(epochs["value"].nunique()) if not epochs.empty else 0
    if n_opt < int(ctx.p("min_steps")) or s_total <= 0:
        return
    per_batch = s_total >= 0.9 * n_opt
    # once per epoch: matches the logged epochs, or (epochs not logged) far rarer than optimizer steps
    per_epoch = (n_epochs >= 2 and abs(s_total - n_epochs) <= 1 and n_opt >= 2 * n_epochs) or (
        n_epochs < 2 and 2 <= s_total <= n_opt / 5)
    horizon = _horizon(cls, params)
    lr = ctx.run.scalar("lr/0")
    lr_note = f"; lr went {fmt(lr.iloc[0])} -> {fmt(lr.iloc[-1])}" if len(lr) else ""
    ev = {"scheduler": cls, "scheduler_steps": s_total, "optimizer_steps": n_opt, "epochs": n_epochs,
          "horizon": horizon, "lr_first": float(lr.iloc[0]) if len(lr) else None,
          "lr_last": float(lr.iloc[-1]) if len(lr) else None}
    spe = n_opt / n_epochs if n_epochs >= 2 else (n_opt / s_total if per_epoch else float("nan"))
    if per_epoch and cls in BATCH_STYLE and (horizon is None or horizon > 2 * s_total):
        yield ctx.finding(
            f"{cls} (horizon {fmt(horizon) if horizon else 'in batches'}) stepped once per epoch: "
            f"{fmt(s_total)} scheduler steps for {n_opt} optimizer steps over {n_epochs} epochs{lr_note}",
            steps=(int(steps.index[0]), int(steps.index[-1])),
            evidence=ev,
            fix_values={"where": "after every optimizer.step() (inside the batch loop)",
                        "cls": cls, "steps_per_epoch": fmt(spe)},
        )
        return
    if per_epoch and cls == "CosineAnnealingLR" and horizon is not None and horizon >= n_opt and spe >= 10:
        yield ctx.finding(
            f"CosineAnnealingLR T_max={fmt(horizon)} looks like a count of batches (>= the {n_opt} optimizer steps "
            f"so far) but it is stepped once per epoch ({fmt(s_total)} steps over {n_epochs} epochs): the LR barely "
            f"decays{lr_note}",
            steps=(int(steps.index[0]), int(steps.index[-1])),
            evidence=ev,
            fix_values={"where": "after every optimizer.step(), or set T_max to the number of epochs",
                        "cls": cls, "steps_per_epoch": fmt(spe)},
        )
        return
    if per_batch and cls in EPOCH_STYLE and n_epochs >= 1 and spe >= 2:
        if horizon is not None and horizon * float(ctx.p("horizon_factor")) <= s_total:
            yield ctx.finding(
                f"{cls} ({EPOCH_STYLE[cls]}={fmt(horizon)}) stepped every batch: its horizon is spent "
                f"{fmt(s_total / horizon)}x over within {n_opt} optimizer steps ({n_epochs} epochs){lr_note}",
                steps=(int(steps.index[0]), int(steps.index[-1])),
                evidence=ev,
                fix_values={"where": "once per epoch, after the batch loop",
                            "cls": cls, "steps_per_epoch": fmt(spe)},
            )
            return
        if cls == "ExponentialLR" and len(lr) and lr.iloc[0] > 0 and lr.iloc[-1] / lr.iloc[0] < 1e-4:
            yield ctx.finding(
                f"ExponentialLR stepped every batch: {fmt(s_total)} decays in {n_epochs} epochs{lr_note}",
                steps=(int(steps.index[0]), int(steps.index[-1])),
                evidence=ev,
                fix_values={"where": "once per epoch, after the batch loop",
                            "cls": cls, "steps_per_epoch": fmt(spe)},
            )


def _epoch_of_steps(ctx: Context, steps: np.ndarray) -> np.ndarray | None:
    """The epoch each optimizer step falls in, from epoch events or the scalars' epoch column."""
    ev = events(ctx.run, "epoch")
    if len(ev) >= 2:
        starts = ev.drop_duplicates("value").sort_values("step")
        idx = np.searchsorted(starts["step"].to_numpy(), steps, side="right") - 1
        return starts["value"].to_numpy(dtype=float)[np.clip(idx, 0, len(starts) - 1)]
    df = ctx.run.scalars
    if "epoch" in df:
        e = df.dropna(subset=["epoch"]).drop_duplicates("step").set_index("step")["epoch"].sort_index()
        if e.nunique() >= 2:
            return e.reindex(steps, method="ffill").to_numpy(dtype=float)
    return None


def _cadence_from_trace(ctx: Context) -> Iterator[Finding]:
    lr = ctx.run.scalar("lr/0")
    # an LR of exactly 0 is a value of the schedule (cosine to eta_min=0, warmup from 0), not a gap
    lr = lr[np.isfinite(lr) & (lr >= 0)] if len(lr) else lr
    if len(lr) < int(ctx.p("min_steps")):
        raise NotApplicable("no scheduler given to the probe and no LR trace (lr/0) to infer one from")
    v = lr.to_numpy(dtype=float)
    steps = lr.index.to_numpy()
    changes = np.flatnonzero(~np.isclose(v[1:], v[:-1], rtol=1e-9, atol=0)) + 1
    epochs = _epoch_of_steps(ctx, steps)
    n_epochs = int(len(np.unique(epochs))) if epochs is not None else 0
    peak = float(v.max())
    groups = (ctx.run.meta.get("optimizer") or {}).get("param_groups") or []
    max_lr = max((float(g["max_lr"]) for g in groups if isinstance(g, dict)
                  and isinstance(g.get("max_lr"), (int, float)) and g["max_lr"] > 0), default=None)
    ev = {"scheduler": "inferred from the LR trace", "lr_changes": int(len(changes)), "optimizer_steps": int(len(v)),
          "epochs": n_epochs, "lr_peak": peak, "lr_last": float(v[-1]), "max_lr": max_lr}
    spe = len(v) / n_epochs if n_epochs >= 2 else float("nan")
    # 1. an epoch schedule stepped every batch: the LR changes within epochs and collapses early
    # after the peak: a warmup that starts near 0 is not a collapse
    top = int(np.argmax(v >= 0.99 * peak))  # the first time it reaches its peak (cycles repeat it)
    collapse = np.flatnonzero(v <= float(ctx.p("collapse")) * peak)
    collapse = collapse[collapse > top]
    if peak > 0 and len(collapse) and collapse[0] < 0.5 * len(v) and len(changes) >= 3:
        at = int(collapse[0])
        within = (n_epochs >= 1 and epochs is not None
                  and len(np.unique(epochs[changes])) < len(changes))  # several changes in one epoch
        if within or n_epochs == 0:
            yield ctx.finding(
                f"the LR (trace lr/0, no scheduler given to the probe) changed at {len(changes)} of {len(v)} optimizer "
                f"steps and fell to {fmt(float(v[at]))}, {fmt(float(v[at]) / peak)}x its peak {fmt(peak)}, by step "
                f"{int(steps[at])} ({at / len(v):.0%} of the run)"
                + (f": a schedule meant for epochs stepped every batch ({n_epochs} epochs)" if n_epochs >= 1 else ""),
                steps=(int(steps[0]), int(steps[at])),
                evidence=ev,
                fix_values={"where": "once per epoch, after the batch loop",
                            "cls": "the scheduler", "steps_per_epoch": fmt(spe) if np.isfinite(spe) else "N"},
            )
            return
    # 2. a batch schedule (OneCycle) stepped once per epoch: it never gets near max_lr
    if max_lr and n_epochs >= 2 and peak < 0.5 * max_lr and len(changes) >= 1 and epochs is not None:
        per_epoch = len(np.unique(epochs[changes])) == len(changes)
        if per_epoch and len(v) >= 2 * n_epochs:
            yield ctx.finding(
                f"the LR peaked at {fmt(peak)}, {fmt(peak / max_lr)}x the param groups' max_lr {fmt(max_lr)}, changing "
                f"only once per epoch ({len(changes)} changes over {n_epochs} epochs, {len(v)} optimizer steps): a "
                "per-batch schedule (OneCycleLR) stepped once per epoch",
                steps=(int(steps[0]), int(steps[-1])),
                evidence=ev,
                fix_values={"where": "after every optimizer.step() (inside the batch loop)",
                            "cls": "OneCycleLR", "steps_per_epoch": fmt(spe)},
            )


@detector("batchnorm-small-batch")
def batchnorm_small_batch(ctx: Context) -> Iterator[Finding]:
    thr = int(ctx.p("min_batch"))
    has_bn = any(str(m.get("type", "")).startswith(NORM_BN) for m in modules(ctx.run))
    ev = events(ctx.run, "batchnorm_batch")
    if ev.empty and not has_bn:
        raise NotApplicable("no BatchNorm layers")
    small = ev[ev["value"] < thr]
    layers = list(dict.fromkeys(str(x) for x in small["layer"] if x))
    # BN layers see only recorded steps; the batch size of every step (in train mode) fills the gaps
    bs = ctx.run.scalar(schema.LOOP_BATCH_SIZE)
    training = ctx.run.scalar(schema.LOOP_TRAINING)
    if has_bn and not bs.empty:
        in_train = bs[training.reindex(bs.index).fillna(1.0) >= 0.5] if not training.empty else bs
        small_steps = in_train[in_train < thr]
    else:
        small_steps = bs.iloc[0:0]
    if small.empty and small_steps.empty:
        return
    sizes = list(small["value"]) + list(small_steps.values)
    smallest = int(min(sizes))
    steps = list(small["step"]) + list(small_steps.index)
    typical = float(bs.median()) if not bs.empty else float("nan")
    frac = len(small_steps) / len(bs) if len(bs) else float("nan")
    only_tail = np.isfinite(typical) and typical >= thr
    if not layers:
        layers = [str(m.get("name")) for m in modules(ctx.run) if str(m.get("type", "")).startswith(NORM_BN)]
    if only_tail:
        msg = (f"BatchNorm in train mode saw a batch of {smallest} < {thr} at {len(small_steps) or len(small)} "
               f"step(s) (typical batch {fmt(typical)}: the last, incomplete batch of an epoch)")
        sev = "info"
    else:
        msg = f"BatchNorm in train mode on batches of {smallest} < {thr} (typical batch {fmt(typical)}): batch statistics are noise"
        sev = None
    yield ctx.finding(
        msg,
        layers=layers,
        steps=(int(min(steps)), int(max(steps))),
        evidence={"min_batch": smallest, "threshold": thr, "typical_batch": typical if np.isfinite(typical) else None,
                  "frac_small_steps": frac if np.isfinite(frac) else None},
        severity=sev,
    )


@detector("dropout-before-batchnorm")
def dropout_before_batchnorm(ctx: Context) -> Iterator[Finding]:
    mods = [m for m in modules(ctx.run) if not _is_container(m)]
    if not mods:
        raise NotApplicable("no module list in the run metadata")
    pairs = []
    for i, m in enumerate(mods):
        if not str(m.get("type", "")).startswith(DROPOUT_TYPES):
            continue
        for nxt in mods[i + 1:]:
            t = str(nxt.get("type", ""))
            if t.startswith(NORM_BN):
                pairs.append((str(m.get("name")), str(nxt.get("name"))))
                break
            if t.startswith(TRANSPARENT):
                continue
            break
    if not pairs:
        return
    yield ctx.finding(
        f"{len(pairs)} Dropout layer(s) feed BatchNorm directly: " + ", ".join(f"{a} -> {b}" for a, b in pairs)
        + " (BatchNorm's running variance is learned on dropped-out inputs and is wrong at eval)",
        layers=[p for pair in pairs for p in pair],
        evidence={"pairs": [list(p) for p in pairs]},
        fix_values={"dropout": pairs[0][0], "batchnorm": pairs[0][1]},
    )


def _is_container(m: dict[str, Any]) -> bool:
    t = str(m.get("type", ""))
    return t in ("Sequential", "ModuleList", "ModuleDict") or m.get("name") in ("", None)


@detector("initial-loss-mismatch")
def initial_loss_mismatch(ctx: Context) -> Iterator[Finding]:
    crit = str((ctx.run.meta.get("criterion") or {}).get("class") or "")
    ev = events(ctx.run, "criterion_input")
    d = detail(ev.iloc[0]) if not ev.empty else {}
    crit = crit or str(d.get("criterion") or "")
    n = ctx.run.meta.get("num_classes") or d.get("num_classes")
    try:
        n = int(n) if n is not None else None
    except (TypeError, ValueError):
        n = None
    if crit in ("BCEWithLogitsLoss", "BCELoss"):
        n = n if n and n > 1 else 2  # per output: two outcomes
    if crit not in CE_LOSSES + NLL_LOSSES + ("BCEWithLogitsLoss", "BCELoss"):
        raise NotApplicable(f"criterion {crit or 'unknown'} has no chance-level initial loss")
    if not n or int(n) < 2:
        raise NotApplicable("number of classes unknown")
    n = int(n)
    # the probe saw the very first loss at the criterion; else the first logged training loss
    l0, first_step = float("nan"), 0
    try:
        l0 = float(d.get("loss"))
        first_step = int(ev.iloc[0]["step"])
    except (TypeError, ValueError):
        pass
    if not math.isfinite(l0):
        loss = train_loss(ctx.run).dropna()
        if loss.empty:
            raise NotApplicable("no training loss logged")
        first_step = int(loss.index[0])
        if first_step > int(ctx.p("max_first_step")):
            raise NotApplicable(f"first training loss logged at step {first_step}, too late to be the initial loss")
        l0 = float(loss.iloc[0])
    expected = math.log(n)
    # reduction="sum" adds one chance-level term per loss element (per sample, per pixel): the
    # chance level of the summed loss is that many times ln(n)
    summed = ""
    if d.get("reduction") == "sum":
        shape = d.get("input_shape") or d.get("shape")
        if not isinstance(shape, list) or not shape:
            raise NotApplicable("loss summed over an unknown number of elements (reduction='sum')")
        elements = int(np.prod(shape)) // (n if crit in CE_LOSSES + NLL_LOSSES and len(shape) >= 2 else 1)
        expected *= max(1, elements)
        summed = f" x {elements} summed elements (reduction='sum')"
        try:
            l0 = float(d.get("loss_sum"))
        except (TypeError, ValueError):
            pass
    tol = float(ctx.p("rel_tol")) * expected
    if not math.isfinite(l0):
        return  # NaN at step 0 is nan-or-inf's finding
    if abs(l0 - expected) <= tol:
        return
    direction = "above" if l0 > expected else "below"
    hint = ("the model is confidently wrong at init: inputs unnormalized, init too large, or a last-layer bias"
            if l0 > expected else "the loss starts below chance: a label leak, wrong reduction, or mislabeled targets")
    yield ctx.finding(
        f"initial loss {fmt(l0)} at step {first_step} is {direction} ln({n}){summed} = {fmt(expected)} by "
        f"{fmt(abs(l0 - expected))} > {fmt(tol)}; {hint}",
        steps=(first_step, first_step),
        evidence={"initial_loss": l0, "expected": expected, "num_classes": n, "tolerance": tol, "criterion": crit},
        fix_values={"expected": fmt(expected), "n": n},
    )


@detector("unnormalized-inputs")
def unnormalized_inputs(ctx: Context) -> Iterator[Finding]:
    ev = events(ctx.run, "input_scale")
    if ev.empty:
        raise NotApplicable("no input_scale event")
    row = ev.iloc[0]
    d = detail(row)
    if d.get("integer") or str(d.get("dtype", "")).startswith(("torch.int", "torch.long", "int", "torch.bool")):
        raise NotApplicable("integer inputs (token ids / indices)")
    mods = [m for m in modules(ctx.run) if not _is_container(m)]
    if mods and str(mods[0].get("type", "")).startswith("Embedding"):
        raise NotApplicable("the model starts with an embedding")

    def num(key: str) -> float:
        try:
            v = float(d.get(key))
        except (TypeError, ValueError):
            return float("nan")
        return v

    mean, std, fmax = num("mean"), num("std"), num("feature_std_max")
    lo, hi = num("min"), num("max")
    limit = float(ctx.p("max_scale"))
    measures = {"|mean|": abs(mean), "std": std, "largest feature std": fmax}
    over = {k: v for k, v in measures.items() if np.isfinite(v) and v > limit}
    if not over:
        return
    key, val = max(over.items(), key=lambda kv: kv[1])
    raw_pixels = np.isfinite(hi) and 100 < hi <= 255.5 and np.isfinite(lo) and lo >= 0
    # harm: a weight layer that is fed the raw scale computes outputs of that scale at the first
    # step; a model that normalizes inside forward ((x - mean) / std before its layers) does not
    a = layer_rows(ctx.run, "activation")
    weight_layers = set(ctx.run.init["layer"].astype(str)) if not ctx.run.init.empty else set()
    if not a.empty:  # layers with weights (the init table's), else any compute module
        a = a[a["layer"].astype(str).isin(weight_layers)] if weight_layers else a[compute_mask(a["module_type"])]
    worst, worst_std = "", float("nan")
    if not a.empty and "std" in a:
        first = a[a["step"] == a["step"].min()].dropna(subset=["std"])
        if len(first):
            r = first.loc[first["std"].idxmax()]
            worst, worst_std = str(r["layer"]), float(r["std"])
    harmless = bool(np.isfinite(worst_std) and worst_std <= float(ctx.p("max_layer_std")))
    note = (f"; but every weight layer's output at the first step has std <= {fmt(worst_std)} (<= "
            f"{fmt(float(ctx.p('max_layer_std')))}): the model normalizes its input itself, or the scale does no harm"
            if harmless else f"; {layer_name(worst)} receives it: its output std is {fmt(worst_std)} at the first step"
            if worst else "")
    yield ctx.finding(
        f"model input {key} {fmt(val)} > {fmt(limit)} (mean {fmt(mean)}, std {fmt(std)}, range "
        f"{fmt(lo)}..{fmt(hi)}" + (", looks like raw 0..255 pixels" if raw_pixels else "") + ")" + note,
        steps=(int(row["step"]), int(row["step"])),
        severity="info" if harmless else None,
        evidence={"mean": mean, "std": std, "min": lo, "max": hi, "feature_std_max": fmax, "threshold": limit,
                  "largest_layer_output_std": worst_std if np.isfinite(worst_std) else None,
                  "largest_layer": worst or None},
        fix_values={"scale_hint": "divide by 255 then normalize with the dataset mean/std" if raw_pixels
                    else "standardize each feature with the training set's mean and std"},
    )
