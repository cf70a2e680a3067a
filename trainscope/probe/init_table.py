"""The initialization table of the StreamRec case study, measured rather than assumed.

For each weight (dim >= 2) of a layer with parameters: fan_in, fan_out, actual variance, the
target for the nonlinearity that follows (He 2/fan_in for the ReLU family, Xavier 2/(fan_in+fan_out)
for tanh/sigmoid/linear), their ratio, and the named scheme whose variance best explains it.
PyTorch's default Linear/Conv init (kaiming_uniform_ with a=sqrt(5)) has Var = 1/(3*fan_in): a
ratio of 1/6 against He, not the 0.50 the case study prints.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from trainscope.families import ACTIVATION_MODULES, RELU_FAMILY, XAVIER_FAMILY  # noqa: F401 (re-exported)
from trainscope.probe import sharded
from trainscope.probe.util import module_type

# Functional calls seen during the first forward (F.relu, torch.tanh, Tensor.sigmoid, ...)
FUNCTIONAL_ACTIVATIONS = {n for n in RELU_FAMILY | XAVIER_FAMILY if n != "linear"} | {"relu_", "sigmoid_", "tanh_"}

NORM_PREFIXES = ("BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm", "LocalResponseNorm", "RMSNorm",
                 "SyncBatchNorm")
# Pass-through modules that do not change which nonlinearity follows a weight.
PASS_THROUGH = ("Dropout", "Identity", "Flatten", "Unflatten", "AlphaDropout", "MaxPool", "AvgPool",
                "AdaptiveAvgPool", "AdaptiveMaxPool")

WEIGHT_MODULES = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd)


def is_norm(module_type: str) -> bool:
    return module_type.startswith(NORM_PREFIXES)


def fans(w: torch.Tensor) -> tuple[int, int]:
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(w)
    return int(fan_in), int(fan_out)


def scheme_candidates(fan_in: int, fan_out: int) -> dict[str, float]:
    """Variance each named scheme gives for these fans."""
    return {
        "torch_default": 1.0 / (3.0 * fan_in),  # kaiming_uniform_(a=sqrt(5))
        "he": 2.0 / fan_in,
        "he_fan_out": 2.0 / fan_out,
        "xavier": 2.0 / (fan_in + fan_out),
        "lecun": 1.0 / fan_in,
    }


def best_scheme(var: float, kurtosis: float, fan_in: int, fan_out: int) -> str:
    """The scheme whose variance is within 25% of the measured one (closest in log space)."""
    if not math.isfinite(var) or var <= 0:
        return "zero" if var == 0 else "custom"
    best, best_err = "custom", math.log(1.25)
    for name, v in scheme_candidates(fan_in, fan_out).items():
        err = abs(math.log(var / v))
        if err < best_err:
            best, best_err = name, err
    if best in ("he", "he_fan_out", "xavier", "lecun"):
        # Uniform has excess kurtosis -1.2, normal 0 (truncated normal about -0.6 when tight).
        best += "_uniform" if kurtosis < -0.9 else "_normal"
    return best


@dataclass
class WeightSnapshot:
    layer: str
    param: str
    module_type: str
    fan_in: int
    fan_out: int
    var: float
    mean: float
    kurtosis: float


def snapshot_weights(model: nn.Module) -> list[WeightSnapshot]:
    """Measure every weight (dim >= 2) of Linear/Conv-like layers; one host copy in total."""
    entries = []
    for name, module in model.named_modules():
        w = getattr(module, "weight", None)
        if not isinstance(w, torch.Tensor) or w.dim() < 2 or isinstance(module, nn.Embedding):
            continue
        if is_norm(module_type(module)):
            continue
        entries.append((name, module, w))
    if not entries:
        return []
    stats = []
    for _, _, w in entries:
        x = sharded.local(w).detach().float().reshape(-1)  # FSDP2: the rank's rows of the weight
        var, mean = torch.var_mean(x)
        z = (x - mean) / var.clamp_min(1e-30).sqrt()
        stats.append(torch.stack([var, mean, (z**4).mean() - 3.0]))
    host = torch.stack([s.cpu() for s in stats]).tolist()
    out = []
    for (name, module, w), (var, mean, kurt) in zip(entries, host):
        fi, fo = fans(w)
        out.append(WeightSnapshot(name, f"{name}.weight" if name else "weight", module_type(module),
                                  fi, fo, var, mean, kurt))
    return out


def following_nonlinearity(trace: list[tuple[str, str, str]], layer: str) -> tuple[str, bool]:
    """From the first-forward trace [(what, name, type)], the nonlinearity after `layer`.

    what is "weight" (a leaf with a weight ran), "module" (another leaf module ran) or "fn" (a
    functional activation ran). Scanning stops at the next layer with weights; a normalization on
    the way is noted (it rescales the output anyway).
    """
    idx = next((i for i, (what, name, _) in enumerate(trace) if what == "weight" and name == layer), None)
    if idx is None:
        return "unknown", False
    normalized = False
    for what, name, typ in trace[idx + 1:]:
        if what == "fn":
            return name.rstrip("_"), normalized
        if what == "module" and typ in ACTIVATION_MODULES:
            return ACTIVATION_MODULES[typ], normalized
        if is_norm(typ):
            normalized = True
            continue
        if what == "weight":
            break
        if typ.startswith(PASS_THROUGH):
            continue
        break
    return "linear", normalized


def init_rows(snaps: list[WeightSnapshot], trace: list[tuple[str, str, str]], order: dict[str, int]) -> dict[str, list]:
    cols: dict[str, list] = {k: [] for k in ("layer", "param", "module_type", "order", "fan_in", "fan_out", "var",
                                             "mean", "nonlinearity", "target_scheme", "target_var", "ratio", "scheme",
                                             "normalized_after")}
    for s in snaps:
        nl, normalized = following_nonlinearity(trace, s.layer) if trace else ("unknown", False)
        if nl in RELU_FAMILY:
            target_scheme, target = "he", 2.0 / s.fan_in
        else:
            target_scheme, target = "xavier", 2.0 / (s.fan_in + s.fan_out)
        cols["layer"].append(s.layer)
        cols["param"].append(s.param)
        cols["module_type"].append(s.module_type)
        cols["order"].append(order.get(s.layer, -1))
        cols["fan_in"].append(s.fan_in)
        cols["fan_out"].append(s.fan_out)
        cols["var"].append(s.var)
        cols["mean"].append(s.mean)
        cols["nonlinearity"].append(nl)
        cols["target_scheme"].append(target_scheme)
        cols["target_var"].append(target)
        cols["ratio"].append(s.var / target if target > 0 else float("nan"))
        cols["scheme"].append(best_scheme(s.var, s.kurtosis, s.fan_in, s.fan_out))
        cols["normalized_after"].append(bool(normalized))
    return cols
