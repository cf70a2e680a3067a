"""Initialization rule (playbook 7.2, StreamRec init table): weight variance off its target.

The probe's `init` table holds, per weight, the variance measured before training, the target
for the nonlinearity that follows (He 2/fan_in for the ReLU family, Xavier for tanh/sigmoid/linear)
and the named scheme that best explains it. What matters is the signal that reaches deep layers:
in a chain of unnormalized layers the per-layer ratios multiply (PyTorch's default Linear init,
1/6 of He, shrinks the forward variance ~6x per ReLU layer). So the rule fires on

- a chain of >= `min_chain` consecutive unnormalized hidden layers whose ratios multiply to less
  than `compound_min` (or more than `compound_max`); within `warn_factor` of that bound the finding
  is info (a 10-30x change in activation scale), beyond it a warning;
- a scheme that does not fit the nonlinearity (Xavier before ReLU, He before sigmoid/tanh) in
  >= `min_mismatch` unnormalized hidden layers;
- a single hidden layer off by `extreme` x or more, or a constant (zero-variance) weight.

It stays quiet on layers followed by a normalization (it rescales anyway), on the output layer
(a small last layer is a deliberate choice), on embeddings and on attention/transformer blocks
(their init is their own, and residual streams break the chain argument).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pandas as pd

import dataclasses

from trainscope.rules.detectors._common import (all_ranks_mask, compute_rows, fmt, kind_mask, layer_codes, layer_name,
                                                 modules, pivot, train_loss, types_where)
from trainscope.families import QUARTER_SLOPE, RELU_FAMILY, SATURATING
from trainscope.rules.finding import Finding, Severity
from trainscope.rules.signals import finite
from trainscope.rules.registry import Context, NotApplicable, detector

# What a bad init explains depends on its direction: a shrinking signal starves and kills units, a
# growing one saturates and blows up.
EXPLAINS_SHRINK = ("slow-start", "vanishing-gradients", "collapsed-activations", "dead-relu")
EXPLAINS_GROW = ("initial-loss-mismatch", "exploding-gradients", "saturated-activations", "unstable-gradients")

OWN_INIT = ("MultiheadAttention", "TransformerEncoderLayer", "TransformerDecoderLayer", "TransformerEncoder",
            "TransformerDecoder", "Transformer")

INIT_CALL = {
    "he": "nn.init.kaiming_normal_(m.weight, nonlinearity='relu')",
    "xavier_tanh": "nn.init.xavier_uniform_(m.weight, gain=nn.init.calculate_gain('tanh'))",
    "xavier": "nn.init.xavier_uniform_(m.weight)",
}


def _own_init_prefixes(ctx: Context) -> tuple[str, ...]:
    return tuple(str(m.get("name")) for m in modules(ctx.run) if str(m.get("type", "")) in OWN_INIT and m.get("name"))


def _hidden_rows(ctx: Context) -> pd.DataFrame:
    init = ctx.run.init
    if init.empty:
        raise NotApplicable("no initialization statistics")
    if "rank" in init and (init["rank"] == 0).any():
        init = init[init["rank"] == 0]
    init = init[init["order"] >= 0].sort_values("order", kind="stable")
    if init.empty:
        raise NotApplicable("no weight layer ran a forward pass before training")
    prefixes = _own_init_prefixes(ctx)
    if prefixes:
        inside = init["layer"].map(lambda n: any(n == p or n.startswith(p + ".") for p in prefixes))
        init = init[~inside]
    # the output layer: the last weight layer that runs, with nothing nonlinear of its own after it
    init = init.iloc[:-1] if len(init) and init.iloc[-1]["nonlinearity"] not in RELU_FAMILY else init
    return init.reset_index(drop=True)


def _chains(rows: pd.DataFrame) -> list[pd.DataFrame]:
    """Runs of consecutive layers with no normalization after them."""
    chains, cur = [], []
    for i, r in rows.iterrows():
        if bool(r["normalized_after"]) or r["nonlinearity"] == "unknown" or not np.isfinite(r["ratio"]):
            if cur:
                chains.append(rows.loc[cur])
            cur = []
            continue
        cur.append(i)
    if cur:
        chains.append(rows.loc[cur])
    return chains


def _init_call(nonlinearity: str) -> str:
    if nonlinearity in RELU_FAMILY:
        return INIT_CALL["he"]
    if nonlinearity == "tanh":
        return INIT_CALL["xavier_tanh"]
    return INIT_CALL["xavier"]


def _target_name(row: pd.Series) -> str:
    return "He" if row["target_scheme"] == "he" else "Xavier"


@detector("poor-initialization")
def poor_initialization(ctx: Context) -> Iterator[Finding]:
    """The init table names the smell; the severity comes from what the run measured (principle 1):
    a warning only when the forward signal, the gradients or the loss show the harm, else info."""
    for f in _smell(ctx):
        by_construction = dict(f.evidence).get("constant", False)
        harm = [] if by_construction else _harm(ctx, f)
        ev = dict(f.evidence)
        ev["harm"] = harm or None
        if by_construction or harm:
            msg = f.message + ("; measured: " + "; ".join(harm) if harm else "")
            sev = f.severity if by_construction else ctx.rule.severity
            if f.severity.value == "info" and not by_construction:
                sev = ctx.rule.severity  # a mild smell whose effect is measured is still a warning
        else:
            msg = f.message + "; no effect measured in this run (the gradients and the loss look fine; a forward change alone must pass forward_alone_min..forward_alone_max), so info"
            sev = "info"
        yield dataclasses.replace(f, message=msg, severity=Severity(sev), evidence=tuple(ev.items()),
                                  explains=f.explains if (by_construction or harm) else ())


def _nonlin_stds(ctx: Context, layers: list[str]) -> list[tuple[str, float]]:
    """Output std, at the first recorded step, of the nonlinearity following each chain layer."""
    try:
        rows = kind_mask(ctx.run, "activation")
    except NotApplicable:  # no layer statistics, or no activation rows
        return []
    step = ctx.run.layers["step"].to_numpy()
    a = ctx.run.layers[rows & (step == step[rows].min())].sort_values("order")  # the first recorded step
    nonlin = a[a["module_type"].astype(str).str.lower().isin(RELU_FAMILY | SATURATING | {"leakyrelu", "relu6"})]
    order = {str(r.layer): int(r.order) for r in ctx.run.init.itertuples()}
    out = []
    for name in layers:
        o = order.get(str(name))
        if o is None:
            continue
        after = nonlin[nonlin["order"] > o]
        if len(after):
            r = after.iloc[0]
            out.append((str(r["layer"]), float(r["std"])))
    return out


def _harm(ctx: Context, f: Finding) -> list[str]:
    """What this run measured of the smell's effect (empty: nothing)."""
    out: list[str] = []
    layers = list(f.layers)
    stds = _nonlin_stds(ctx, layers)
    fmin, fmax = float(ctx.p("forward_min")), float(ctx.p("forward_max"))
    v = float("nan")
    if len(stds) >= 2 and stds[0][1] > 0:
        v = (stds[-1][1] / stds[0][1]) ** 2
        # exactly 0 is a dead unit (every output below zero), dead-relu's evidence, not a scale the
        # init gave the signal: it must not make the init the cause of that death
        if v == 0:
            v = float("nan")
        elif v <= fmin or v >= fmax:
            out.append(f"activation variance {'shrinks' if v < 1 else 'grows'} {fmt(v)}x from {layer_name(stds[0][0])} "
                       f"to {layer_name(stds[-1][0])} at the first step (bounds {fmt(fmin)}..{fmt(fmax)})")
    elif len(stds) >= 1 and stds[0][1] == 0:
        out.append(f"{layer_name(stds[0][0])} outputs are constant at the first step")
    # gradients: first/last compute-layer norm ratio (median over recorded steps)
    g = ctx.run.layers
    if not g.empty:
        flow = all_ranks_mask(ctx.run, "grad") & compute_rows(ctx.run) & (g["order"] >= 0).to_numpy()  # every rank
        if flow.any():
            norms = pivot(g, "norm", rows=flow, codes=layer_codes(ctx.run)).dropna(axis=1, how="all")
            if norms.shape[1] >= 3:
                r = (norms.iloc[:, 0] / norms.iloc[:, -1]).replace([np.inf, -np.inf], np.nan).dropna()
                if len(r):
                    med = float(r.median())
                    if med < float(ctx.p("grad_ratio_min")):
                        out.append(f"first/last layer gradient ratio {fmt(med)} < {fmt(ctx.p('grad_ratio_min'))}")
                    elif med > float(ctx.p("grad_ratio_max")):
                        out.append(f"first/last layer gradient ratio {fmt(med)} > {fmt(ctx.p('grad_ratio_max'))}")
            sigmoid_like = types_where(ctx.run, lambda t: t in ("Sigmoid", "Tanh"), na=False)
            sat = g[all_ranks_mask(ctx.run, "activation") & sigmoid_like]
            if len(sat) and float(sat.groupby("layer")["frac_saturated"].median().max()) >= 0.5:
                out.append("sigmoid/tanh outputs saturated (>= 50% at the extremes)")
    # the loss stalled from the start: counts only where the forward signal measurably changed
    # by stall_forward or more (a mechanism), not on the init table's word alone: a 3-layer net at
    # PyTorch's default init (activation variance ~0.04x first to last) trains fine
    t = finite(train_loss(ctx.run))
    sf = float(ctx.p("stall_forward"))
    moved = np.isfinite(v) and (v <= sf or v >= 1 / sf) or (len(stds) >= 1 and stds[0][1] == 0)
    # a milder measured change (up to 10x) counts only with a much longer stall
    mild = np.isfinite(v) and (v <= 0.1 or v >= 10)
    if (moved or mild) and len(t) >= 10 and float(t.iloc[0]) > 0:
        k = max(2, len(t) // 10)
        head = float(np.median(t.to_numpy()[:k]))
        blocks = [float(np.median(t.to_numpy()[i:i + k])) for i in range(0, len(t) - k + 1, k)]
        best = min(blocks[1:]) if len(blocks) > 1 else head
        drop = (head - best) / head if head > 0 else 0.0
        if drop < float(ctx.p("min_loss_drop")) and moved:
            out.append(f"the training loss fell only {drop:.1%} (< {float(ctx.p('min_loss_drop')):.0%})")
        else:
            # a long flat start: blocks within 10% of the total decrease of the first one
            total = head - best
            near = [head - b <= 0.1 * total for b in blocks]
            flat = next((i for i, n in enumerate(near) if not n), len(near))
            need = float(ctx.p("flat_fraction")) if moved else float(ctx.p("long_flat_fraction"))
            if flat * k / len(t) >= need:
                out.append(f"the loss stayed near its start for {flat * k / len(t):.0%} of the run")
    # a first-step forward change alone is harm only when it is extreme; a milder one (a 4-layer ReLU
    # net at PyTorch's default init shrinks ~80x and trains fine) needs the gradients or the loss to agree
    alone_lo, alone_hi = float(ctx.p("forward_alone_min")), float(ctx.p("forward_alone_max"))
    if len(out) == 1 and out[0].startswith("activation variance") and np.isfinite(v) and alone_lo < v < alone_hi:
        return []
    return out


def _smell(ctx: Context) -> Iterator[Finding]:
    rows = _hidden_rows(ctx)
    if rows.empty:
        return
    sigmoid_stack = int(rows["nonlinearity"].isin(SATURATING).sum()) >= int(ctx.p("min_chain"))
    alt = ("Replace the sigmoid/tanh stack with ReLU (or GELU) and He init" if sigmoid_stack
           else "Keep the nonlinearity and re-run: trainscope checks the init table again")

    # 1. variance compounding through unnormalized chains
    lo, hi = float(ctx.p("compound_min")), float(ctx.p("compound_max"))
    for chain in _chains(rows):
        if len(chain) < int(ctx.p("min_chain")):
            continue
        compound = float(np.prod(chain["ratio"].to_numpy()))
        if lo <= compound <= hi:
            continue
        med = float(chain["ratio"].median())
        nl = str(chain["nonlinearity"].mode().iloc[0])
        schemes = ", ".join(sorted(set(chain["scheme"].astype(str))))
        target = _target_name(chain.iloc[0])
        direction = "shrinks" if compound < lo else "grows"
        # a 10-30x change in activation scale is worth knowing; beyond that it hurts training
        warn = float(ctx.p("warn_factor"))
        mild = (compound >= lo / warn) if compound < lo else (compound <= hi * warn)
        yield ctx.finding(
            f"weight variance {fmt(med)}x the {target} target (scheme {schemes}) in {len(chain)} consecutive "
            f"unnormalized layers ({layer_name(chain['layer'].iloc[0])} .. {layer_name(chain['layer'].iloc[-1])}): "
            f"forward variance "
            f"{direction} to {fmt(compound)}x ({'<' if compound < lo else '>'} {fmt(lo if compound < lo else hi)}) "
            f"by the last of them",
            layers=list(chain["layer"]),
            evidence={
                "ratio": med,
                "compound": compound,
                "threshold": lo if compound < lo else hi,
                "scheme": schemes,
                "target_scheme": str(chain["target_scheme"].iloc[0]),
                "nonlinearity": nl,
                "ratios": {r.layer: round(float(r.ratio), 4) for r in chain.itertuples()},
            },
            fix_values={"init_call": _init_call(nl), "alt_fix": alt},
            severity="info" if mild else None,
            # a sigmoid chain starves its gradients whatever the init (slope <= 1/4 per layer): the init
            # does not explain vanishing gradients there, the activation does
            explains=(tuple(x for x in EXPLAINS_SHRINK if x != "vanishing-gradients" or nl not in QUARTER_SLOPE)
                      if compound < lo else EXPLAINS_GROW),
        )
        return

    # 2. a scheme that does not fit the nonlinearity
    scheme = rows["scheme"].astype(str)
    unnorm = ~rows["normalized_after"].astype(bool)
    mismatch = unnorm & (
        (scheme.str.startswith("xavier") & rows["nonlinearity"].isin(RELU_FAMILY))
        | (scheme.str.startswith("he") & rows["nonlinearity"].isin(SATURATING))
    )
    if int(mismatch.sum()) >= int(ctx.p("min_mismatch")):
        bad = rows[mismatch]
        nl = str(bad["nonlinearity"].mode().iloc[0])
        used = str(bad["scheme"].mode().iloc[0])
        yield ctx.finding(
            f"{len(bad)} layers initialized with {used} feed {nl}: variance {fmt(bad['ratio'].median())}x the "
            f"{_target_name(bad.iloc[0])} target that {nl} needs (mismatch in >= {int(ctx.p('min_mismatch'))} layers)",
            layers=list(bad["layer"]),
            evidence={"ratio": float(bad["ratio"].median()), "scheme": used, "nonlinearity": nl,
                      "target_scheme": str(bad["target_scheme"].iloc[0]),
                      "ratios": {r.layer: round(float(r.ratio), 4) for r in bad.itertuples()}},
            fix_values={"init_call": _init_call(nl), "alt_fix": alt},
            explains=EXPLAINS_SHRINK if float(bad["ratio"].median()) < 1 else EXPLAINS_GROW,
        )
        return

    # 3. one layer wildly off, or constant
    ext = float(ctx.p("extreme"))
    off = rows[unnorm & ((rows["var"] <= 0) | (rows["ratio"] < 1 / ext) | (rows["ratio"] > ext))]
    if not off.empty:
        r = off.iloc[0]
        constant = bool(r["var"] <= 0)
        what = ("constant (variance 0: every unit computes the same function)" if r["var"] <= 0
                else f"variance {fmt(r['ratio'])}x the {_target_name(r)} target (outside 1/{fmt(ext)}..{fmt(ext)}x)")
        yield ctx.finding(
            f"{layer_name(r['layer'])} weight is {what}",
            layers=list(off["layer"]),
            evidence={"ratio": float(r["ratio"]), "var": float(r["var"]), "target_var": float(r["target_var"]),
                      "scheme": str(r["scheme"]), "nonlinearity": str(r["nonlinearity"]), "constant": constant},
            fix_values={"init_call": _init_call(str(r["nonlinearity"])), "alt_fix": alt},
            explains=EXPLAINS_SHRINK if r["var"] <= 0 or r["ratio"] < 1 else EXPLAINS_GROW,
        )
