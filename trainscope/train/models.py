"""MLP builder and the case-study models.

Block order is Linear -> Norm -> Activation -> Dropout (playbook 7.3/7.4 and the module's "BatchNorm
before Dropout"): dropout sits after the nonlinearity, never in front of a normalization layer, and
never on the output.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from trainscope.errors import TrainscopeError
from trainscope.train.init import init_weights

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "selu": nn.SELU,
}
NORMS = ("none", "batch", "layer", "group")
OUTPUTS = ("none", "softmax", "sigmoid")


def _norm(kind: str, width: int, groups: int) -> nn.Module | None:
    if kind == "none":
        return None
    if kind == "batch":
        return nn.BatchNorm1d(width)
    if kind == "layer":
        return nn.LayerNorm(width)
    if kind == "group":
        g = min(groups, width)
        while width % g:  # GroupNorm needs the width to divide evenly
            g -= 1
        return nn.GroupNorm(g, width)
    raise TrainscopeError(f"unknown norm {kind!r}; valid: {', '.join(NORMS)}")


def build_mlp(
    input_dim: int,
    hidden: Sequence[int],
    output_dim: int,
    activation: str = "relu",
    norm: str = "none",
    dropout: float | Sequence[float] = 0.0,
    init: str = "torch_default",
    output_activation: str = "none",
    groups: int = 8,
) -> nn.Sequential:
    """An MLP as one nn.Sequential (module names "0", "1", ... in forward order).

    dropout: one rate for every hidden block or one per hidden block.
    output_activation: "softmax"/"sigmoid" exist only to reproduce bugs (a softmax in front of
    CrossEntropyLoss); losses in trainscope expect raw logits.
    """
    if activation not in ACTIVATIONS:
        raise TrainscopeError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
    if output_activation not in OUTPUTS:
        raise TrainscopeError(f"unknown output activation {output_activation!r}; valid: {', '.join(OUTPUTS)}")
    hidden = [int(h) for h in hidden]
    if any(h <= 0 for h in hidden) or input_dim <= 0 or output_dim <= 0:
        raise TrainscopeError(f"layer widths must be positive: {input_dim} -> {hidden} -> {output_dim}")
    rates = [float(dropout)] * len(hidden) if isinstance(dropout, (int, float)) else [float(r) for r in dropout]
    if len(rates) != len(hidden):
        raise TrainscopeError(f"dropout has {len(rates)} rates for {len(hidden)} hidden layers")
    if any(not 0.0 <= r < 1.0 for r in rates):
        raise TrainscopeError(f"dropout rates must be in [0, 1): {rates}")
    layers: list[nn.Module] = []
    prev = input_dim
    for width, rate in zip(hidden, rates):
        layers.append(nn.Linear(prev, width))
        norm_layer = _norm(norm, width, groups)
        if norm_layer is not None:
            layers.append(norm_layer)
        layers.append(ACTIVATIONS[activation]())
        if rate > 0:
            layers.append(nn.Dropout(rate))
        prev = width
    layers.append(nn.Linear(prev, output_dim))
    if output_activation == "softmax":
        layers.append(nn.Softmax(dim=1))
    elif output_activation == "sigmoid":
        layers.append(nn.Sigmoid())
    model = nn.Sequential(*layers)
    init_weights(model, init)
    return model


STREAMREC_HIDDEN = (512, 256, 128, 64)


def streamrec_mlp(
    variant: str = "baseline", input_dim: int = 128, hidden: Sequence[int] = STREAMREC_HIDDEN
) -> nn.Sequential:
    """The StreamRec click MLP of case study 000, at each step of its progression.

    baseline: default init, no norm, no dropout; he: + He init; bn: + BatchNorm; regularized and
    full: + dropout (0.3, 0.3, 0.2, 0.1 as in the case study, padded/truncated to the depth).
    """
    drop = ([0.3, 0.3, 0.2, 0.1] + [0.1] * len(hidden))[: len(hidden)]
    specs = {
        "baseline": dict(init="torch_default", norm="none", dropout=0.0),
        "he": dict(init="he_normal", norm="none", dropout=0.0),
        "bn": dict(init="he_normal", norm="batch", dropout=0.0),
        "regularized": dict(init="he_normal", norm="batch", dropout=drop),
        "full": dict(init="he_normal", norm="batch", dropout=drop),
    }
    if variant not in specs:
        raise TrainscopeError(f"unknown StreamRec variant {variant!r}; valid: {', '.join(specs)}")
    return build_mlp(input_dim, hidden, 1, activation="relu", **specs[variant])  # type: ignore[arg-type]


DOC_HIDDEN = (2048, 1024, 512, 256, 128)


class DocumentClassifier(nn.Module):
    """The document classifier of case study 002: `buggy` has the sigmoid stack and the softmax output."""

    def __init__(
        self,
        input_dim: int = 5000,
        num_classes: int = 50,
        hidden: Sequence[int] = DOC_HIDDEN,
        buggy: bool = False,
        dropout_rate: float = 0.3,
    ) -> None:
        super().__init__()
        if buggy:
            self.layers = build_mlp(input_dim, hidden, num_classes, activation="sigmoid",
                                    output_activation="softmax")  # Problem! (both)
        else:
            self.layers = build_mlp(input_dim, hidden, num_classes, activation="relu", norm="batch",
                                    dropout=dropout_rate, init="he_normal")

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.layers(x)
