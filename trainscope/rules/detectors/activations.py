"""Activation rules (playbook 7.8.4): outputs saturated at the extremes, or collapsed to a constant."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pandas as pd

from trainscope.rules.detectors._common import (detail, events, fmt, kind_mask, layer_codes, layer_name, pivot,
                                                 types_where)
from trainscope.rules.finding import Finding
from trainscope.rules.registry import Context, NotApplicable, detector

SATURATING = ("Sigmoid", "Tanh", "Hardsigmoid", "Hardtanh", "Softsign")
# Outputs that carry no information of their own about the layer's health.
SKIP_COLLAPSE = ("Dropout", "AlphaDropout", "FeatureAlphaDropout", "Identity", "Embedding", "EmbeddingBag",
                 "Flatten", "Unflatten",
                 "Softmax", "LogSoftmax", "Softmin")  # probabilities over many classes/keys are small by nature


def _recent(table: pd.DataFrame, min_steps: int) -> pd.DataFrame:
    """The later half of the recorded steps (at least `min_steps` of them)."""
    n = len(table)
    keep = max(min_steps, n - n // 2)
    return table.iloc[-keep:] if n else table


@detector("saturated-activations")
def saturated_activations(ctx: Context) -> Iterator[Finding]:
    acts = kind_mask(ctx.run, "activation")  # masks over run.layers, not a copy of its rows
    sat = ctx.run.layers[acts & types_where(ctx.run, lambda t: t in SATURATING, na=False)]
    if sat.empty:
        raise NotApplicable("no sigmoid/tanh modules recorded")
    # The model's own output (e.g. sigmoid before BCELoss) is allowed to be confident.
    order = ctx.run.layers["order"][acts]
    last_layer = ctx.run.layers.loc[order.idxmax(), "layer"] if (order >= 0).any() else None
    sat = sat[sat["layer"] != last_layer]
    if sat.empty:
        return
    table = pivot(sat, "frac_saturated")
    min_steps = int(ctx.p("min_steps"))
    if len(table) < min_steps:
        raise NotApplicable(f"only {len(table)} recorded steps with activations")
    recent = _recent(table, min_steps)
    thr = float(ctx.p("saturated_frac"))
    hits = []
    for layer in recent.columns:
        col = recent[layer].dropna()
        if col.empty:
            continue
        if float((col >= thr).mean()) >= float(ctx.p("sustain")):
            hits.append((layer, float(col.median())))
    if not hits:
        return
    worst = max(hits, key=lambda h: h[1])
    types = dict(zip(sat["layer"], sat["module_type"]))
    yield ctx.finding(
        f"{fmt(worst[1] * 100)}% of {layer_name(worst[0])} ({types.get(worst[0])}) outputs sit at the extremes "
        f"(>= {thr:.0%}) over steps {int(recent.index[0])}-{int(recent.index[-1])}"
        + (f"; {len(hits)} layers saturated" if len(hits) > 1 else ""),
        layers=[h[0] for h in hits],
        steps=(int(recent.index[0]), int(recent.index[-1])),
        evidence={"frac_saturated": worst[1], "threshold": thr,
                  "layers_saturated": {h[0]: round(h[1], 4) for h in hits}},
    )


@detector("collapsed-activations")
def collapsed_activations(ctx: Context) -> Iterator[Finding]:
    keep = kind_mask(ctx.run, "activation") & types_where(ctx.run, lambda t: not t.startswith(SKIP_COLLAPSE),
                                                           na=False)
    if not keep.any():
        raise NotApplicable("no activations recorded")
    std = pivot(ctx.run.layers, "std", rows=keep, codes=layer_codes(ctx.run))
    min_steps = int(ctx.p("min_steps"))
    if len(std) < min_steps:
        raise NotApplicable(f"only {len(std)} recorded steps with activations")
    recent = _recent(std, min_steps)
    ref, ref_what = _input_std(ctx)
    floor = float(ctx.p("rel_std")) * ref
    hits = []
    for layer in recent.columns:
        col = recent[layer].dropna()
        if col.empty:
            continue
        if float((col <= floor).mean()) >= float(ctx.p("sustain")):
            hits.append((layer, float(col.median())))
    if not hits:
        return
    first = hits[0]  # forward order: where the signal first disappears
    yield ctx.finding(
        f"activation std of {layer_name(first[0])} is {fmt(first[1])} <= {fmt(floor)} "
        f"({fmt(ctx.p('rel_std'))} x {ref_what} {fmt(ref)}) over steps "
        f"{int(recent.index[0])}-{int(recent.index[-1])}"
        + (f"; {len(hits)} layers collapsed" if len(hits) > 1 else ""),
        layers=[h[0] for h in hits],
        steps=(int(recent.index[0]), int(recent.index[-1])),
        evidence={"std": first[1], "threshold": floor, "reference_std": ref,
                  "layers_collapsed": {h[0]: h[1] for h in hits}},
    )


def _input_std(ctx: Context) -> tuple[float, str]:
    """Scale the collapse threshold by the input's std (from the probe, capped at 1), else 1."""
    ev = events(ctx.run, "input_scale")
    if not ev.empty:
        std = detail(ev.iloc[0]).get("std")
        try:
            std = float(std)
        except (TypeError, ValueError):
            std = float("nan")
        if np.isfinite(std) and 0 < std < 1:
            return std, "input std"
    return 1.0, "unit scale"
