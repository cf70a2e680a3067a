"""Weight initialization chosen by the nonlinearity that follows each layer (playbook 7.2, 7.10).

A Linear/Conv layer's target variance depends on what comes after it: He (2/fan_in) before ReLU,
Xavier (2/(fan_in+fan_out)) before tanh/sigmoid, LeCun (1/fan_in) before SELU or nothing. Note that
PyTorch's own default is neither: kaiming_uniform_(a=sqrt(5)) gives Var = 1/(3*fan_in), a sixth of
the He target (the StreamRec case study prints 0.50; the measured ratio is 0.17).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from trainscope.errors import TrainscopeError

SCHEMES = (
    "auto",  # he for relu-family, xavier for tanh/sigmoid, lecun for selu / no nonlinearity
    "torch_default",  # leave PyTorch's init alone
    "he_normal",
    "he_uniform",
    "xavier_normal",
    "xavier_uniform",
    "lecun_normal",
    "lecun_uniform",
    "orthogonal",
)

WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d,
         nn.InstanceNorm2d)
PASS_THROUGH = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity, nn.Flatten) + NORMS

# module type -> the name torch.nn.init.calculate_gain understands
NONLINEARITY = {
    nn.ReLU: "relu",
    nn.LeakyReLU: "leaky_relu",
    nn.GELU: "relu",  # close enough to ReLU for init purposes
    nn.SiLU: "relu",
    nn.ELU: "relu",
    nn.Tanh: "tanh",
    nn.Sigmoid: "sigmoid",
    nn.SELU: "selu",
    nn.Softmax: "linear",
    nn.LogSoftmax: "linear",
}
RELU_FAMILY = ("relu", "leaky_relu")


def following_nonlinearity(model: nn.Module) -> dict[str, str]:
    """For each weighted layer, the nonlinearity that follows it ("linear" if none).

    Walks leaf modules in registration order (the forward order for Sequential-style models),
    skipping normalization and dropout, which do not change which init fits.
    """
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    out: dict[str, str] = {}
    for i, (name, mod) in enumerate(leaves):
        if not isinstance(mod, WEIGHTED):
            continue
        nl = "linear"
        for _, nxt in leaves[i + 1 :]:
            if isinstance(nxt, PASS_THROUGH):
                continue
            nl = NONLINEARITY.get(type(nxt), "linear")
            break
        out[name] = nl
    return out


def _resolve(scheme: str, nonlinearity: str) -> str:
    if scheme != "auto":
        return scheme
    if nonlinearity in RELU_FAMILY:
        return "he_normal"
    if nonlinearity in ("tanh", "sigmoid"):
        return "xavier_normal"
    return "lecun_normal"  # selu and the output layer


def init_layer(weight: torch.Tensor, scheme: str, nonlinearity: str = "relu", mode: str = "fan_in") -> None:
    """Initialize one weight tensor in place."""
    gain_nl = nonlinearity if nonlinearity != "selu" else "linear"  # LeCun for SELU: gain 1
    if scheme == "he_normal":
        nn.init.kaiming_normal_(weight, mode=mode, nonlinearity=nonlinearity)
    elif scheme == "he_uniform":
        nn.init.kaiming_uniform_(weight, mode=mode, nonlinearity=nonlinearity)
    elif scheme == "xavier_normal":
        nn.init.xavier_normal_(weight, gain=nn.init.calculate_gain(gain_nl))
    elif scheme == "xavier_uniform":
        nn.init.xavier_uniform_(weight, gain=nn.init.calculate_gain(gain_nl))
    elif scheme in ("lecun_normal", "lecun_uniform"):
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
        fan = fan_in if mode == "fan_in" else fan_out
        std = 1.0 / math.sqrt(fan)
        with torch.no_grad():
            if scheme == "lecun_normal":
                weight.normal_(0.0, std)
            else:
                bound = math.sqrt(3.0) * std
                weight.uniform_(-bound, bound)
    elif scheme == "orthogonal":
        nn.init.orthogonal_(weight, gain=nn.init.calculate_gain(gain_nl))
    elif scheme == "torch_default":
        return
    else:
        raise TrainscopeError(f"unknown init scheme {scheme!r}; valid: {', '.join(SCHEMES)}")


def init_weights(
    model: nn.Module,
    scheme: str = "auto",
    mode: str = "fan_in",
    zero_bias: bool = True,
) -> dict[str, str]:
    """Initialize every Linear/Conv weight for the nonlinearity that follows it; returns layer -> scheme.

    zero_bias: biases to 0 (the playbook's recipe); norm layers get weight 1, bias 0.
    """
    if scheme not in SCHEMES:
        raise TrainscopeError(f"unknown init scheme {scheme!r}; valid: {', '.join(SCHEMES)}")
    if mode not in ("fan_in", "fan_out"):
        raise TrainscopeError(f"init mode must be fan_in or fan_out, not {mode!r}")
    applied: dict[str, str] = {}
    if scheme == "torch_default":
        return applied
    follows = following_nonlinearity(model)
    modules = dict(model.named_modules())
    for name, nl in follows.items():
        mod = modules[name]
        chosen = _resolve(scheme, nl)
        init_layer(mod.weight, chosen, nl, mode)
        if zero_bias and getattr(mod, "bias", None) is not None:
            nn.init.zeros_(mod.bias)
        applied[name] = chosen
    for mod in model.modules():
        if isinstance(mod, NORMS) and getattr(mod, "weight", None) is not None:
            nn.init.ones_(mod.weight)
            nn.init.zeros_(mod.bias)
    return applied


def target_variance(scheme: str, fan_in: int, fan_out: int, nonlinearity: str = "relu") -> float:
    """The variance a scheme aims for (used in tests and docs)."""
    gain = nn.init.calculate_gain(nonlinearity if nonlinearity != "selu" else "linear")
    if scheme.startswith("he"):
        return gain**2 / fan_in
    if scheme.startswith("xavier"):
        return gain**2 * 2.0 / (fan_in + fan_out)
    if scheme.startswith("lecun"):
        return 1.0 / fan_in
    if scheme == "torch_default":
        return 1.0 / (3.0 * fan_in)
    raise TrainscopeError(f"no single target variance for scheme {scheme!r}")
