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

from trainscope.rules.detectors._common import fmt, layer_name, modules
from trainscope.rules.finding import Finding
from trainscope.rules.registry import Context, NotApplicable, detector

# What a bad init explains depends on its direction: a shrinking signal starves and kills units, a
# growing one saturates and blows up.
EXPLAINS_SHRINK = ("slow-start", "vanishing-gradients", "collapsed-activations", "dead-relu")
EXPLAINS_GROW = ("initial-loss-mismatch", "exploding-gradients", "saturated-activations", "unstable-gradients")

RELU_FAMILY = {"relu", "relu6", "leaky_relu", "rrelu", "prelu", "elu", "celu", "gelu", "silu", "mish",
               "softplus", "hardswish"}
SATURATING = {"tanh", "sigmoid", "hardtanh", "hardsigmoid", "softsign"}
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
            explains=EXPLAINS_SHRINK if compound < lo else EXPLAINS_GROW,
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
        what = ("constant (variance 0: every unit computes the same function)" if r["var"] <= 0
                else f"variance {fmt(r['ratio'])}x the {_target_name(r)} target (outside 1/{fmt(ext)}..{fmt(ext)}x)")
        yield ctx.finding(
            f"{layer_name(r['layer'])} weight is {what}",
            layers=list(off["layer"]),
            evidence={"ratio": float(r["ratio"]), "var": float(r["var"]), "target_var": float(r["target_var"]),
                      "scheme": str(r["scheme"]), "nonlinearity": str(r["nonlinearity"])},
            fix_values={"init_call": _init_call(str(r["nonlinearity"])), "alt_fix": alt},
            explains=EXPLAINS_SHRINK if r["var"] <= 0 or r["ratio"] < 1 else EXPLAINS_GROW,
        )
