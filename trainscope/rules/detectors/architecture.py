"""Architecture mistakes the playbook names (issue 12 §3): dropout after the output layer, dropout
rates above 0.5, a deep stack without normalization where the run shows the harm.

These read meta.json's module list (forward order from the first forward), the dropout rates the
probe records (`tracking.modules`), and, for the harm, the per-layer gradient norms and the losses.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from trainscope.rules.detectors._common import compute_grad_norms, fmt, layer_name, modules, train_loss
from trainscope.rules.finding import Finding
from trainscope.rules.registry import Context, NotApplicable, detector
from trainscope.rules.signals import VAL_LOSS_NAMES, first_series

DROPOUT = ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout")
NORMS = ("BatchNorm", "SyncBatchNorm", "LazyBatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm", "RMSNorm",
         "LocalResponseNorm")
WEIGHT_LAYERS = ("Linear", "LazyLinear", "Bilinear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d",
                 "ConvTranspose2d", "ConvTranspose3d")


def _ordered(ctx: Context) -> list[dict[str, Any]]:
    mods = [m for m in modules(ctx.run) if str(m.get("type")) not in ("Sequential", "ModuleList", "ModuleDict")
            and m.get("name")]
    if not mods:
        raise NotApplicable("no module list in the run metadata")
    seen = [m for m in mods if isinstance(m.get("order"), int) and m["order"] >= 0]
    if not seen:
        raise NotApplicable("the module order of the first forward was not recorded")
    return sorted(seen, key=lambda m: m["order"])  # (order 0 counts: _common.modules sorts it last)


def _is_dropout(m: dict[str, Any]) -> bool:
    return str(m.get("type")).startswith(DROPOUT)


def _dropout_rates(ctx: Context) -> dict[str, float]:
    rates = ((ctx.run.meta.get("tracking") or {}).get("modules") or {}).get("dropout")
    if rates is None:
        raise NotApplicable("no dropout rates in meta.json (recorded by trainscope.watch since issue 12)")
    return {str(k): float(v) for k, v in rates.items()}


@detector("dropout-after-output")
def dropout_after_output(ctx: Context) -> Iterator[Finding]:
    mods = _ordered(ctx)
    last_weighted = max((i for i, m in enumerate(mods) if int(m.get("n_params") or 0) > 0), default=None)
    if last_weighted is None:
        raise NotApplicable("no layer with parameters")
    after = [m for m in mods[last_weighted + 1:] if _is_dropout(m)]
    rates = ((ctx.run.meta.get("tracking") or {}).get("modules") or {}).get("dropout") or {}
    after = [m for m in after if float(rates.get(m["name"], 1.0)) > 0]  # p=0 is a no-op
    if not after:
        return
    names = [str(m["name"]) for m in after]
    out = str(mods[last_weighted]["name"])
    p = rates.get(names[0])
    yield ctx.finding(
        f"{len(names)} Dropout layer(s) after the output layer {out}: {', '.join(names)}"
        f"{f' (p={fmt(p)})' if p is not None else ''}; the model's predictions are dropped out while training",
        layers=names,
        evidence={"dropout": names, "output_layer": out, **({"p": p} if p is not None else {})},
        fix_values={"dropout": names[0]},
    )


@detector("high-dropout-rate")
def high_dropout_rate(ctx: Context) -> Iterator[Finding]:
    rates = _dropout_rates(ctx)
    high = {k: v for k, v in rates.items() if v > ctx.p("max_rate")}
    if not high:
        return
    harm, why = False, ""
    t = train_loss(ctx.run).dropna()
    v = first_series(ctx.run, VAL_LOSS_NAMES)
    if len(t) >= 5:
        k = max(1, len(t) // 10)
        t0, t_end = float(t.iloc[:k].median()), float(t.iloc[-k:].median())
        if t0 > 0 and t_end >= 0.7 * t0:
            harm, why = True, f"the training loss stayed at {t_end / t0:.0%} of its start ({fmt(t0)} -> {fmt(t_end)})"
        if v is not None and len(v.dropna()):
            v_end = float(v.dropna().iloc[-1])
            if v_end > 0 and t_end >= ctx.p("harm_ratio") * v_end:
                harm = True
                why = (why + "; " if why else "") + (f"the final training loss {fmt(t_end)} is {t_end / v_end:.2g}x the "
                                                     f"validation loss {fmt(v_end)} (the dropped-out network cannot fit)")
    shown = ", ".join(f"{k} p={fmt(p)}" for k, p in high.items())
    yield ctx.finding(
        f"{len(high)} dropout layer(s) above {fmt(ctx.p('max_rate'))}: {shown}" + (f"; and the run shows it: {why}"
                                                                                  if harm else ""),
        severity="warning" if harm else None,
        layers=list(high),
        evidence={"rates": high, "harm": harm},
    )


@detector("no-normalization-deep-stack")
def no_normalization_deep_stack(ctx: Context) -> Iterator[Finding]:
    mods = _ordered(ctx)
    all_types = [str(m.get("type")) for m in modules(ctx.run)]
    if any(t.startswith(NORMS) or t.endswith("Norm") for t in all_types):
        return
    weighted = [m for m in mods if str(m.get("type")).startswith(WEIGHT_LAYERS) and int(m.get("n_params") or 0) > 0]
    if len(weighted) < ctx.p("min_depth"):
        return
    norms = compute_grad_norms(ctx.run)  # NotApplicable without per-layer gradient statistics
    if norms.shape[1] < 2:
        raise NotApplicable("fewer than two layers with gradients")
    first, last = norms.columns[0], norms.columns[-1]
    ratio = (norms[first] / norms[last]).replace([np.inf, -np.inf], np.nan).dropna()
    if len(ratio) < ctx.p("min_steps"):
        raise NotApplicable(f"only {len(ratio)} recorded steps with gradients")
    med = float(ratio.median())
    if med >= ctx.p("ratio_min"):
        return
    yield ctx.finding(
        f"{len(weighted)} weight layers in a row and no normalization layer; the gradient reaching the first layer "
        f"{layer_name(first)} is a median {fmt(med)} of the last layer's ({layer_name(last)}) over {len(ratio)} "
        f"recorded steps (threshold {fmt(ctx.p('ratio_min'))})",
        layers=[str(m["name"]) for m in weighted],
        steps=(int(ratio.index[0]), int(ratio.index[-1])),
        evidence={"weight_layers": len(weighted), "ratio_first_last": med, "first_layer": first, "last_layer": last},
        fix_values={"n_compute": len(weighted)},
    )
