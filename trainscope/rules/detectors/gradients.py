"""Gradient rules (playbook 7.8.3): vanishing, exploding, unstable, dead ReLU units, NaN/Inf.

Per-layer gradient norms come from the probe's `grad` rows (weight and bias of a layer together);
the global norm from the `grad_norm` scalar. Only compute layers (Linear, Conv, RNN, attention)
enter the first/last comparison: normalization and embedding parameters have their own scale.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np
import pandas as pd

from trainscope.rules.detectors._common import (
    modules,
    current_lr,
    detail,
    events,
    fmt,
    all_ranks_mask,
    compute_grad_norms,
    kind_mask,
    layer_codes,
    types_where,
    layer_name,
    pivot,
    sig1,
    step_span,
    train_loss,
)
from trainscope.families import QUARTER_SLOPE
from trainscope.rules.evidence import log_of_probabilities
from trainscope.rules.finding import Finding
from trainscope.rules.registry import Context, NotApplicable, detector
from trainscope.store import schema

DYING_RELU = ("ReLU", "ReLU6")  # units of these can die (LeakyReLU, GELU, ELU cannot)


def _quarter_slope_layers(ctx: Context, layers: list[str]) -> list[str]:
    """Which of `layers` feed a sigmoid (from the init table's nonlinearity column)."""
    init = ctx.run.init
    if init.empty or "nonlinearity" not in init or "layer" not in init:
        return []
    nl = init.drop_duplicates("layer").set_index("layer")["nonlinearity"].astype(str)
    return [lay for lay in layers if nl.get(lay, "") in QUARTER_SLOPE]


def _flow(ctx: Context) -> tuple[pd.DataFrame, str, str, pd.Series]:
    """Per-step gradient norms of compute layers and the first/last norm ratio."""
    norms = compute_grad_norms(ctx.run)
    if norms.shape[1] < 2:
        raise NotApplicable("fewer than two layers with gradients")
    min_layers = int(ctx.p("min_layers"))
    if norms.shape[1] < min_layers:
        raise NotApplicable(f"only {norms.shape[1]} layers with gradients (rule needs {min_layers})")
    if bool(norms.notna().any().any()) and bool((norms.stack().dropna() == 0).all()):
        raise NotApplicable("every recorded gradient is exactly zero (zero-gradients' finding)")
    first, last = norms.columns[0], norms.columns[-1]
    ratio = (norms[first] / norms[last]).replace([np.inf, -np.inf], np.nan).dropna()
    if len(ratio) < int(ctx.p("min_steps")):
        raise NotApplicable(f"only {len(ratio)} recorded steps with gradients")
    return norms, first, last, ratio


@detector("vanishing-gradients")
def vanishing_gradients(ctx: Context) -> Iterator[Finding]:
    norms, first, last, ratio = _flow(ctx)
    thr = float(ctx.p("ratio_min"))
    # judge the later half of the run: gradients that vanish from the start (a sigmoid stack) or
    # stop reaching the first layers later (behind a layer that died) both show there
    n = len(ratio)
    ratio = ratio.iloc[-max(int(ctx.p("min_steps")), n - n // 2):]
    low = ratio < thr
    frac = float(low.mean())
    severity = None
    if frac < float(ctx.p("sustain")):
        # a milder spread (the StreamRec case study's ~100x first/last) is worth knowing: info
        thr = float(ctx.p("info_ratio"))
        low = ratio < thr
        frac = float(low.mean())
        if frac < float(ctx.p("sustain")):
            return
        severity = "info"
    med = float(ratio[low].median())
    # layers whose gradients are starved relative to the last layer
    rel = norms.div(norms[last], axis=0).median()
    starved = [c for c in norms.columns[:-1] if rel[c] < thr] or [first]
    steps = step_span(ratio.index[low])
    # a sigmoid stack vanishes by construction: neither an init nor a normalization layer fixes it,
    # the activation does, so this finding is the root cause of those rules' findings on the same flow
    sig = _quarter_slope_layers(ctx, list(norms.columns[:-1]))
    sigmoid_stack = severity is None and len(sig) >= int(ctx.p("min_sigmoid_layers"))
    why = (f"; {len(sig)} of the layers before {layer_name(last)} feed a sigmoid, whose slope is at most 1/4: the "
           f"backward signal shrinks >= 4x at each (>= {fmt(4.0 ** len(sig))}x over {len(sig)}) whatever the init"
           if sigmoid_stack else "")
    explains: tuple[str, ...] = () if severity else ("slow-start", "loss-not-decreasing", "underfitting")
    if sigmoid_stack:
        explains += ("poor-initialization", "no-normalization-deep-stack")
    yield ctx.finding(
        f"grad norm ratio first/last layer {fmt(med)} < {fmt(thr)} ({layer_name(first)} vs {layer_name(last)}) at "
        f"{low.sum()}/{len(ratio)} recorded steps {steps[0]}-{steps[1]}{why}",
        layers=starved,
        steps=steps,
        evidence={
            "ratio_first_last": med,
            "threshold": thr,
            "first_layer": first,
            "last_layer": last,
            "first_norm": float(norms[first].median()),
            "last_norm": float(norms[last].median()),
            "frac_steps": frac,
            "sigmoid_layers": len(sig),
        },
        severity=severity,
        explains=explains,
    )


@detector("exploding-gradients")
def exploding_gradients(ctx: Context) -> Iterator[Finding]:
    try:
        norms, first, last, ratio = _flow(ctx)
    except NotApplicable:
        if ctx.run.scalar(schema.GRAD_NORM).empty:
            raise
        norms, first, last, ratio = None, "", "", pd.Series(dtype=float)
    thr = float(ctx.p("ratio_max"))
    high = ratio > thr
    if len(ratio) and float(high.mean()) >= float(ctx.p("sustain")):
        med = float(ratio[high].median())
        steps = step_span(ratio.index[high])
        yield ctx.finding(
            f"grad norm ratio first/last layer {fmt(med)} > {fmt(thr)} ({layer_name(first)} vs {layer_name(last)}) at "
            f"{high.sum()}/{len(ratio)} recorded steps {steps[0]}-{steps[1]}",
            layers=[first],
            steps=steps,
            evidence={"ratio_first_last": med, "threshold": thr, "first_layer": first, "last_layer": last,
                      "first_norm": float(norms[first].median()), "last_norm": float(norms[last].median())},
            fix_values={"lr_new": _lower_lr(ctx)},
        )
        return
    # Growth of the global norm: orders of magnitude above its early level at two samples in a row
    # (a lone spike is unstable-gradients' business). grad_norm is the norm BEFORE clipping.
    gn = ctx.run.scalar(schema.GRAD_NORM)
    finite = gn[np.isfinite(gn) & (gn > 0)]
    # Huge from the start (an 8-layer ReLU net initialized with std 1.0: norms ~1e9): no growth to
    # see, but the norm itself is absurd for any loss of ordinary scale
    nmax = float(ctx.p("norm_max"))
    if len(finite) >= 1 and float((finite >= nmax).mean()) >= float(ctx.p("sustain")):
        med = float(finite.median())
        yield ctx.finding(
            f"global grad norm (before clipping) is {fmt(med)} (median over {len(finite)} samples) >= {fmt(nmax)} at "
            f"{float((finite >= nmax).mean()):.0%} of them; largest {fmt(float(finite.max()))}",
            steps=(int(finite.index[0]), int(finite.index[-1])),
            evidence={"norm_median": med, "norm_max": float(finite.max()), "threshold": nmax,
                      "frac_steps": float((finite >= nmax).mean())},
            fix_values={"lr_new": _lower_lr(ctx)},
        )
        return
    w = int(ctx.p("window"))
    if len(finite) < 3:
        return
    k = max(1, min(w, len(finite) // 4))
    start = float(finite.iloc[:k].median())
    pairs = finite.rolling(2).min().dropna()
    if pairs.empty or start <= 0:
        return
    peak_step = int(pairs.idxmax())
    peak = float(pairs.max())
    growth = peak / start
    went_nonfinite = bool((~np.isfinite(gn[gn.index > peak_step])).any())
    if growth >= float(ctx.p("growth_max")):
        yield ctx.finding(
            f"global grad norm grew {fmt(growth)}x > {fmt(ctx.p('growth_max'))}x (median {fmt(start)} over the "
            f"first {k} samples, >= {fmt(peak)} at two samples in a row up to step {peak_step})"
            + ("; it then became NaN/Inf" if went_nonfinite else ""),
            steps=(int(finite.index[0]), peak_step),
            evidence={"growth": growth, "threshold": float(ctx.p("growth_max")), "norm_start": start,
                      "norm_peak": peak, "peak_step": peak_step, "went_nonfinite": went_nonfinite},
            fix_values={"lr_new": _lower_lr(ctx)},
        )


def _lower_lr(ctx: Context) -> str:
    lr = current_lr(ctx.run)
    return sig1(lr / 10) if lr else "a 10x smaller value"


@detector("unstable-gradients")
def unstable_gradients(ctx: Context) -> Iterator[Finding]:
    gn = ctx.run.scalar(schema.GRAD_NORM)
    if len(gn) and bool((gn[np.isfinite(gn)] == 0).all()) and bool(np.isfinite(gn).any()):
        raise NotApplicable("every gradient norm is exactly zero (zero-gradients' finding)")
    gn = gn[np.isfinite(gn) & (gn > 0)]
    if len(gn) < int(ctx.p("min_points")):
        raise NotApplicable(f"only {len(gn)} finite grad-norm values (rule needs {ctx.p('min_points')})")
    logs = np.log10(gn)
    w = int(ctx.p("window"))
    trend = logs.rolling(w, center=True, min_periods=max(3, w // 3)).median()
    resid = (logs - trend).abs().dropna()
    orders = float(ctx.p("orders"))
    swings = resid > orders
    frac = float(swings.mean())
    if frac < float(ctx.p("min_frac")):
        return
    spread = float(10 ** (logs.quantile(0.95) - logs.quantile(0.05)))
    hit = resid.index[swings]
    yield ctx.finding(
        f"global grad norm strays more than {fmt(10**orders)}x from its running median at "
        f"{frac:.0%} of steps (> {float(ctx.p('min_frac')):.0%}); 5-95% spread {fmt(spread)}x",
        steps=step_span(hit),
        evidence={"frac_swings": frac, "threshold": float(ctx.p("min_frac")), "spread_p5_p95": spread,
                  "median_norm": float(gn.median()), "max_norm": float(gn.max())},
        fix_values={"lr_new": _lower_lr(ctx)},
    )


def _all_zero_steps(g: pd.DataFrame) -> pd.Series:
    """Per recorded step (gradient rows): True when every recorded layer's gradient norm is exactly 0.

    A step counts when it has at least one non-NaN norm and none that is non-zero; counted with
    bincount over the steps (a Python function per group took seconds on a 10M-row run)."""
    steps, inv = np.unique(g["step"].to_numpy(), return_inverse=True)
    norm = g["norm"].to_numpy(dtype=np.float64, na_value=np.nan)
    seen = ~np.isnan(norm)
    n_seen = np.bincount(inv, weights=seen, minlength=len(steps))
    n_nonzero = np.bincount(inv, weights=seen & (norm != 0), minlength=len(steps))
    return pd.Series((n_seen > 0) & (n_nonzero == 0), index=pd.Index(steps, name="step"), name="norm")


def _output_relu_dead(ctx: Context) -> Finding | None:
    """The model's output comes from a ReLU (module or F.relu) and is exactly 0 for the whole batch,
    and the gradients stay exactly zero afterwards: the output unit never fires again."""
    out = events(ctx.run, "model_output")
    if out.empty:
        return None
    od = detail(out.iloc[0])
    if not str(od.get("producer") or "").startswith(("Relu", "Threshold")) or od.get("min") != 0 or od.get("max") != 0:
        return None
    per_step = _all_zero_steps(ctx.run.layers.loc[kind_mask(ctx.run, "grad"), ["step", "norm"]])
    frac = float(per_step.mean())
    if len(per_step) < int(ctx.p("min_steps")) or frac < float(ctx.p("sustain")) or not bool(per_step.iloc[-1]):
        return None
    step = int(out.iloc[0]["step"])
    f = ctx.finding(
        f"the model's output is a ReLU that never fires: every output of the batch at step {step} is exactly 0 "
        f"(shape {od.get('shape')}), and every gradient is exactly 0 at {int(per_step.sum())}/{len(per_step)} recorded "
        "steps after it: nothing flows back through a ReLU below zero",
        steps=(step, int(per_step.index[-1])),
        evidence={"output_producer": od.get("producer"), "output_min": 0.0, "output_max": 0.0,
                  "frac_zero_grad_steps": frac, "frac_dead": 1.0},
        fix_values={"lr_new": "a 10x smaller value"},
        explains=("zero-gradients", "loss-not-decreasing", "parameters-not-updated"),
    )
    # the output unit died from its start (an unlucky bias/init), not from large updates: the generic
    # LR advice does not apply, the head does
    return dataclasses.replace(f, fixes=(
        "Remove the ReLU after the output layer: a regression head ends in a plain Linear layer (or use softplus "
        "if the target must be positive)",
        "If the output must stay a ReLU, start its bias positive (nn.init.constant_(head.bias, 0.1)) or use "
        "LeakyReLU(0.01)",
    ))


@detector("dead-relu")
def dead_relu(ctx: Context) -> Iterator[Finding]:
    dead_out = _output_relu_dead(ctx)
    if dead_out is not None:
        yield dead_out
        return
    relu = kind_mask(ctx.run, "activation") & types_where(ctx.run, lambda t: t in DYING_RELU, na=False)
    if not relu.any():
        raise NotApplicable("no ReLU modules recorded")
    dead = pivot(ctx.run.layers, "frac_dead", rows=relu, codes=layer_codes(ctx.run))
    steps = dead.index.to_numpy()
    # judge the later half of the run: units that died and stayed dead, not a bad first batch
    recent = dead[dead.index >= steps[len(steps) // 2]] if len(steps) > 1 else dead
    if len(recent) < int(ctx.p("min_steps")):
        recent = dead.iloc[-int(ctx.p("min_steps")):]
    if len(recent) < int(ctx.p("min_steps")):
        raise NotApplicable(f"only {len(recent)} recorded steps with ReLU activations")
    thr = float(ctx.p("dead_frac"))
    hits = []
    for layer in recent.columns:
        col = recent[layer].dropna()
        if col.empty:
            continue
        sustained = float((col >= thr).mean())
        if sustained >= float(ctx.p("sustain")) and col.iloc[-1] >= thr:
            first_dead = dead[layer][dead[layer] >= thr]
            hits.append((layer, float(col.median()), sustained, int(first_dead.index[0])))
    if not hits:
        return
    worst = max(hits, key=lambda h: h[1])
    layers = [h[0] for h in hits]
    lr = current_lr(ctx.run)
    yield ctx.finding(
        f"{fmt(worst[1] * 100)}% of units in {layer_name(worst[0])} (ReLU) never fire (>= {thr:.0%} dead) over steps "
        f"{int(recent.index[0])}-{int(recent.index[-1])}"
        + (f"; {len(hits)} ReLU layers affected: {', '.join(layers)}" if len(hits) > 1 else ""),
        layers=layers,
        steps=(min(h[3] for h in hits), int(recent.index[-1])),
        evidence={
            "frac_dead": worst[1],
            "threshold": thr,
            "layers_dead": {h[0]: round(h[1], 4) for h in hits},
            "first_dead_step": min(h[3] for h in hits),
        },
        fix_values={"lr_new": sig1(lr / 10) if lr else "a 10x smaller value"},
    )


# Within one step a NaN travels forward (activation -> loss), then backward (grad), then into the
# weights at optimizer.step: the earliest of these at the first bad step is where to look.
CAUSAL_ORDER = {"activation": 0, "loss": 1, "grad": 2, "weight": 3}


@detector("nan-or-inf")
def nan_or_inf(ctx: Context) -> Iterator[Finding]:
    cause = log_of_probabilities(ctx.run)
    for f in _nan_or_inf(ctx):
        if cause is None:
            yield f
            continue
        # a loss computed as log(probabilities) is -inf once one probability underflows: the construction
        # is the cause whatever the LR (lr-too-high does not explain this finding then)
        fix = ("Use F.log_softmax(x, dim=1) (or CrossEntropyLoss on the logits) instead of torch.log(torch.softmax(x, 1))"
               if "softmax" in cause else
               "Use F.logsigmoid(x) (or BCEWithLogitsLoss on the logits) instead of torch.log(torch.sigmoid(x))")
        yield dataclasses.replace(
            f, message=f"{f.message}; the loss input is {cause}: a probability that underflows to 0 gives log(0) = -inf",
            fixes=(fix,) + f.fixes, evidence=f.evidence + (("cause", cause),))


def _nan_or_inf(ctx: Context) -> Iterator[Finding]:
    ev = events(ctx.run, "nonfinite")
    if not ev.empty:
        first_step = int(ev["step"].min())
        at_first = [(r, detail(r)) for _, r in ev[ev["step"] == first_step].iterrows()]
        at_first.sort(key=lambda rd: (CAUSAL_ORDER.get(str(rd[1].get("tensor")), 9), not rd[0].get("layer")))
        row, d = at_first[0]
        tensor = str(d.get("tensor") or "tensor")
        layer = str(row.get("layer") or "") or next(
            (str(r.get("layer")) for r, dd in at_first if dd.get("tensor") == tensor and r.get("layer")), "")
        where = f" in {layer_name(layer)}" if layer else ""
        value = d.get("value")
        also = sorted({str(dd.get("tensor")) for _, dd in at_first} - {tensor},
                      key=lambda t: CAUSAL_ORDER.get(t, 9))
        later = ev[ev["step"] > first_step]
        yield ctx.finding(
            f"first NaN/Inf at step {first_step}: {tensor}{where}" + (f" ({value})" if value else "")
            + (f", then {', '.join(also)} at the same step" if also else ""),
            layers=[layer] if layer else [],
            steps=(first_step, int(ev["step"].max())),
            evidence={"first_step": first_step, "tensor": tensor, "layer": layer or None,
                      "same_step": also, "later_tensors": sorted(set(
                          str(detail(r).get("tensor")) for _, r in later.iterrows()))},
            fix_values={"lr_new": _lower_lr(ctx)},
        )
        return
    found = _first_nonfinite_stat(ctx)
    if found:
        yield found


def _first_nonfinite_stat(ctx: Context) -> Finding | None:
    """Fallback without events: the earliest layer statistic, grad norm or loss that is not finite."""
    candidates: list[tuple[int, int, str, str]] = []  # (step, order, tensor, layer)
    df = ctx.run.layers
    if not df.empty:
        bad = df[(df["nonfinite"] > 0) | (~np.isfinite(df["norm"]) & df["norm"].notna())]
        if not bad.empty:
            bad = bad.sort_values(["step", "order"])
            r = bad.iloc[0]
            candidates.append((int(r["step"]), int(r["order"]), str(r["kind"]), str(r["layer"])))
    for name, tensor in ((schema.GRAD_NORM, "grad"), (None, "loss")):
        s = ctx.run.scalar(name) if name else train_loss(ctx.run)
        s = s[~np.isfinite(s)]
        if not s.empty:
            candidates.append((int(s.index[0]), 10**9, tensor, ""))
    if not candidates:
        if ctx.run.layers.empty and train_loss(ctx.run).empty:
            raise NotApplicable("no layer statistics or loss")
        return None
    step, _, tensor, layer = min(candidates)
    return ctx.finding(
        f"first NaN/Inf at step {step}: {tensor}" + (f" in {layer_name(layer)}" if layer else ""),
        layers=[layer] if layer else [],
        steps=(step, step),
        evidence={"first_step": step, "tensor": tensor, "layer": layer or None},
        fix_values={"lr_new": _lower_lr(ctx)},
    )


# Modules whose presence makes gradient spikes a known hazard that clipping is the cure for.
SEQUENCE_TYPES = ("LSTM", "GRU", "RNN", "MultiheadAttention", "TransformerEncoderLayer",
                  "TransformerDecoderLayer", "TransformerEncoder", "TransformerDecoder", "Transformer")


@detector("zero-gradients")
def zero_gradients(ctx: Context) -> Iterator[Finding]:
    """Every gradient exactly zero: degenerate data is evidence, not missing data (principle 3)."""
    status = [detail(r) for _, r in events(ctx.run, "parameter_status").iterrows()]
    g = ctx.run.layers
    g = g.loc[all_ranks_mask(ctx.run, "grad"), ["step", "norm"]] if not g.empty else g
    gn = ctx.run.scalar(schema.GRAD_NORM)
    gn = gn[np.isfinite(gn)]
    steps: tuple[int, int] | None = None
    how = ""
    if not g.empty:
        per_step = _all_zero_steps(g)
        frac = float(per_step.mean())
        if frac < float(ctx.p("min_frac")):
            return
        steps = step_span(per_step.index[per_step])
        how = f"every layer's gradient is exactly 0 at {int(per_step.sum())}/{len(per_step)} recorded steps"
    elif len(gn):
        frac = float((gn == 0).mean())
        if frac < float(ctx.p("min_frac")):
            return
        steps = step_span(gn.index[gn == 0])
        how = f"the global gradient norm is exactly 0 at {int((gn == 0).sum())}/{len(gn)} steps"
    elif status:
        last = status[-1]
        n, zero = int(last.get("n_trainable") or 0), list(last.get("all_zero_grad") or [])
        if not n or len(zero) < n:
            return
        how = f"all {n} trainable parameters had only zero gradients"
    else:
        raise NotApplicable("no gradient statistics")
    out = events(ctx.run, "model_output")
    od = detail(out.iloc[0]) if not out.empty else {}
    producer = str(od.get("producer") or "")
    cause = ""
    if od.get("requires_grad") is False or (not out.empty and producer == "" and od):
        cause = ("the model's output does not require grad: the graph was cut inside forward "
                 "(.item(), .numpy(), .detach() or .data)")
    elif producer.startswith(("Round", "Sign", "Floor", "Ceil", "Argmax", "Trunc")):
        cause = f"the output comes from {producer.replace('Backward0', '')}, whose gradient is zero everywhere"
    else:
        lo, hi = od.get("min"), od.get("max")
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo == hi:
            cause = (f"the model's output is the constant {fmt(lo)}, from a ReLU that never fires" if lo == 0 and
                     producer.startswith(("Relu", "Threshold")) else
                     f"the model's output is the constant {fmt(lo)} (e.g. a softmax over a single unit)")
    yield ctx.finding(
        how + (f"; {cause}" if cause else "") + ": no parameter can learn",
        steps=steps,
        evidence={"cause": cause or None, "output_producer": producer or None},
        fix_values={"cause_fix": _zero_fix(cause)},
    )


def _zero_fix(cause: str) -> str:
    if "graph was cut" in cause:
        return "Keep the forward in torch ops: no .item(), .numpy(), .detach() or .data between input and loss"
    if "whose gradient is zero" in cause:
        return "Apply rounding/argmax only at inference; train on the continuous output (logits)"
    if "ReLU that never fires" in cause:
        return "Remove the ReLU after the output layer: a regression head ends in a plain Linear layer"
    if "constant" in cause:
        return ("A softmax over one unit is always 1.0: use one logit with BCEWithLogitsLoss, or two with "
                "CrossEntropyLoss")
    return "Check what reaches the loss: a constant output, a cut graph or a zero-gradient op (round, sign, argmax)"


@detector("missing-gradient-clipping")
def missing_gradient_clipping(ctx: Context) -> Iterator[Finding]:
    """RNN/transformer without clipping, with gradient spikes measured (playbook 7.6)."""
    types = {str(m.get("type", "")) for m in modules(ctx.run)}
    seq = sorted(t for t in types if t in SEQUENCE_TYPES)
    if not seq:
        raise NotApplicable("no recurrent or attention modules")
    if events(ctx.run, "parameter_status").empty:
        raise NotApplicable("recorded by a probe that does not report clipping")
    if not ctx.run.scalar("clip/max_norm").empty:
        return  # clipping is there
    gn = ctx.run.scalar(schema.GRAD_NORM)
    gn = gn[np.isfinite(gn) & (gn > 0)]
    if len(gn) < int(ctx.p("min_points")):
        raise NotApplicable(f"only {len(gn)} finite grad-norm values")
    logs = np.log10(gn)
    w = int(ctx.p("window"))
    trend = logs.rolling(w, center=True, min_periods=max(3, w // 3)).median()
    resid = (logs - trend).dropna()
    spikes = resid[resid > np.log10(float(ctx.p("spike_factor")))]
    if len(spikes) < int(ctx.p("min_spikes")):
        return
    worst = int((resid).idxmax())
    yield ctx.finding(
        f"{', '.join(seq)} trained without gradient clipping, and the gradient norm spiked more than "
        f"{fmt(ctx.p('spike_factor'))}x above its running median at {len(spikes)} step(s) (largest {fmt(10 ** float(resid.max()))}x at step {worst})",
        steps=(int(spikes.index[0]), int(spikes.index[-1])),
        evidence={"modules": seq, "spikes": len(spikes), "largest_factor": float(10 ** float(resid.max())),
                  "median_norm": float(gn.median())},
    )
