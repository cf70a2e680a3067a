"""Activation families: the one place that says which nonlinearity belongs where.

The probe's init table names each layer's nonlinearity with these names (lower case, as
`torch.nn.init.calculate_gain` spells them); the rules read them back.
"""
from __future__ import annotations

# He-initialized family (variance 2/fan_in); SELU is listed here for its fan-in scaling
RELU_FAMILY = frozenset({"relu", "relu6", "leaky_relu", "rrelu", "prelu", "elu", "celu", "selu", "gelu", "silu",
                         "mish", "softplus", "hardswish"})
# Xavier/Glorot-initialized family (variance 2/(fan_in+fan_out)), "linear" = no activation
XAVIER_FAMILY = frozenset({"tanh", "sigmoid", "hardtanh", "hardsigmoid", "softsign", "softmax", "log_softmax",
                           "linear"})
# bounded hidden activations: their units saturate
SATURATING = frozenset({"tanh", "sigmoid", "hardtanh", "hardsigmoid", "softsign"})
# slope at most 1/4 everywhere: each such layer shrinks the backward signal >= 4x whatever the init
QUARTER_SLOPE = frozenset({"sigmoid", "hardsigmoid"})

# activation module class -> nonlinearity name
ACTIVATION_MODULES = {
    "ReLU": "relu", "ReLU6": "relu6", "LeakyReLU": "leaky_relu", "RReLU": "rrelu", "PReLU": "prelu",
    "ELU": "elu", "CELU": "celu", "SELU": "selu", "GELU": "gelu", "SiLU": "silu", "Mish": "mish",
    "Softplus": "softplus", "Hardswish": "hardswish", "Tanh": "tanh", "Sigmoid": "sigmoid",
    "Hardtanh": "hardtanh", "Hardsigmoid": "hardsigmoid", "Softsign": "softsign", "Softmax": "softmax",
    "LogSoftmax": "log_softmax",
}
