"""Presets and the TOML config format of `trainscope train`.

A config is five tables plus a few top-level keys; a preset is just a config shipped with trainscope,
and a config file may start from one (`preset = "streamrec-full"`) and override any key:

    preset = "streamrec-full"     # optional base
    name = "my-run"               # optional run name
    scale = 0.25                  # data sizes and hidden widths x scale (tiny versions for tests)
    [data]      kind = "streamrec" | "documents" | "digits", plus the generator's arguments
    [model]     hidden, activation, norm, dropout, init, output_activation (see build_mlp)
    [optim]     name = "adamw" | "adam" | "sgd", lr, weight_decay, momentum, nesterov
    [schedule]  name = "constant" | "step" | "cosine" | "warmup_cosine" | "onecycle" | "cosine_restarts", ...
    [train]     epochs, batch_size, clip_norm, accumulation_steps, precision, early_stopping, patience, ...

Sizes at scale 1 are chosen to run on a laptop CPU in about a minute; they are smaller than the case
studies' production sizes (StreamRec trained on 2M rows; the document classifier on 5000-dim TF-IDF).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from trainscope.errors import TrainscopeError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from trainscope.train import data as datasets
from trainscope.train.loop import TrainConfig
from trainscope.train.models import build_mlp
from trainscope.train.optim import make_optimizer
from trainscope.train.schedules import ScheduleSpec

STREAMREC_DROPOUT = [0.3, 0.3, 0.2, 0.1]

_STREAMREC_BASE: dict[str, Any] = {
    "data": {"kind": "streamrec", "n_train": 12000, "n_val": 4000},
    "model": {"hidden": [512, 256, 128, 64], "activation": "relu", "norm": "none", "dropout": 0.0,
              "init": "torch_default"},
    "optim": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0},
    "schedule": {"name": "constant"},
    "train": {"epochs": 50, "batch_size": 128},
}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _derive(base: dict[str, Any], description: str, **tables: dict[str, Any]) -> dict[str, Any]:
    out = _merge(base, tables)
    out["description"] = description
    return out


_he = _derive(_STREAMREC_BASE, "StreamRec step 1: + He initialization", model={"init": "he_normal"})
_bn = _derive(_he, "StreamRec step 2: + BatchNorm", model={"norm": "batch"})
_reg = _derive(_bn, "StreamRec step 3: + dropout (0.3/0.3/0.2/0.1) and AdamW(weight_decay=1e-2), 30 epochs",
               model={"dropout": STREAMREC_DROPOUT}, optim={"name": "adamw", "weight_decay": 1e-2},
               train={"epochs": 30})
_full = _derive(_reg, "StreamRec step 4: + one-cycle (max_lr 3e-3, stepped per batch over 15 epochs), clipping at "
                "1.0, early stopping (patience 4, best weights restored)",
                schedule={"name": "onecycle", "max_lr": 3e-3, "pct_start": 0.3, "div_factor": 25.0,
                          "final_div_factor": 1e4},
                train={"epochs": 15, "clip_norm": 1.0, "early_stopping": True, "patience": 4})

_DOC_DATA = {"kind": "documents", "n_train": 4000, "n_val": 1000, "input_dim": 1000, "num_classes": 50}
_DOC_HIDDEN = [512, 256, 256, 128, 128]  # the seed's [2048, ..., 128] shrunk for CPU; >= 50 classes wide

_DIGITS_BASE: dict[str, Any] = {
    "data": {"kind": "digits"},
    "model": {"hidden": [256, 128], "activation": "relu", "norm": "batch", "dropout": 0.3, "init": "he_normal"},
    "optim": {"name": "adamw", "lr": 5e-3, "weight_decay": 1e-2},
    "schedule": {"name": "onecycle", "max_lr": 5e-3},
    "train": {"epochs": 15, "batch_size": 128, "clip_norm": 1.0, "early_stopping": True, "patience": 5},
}

PRESETS: dict[str, dict[str, Any]] = {
    "streamrec-baseline": _derive(_STREAMREC_BASE, "StreamRec baseline (case study 000): MLP [512,256,128,64], "
                                  "PyTorch default init, Adam(1e-3), 50 epochs, no early stopping"),
    "streamrec-he": _he,
    "streamrec-bn": _bn,
    "streamrec-regularized": _reg,
    "streamrec-full": _full,
    "docclf-buggy": {
        "description": "Document classifier (case study 002) with its bugs: sigmoid stack, softmax before "
                       "CrossEntropyLoss, eval() in the loop, no zero_grad, SGD lr 1e-4, no validation",
        "data": dict(_DOC_DATA),
        "model": {"hidden": _DOC_HIDDEN, "activation": "sigmoid", "norm": "none", "dropout": 0.0,
                  "init": "torch_default", "output_activation": "softmax"},
        "optim": {"name": "sgd", "lr": 1e-4, "momentum": 0.0},
        "schedule": {"name": "constant"},
        "train": {"epochs": 15, "batch_size": 64, "validate": False, "zero_grad": False, "train_mode": False},
    },
    "docclf-fixed": {
        "description": "Document classifier, fixed: ReLU + BatchNorm + dropout 0.3, He init, logits into "
                       "CrossEntropyLoss, AdamW(1e-3, wd 1e-2; the seed's 3e-4 needs its 100 epochs), cosine, clipping 1.0, "
                       "validation",
        "data": dict(_DOC_DATA),
        "model": {"hidden": _DOC_HIDDEN, "activation": "relu", "norm": "batch", "dropout": 0.3,
                  "init": "he_normal"},
        "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-2},
        "schedule": {"name": "cosine"},
        "train": {"epochs": 15, "batch_size": 64, "clip_norm": 1.0},
    },
    "digits": _derive(_DIGITS_BASE, "scikit-learn digits with the full recipe: BatchNorm MLP, He init, "
                      "dropout 0.3, AdamW + one-cycle (max_lr 5e-3), clipping, early stopping; reports test_acc"),
    # Failure patterns for sample runs and demos (playbook 7.8.1 / 7.8.3 / 7.8.4)
    "diverging-lr": _derive(_DIGITS_BASE, "digits MLP without normalization, SGD at lr 5.0, no clipping: "
                            "the loss blows up (pattern 2)",
                            model={"norm": "none", "dropout": 0.0}, optim={"name": "sgd", "lr": 5.0, "momentum": 0.9,
                                                                           "weight_decay": 0.0},
                            schedule={"name": "constant"},
                            train={"clip_norm": None, "early_stopping": False, "epochs": 10}),
    "flat-loss": _derive(_DIGITS_BASE, "digits MLP trained with SGD at lr 1e-5: the loss does not move "
                         "(pattern 1, learning rate too low)",
                         model={"norm": "none", "dropout": 0.0, "init": "torch_default"},
                         optim={"name": "sgd", "lr": 1e-5, "momentum": 0.0, "weight_decay": 0.0},
                         schedule={"name": "constant"}, train={"clip_norm": None, "early_stopping": False,
                                                               "epochs": 15}),
    "dead-relu": _derive(_DIGITS_BASE, "digits MLP whose ReLU units die: biases start at -3 and Adam runs "
                         "at lr 0.05",
                         model={"norm": "none", "dropout": 0.0, "hidden": [128, 128, 128], "bias_init": -3.0},
                         optim={"name": "adam", "lr": 0.05, "weight_decay": 0.0},
                         schedule={"name": "constant"},
                         train={"clip_norm": None, "early_stopping": False, "epochs": 15, "batch_size": 64}),
    "vanishing-sigmoid": _derive(_DIGITS_BASE, "8-layer sigmoid MLP with default init and plain SGD: "
                                 "gradients vanish toward the input",
                                 model={"hidden": [64] * 8, "activation": "sigmoid", "norm": "none",
                                        "dropout": 0.0, "init": "torch_default"},
                                 optim={"name": "sgd", "lr": 0.05, "momentum": 0.0, "weight_decay": 0.0},
                                 schedule={"name": "constant"},
                                 train={"clip_norm": None, "early_stopping": False, "epochs": 15}),
}

STREAMREC_PROGRESSION = ("streamrec-baseline", "streamrec-he", "streamrec-bn", "streamrec-regularized",
                         "streamrec-full")

_TOP_KEYS = {"preset", "name", "scale", "description", "seed", "data", "model", "optim", "schedule", "train"}
_DATA_KEYS = {
    "streamrec": {
        "n_train", "n_val", "n_test", "n_features", "n_informative", "signal", "linear_share", "base_rate", "seed"},
    "documents": {"n_train", "n_val", "n_test", "input_dim", "num_classes", "words_per_doc", "topic_words",
                  "noise", "seed"},
    "digits": {"seed", "n_val", "n_test"},
}
_MODEL_KEYS = {"hidden", "activation", "norm", "dropout", "init", "output_activation", "groups", "bias_init"}
_OPTIM_KEYS = {"name", "lr", "weight_decay", "momentum", "nesterov", "betas"}
_SCHEDULE_KEYS = {f.name for f in dataclasses.fields(ScheduleSpec)}
_TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainConfig)}


def get_preset(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise TrainscopeError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file and resolve its `preset` base."""
    p = Path(path)
    if not p.is_file():
        raise TrainscopeError(f"config file {p} does not exist")
    try:
        cfg = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise TrainscopeError(f"config file {p}: not valid TOML ({e})") from None
    return resolve(cfg, source=str(p))


def resolve(cfg: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Merge a config over its preset and check every key."""
    unknown = sorted(set(cfg) - _TOP_KEYS)
    if unknown:
        raise TrainscopeError(f"{source}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(_TOP_KEYS))}")
    base = get_preset(cfg["preset"]) if "preset" in cfg else {}
    merged = _merge(base, {k: v for k, v in cfg.items() if k != "preset"})
    if "preset" in cfg:
        merged.setdefault("name", cfg["preset"])
    for table in ("data", "model", "optim", "schedule", "train"):
        if not isinstance(merged.get(table), dict):
            raise TrainscopeError(f"{source}: missing [{table}] table (or start from a preset: preset = \"...\")")
    kind = merged["data"].get("kind")
    if kind not in _DATA_KEYS:
        raise TrainscopeError(f"{source}: [data] kind must be one of {', '.join(_DATA_KEYS)}, not {kind!r}")
    checks = {"data": _DATA_KEYS[kind] | {"kind"}, "model": _MODEL_KEYS, "optim": _OPTIM_KEYS,
              "schedule": _SCHEDULE_KEYS, "train": _TRAIN_KEYS}
    for table, allowed in checks.items():
        bad = sorted(set(merged[table]) - allowed)
        if bad:
            raise TrainscopeError(f"{source}: unknown key(s) in [{table}]: {', '.join(bad)}; "
                                  f"valid: {', '.join(sorted(allowed))}")
    return merged


@dataclass
class Experiment:
    """Everything `Trainer` needs, built from a config."""

    name: str
    config: dict[str, Any]
    splits: datasets.Splits
    model: nn.Module
    optimizer: Any
    criterion: nn.Module
    train_config: TrainConfig
    schedule: ScheduleSpec


def _scaled(n: int, scale: float, minimum: int) -> int:
    return max(minimum, int(round(n * scale)))


def build(config: dict[str, Any] | str, scale: float | None = None, seed: int | None = None,
          overrides: dict[str, Any] | None = None) -> Experiment:
    """Data, model, optimizer, loss and trainer settings for a preset name or a resolved config."""
    try:
        return _build(config, scale, seed, overrides)
    except (TypeError, ValueError) as e:  # a wrongly typed value in a config file
        name = config if isinstance(config, str) else config.get("name", config.get("preset", "config"))
        raise TrainscopeError(f"{name}: bad value in the config ({type(e).__name__}: {e})") from None


def _build(config: dict[str, Any] | str, scale: float | None, seed: int | None,
           overrides: dict[str, Any] | None) -> Experiment:
    cfg = resolve({"preset": config}) if isinstance(config, str) else resolve(config)
    if overrides:
        cfg = resolve(_merge(cfg, overrides))
    scale = float(scale if scale is not None else cfg.get("scale", 1.0))
    if not 0 < scale <= 4:
        raise TrainscopeError(f"scale must be in (0, 4], not {scale}")
    seed = int(seed if seed is not None else cfg.get("seed", 0))
    cfg["scale"], cfg["seed"] = scale, seed
    d = dict(cfg["data"])
    kind = d.pop("kind")
    if kind == "digits":
        splits = datasets.digits(seed=d.pop("seed", seed), **d)
    else:
        for key in ("n_train", "n_val", "n_test"):
            if key in d and d[key]:
                d[key] = _scaled(int(d[key]), scale, 64)
        d.setdefault("seed", seed)
        splits = datasets.streamrec_clicks(**d) if kind == "streamrec" else datasets.documents(**d)
    m = dict(cfg["model"])
    bias_init = m.pop("bias_init", None)
    m["hidden"] = [_scaled(int(h), scale, 4) for h in m.get("hidden", [])]
    out_dim = 1 if splits.num_classes == 1 else splits.num_classes
    import torch

    torch.manual_seed(seed)  # the same weights for the same config
    model = build_mlp(splits.input_dim, output_dim=out_dim, **m)
    if bias_init is not None:
        with torch.no_grad():
            for mod in [m for m in model.modules() if isinstance(m, nn.Linear)][:-1]:
                mod.bias.fill_(float(bias_init))
    o = dict(cfg["optim"])
    if "betas" in o:
        o["betas"] = tuple(o["betas"])
    optimizer = make_optimizer(model, **o)
    criterion: nn.Module = nn.BCEWithLogitsLoss() if splits.num_classes == 1 else nn.CrossEntropyLoss()
    t = dict(cfg["train"])
    t.setdefault("seed", seed)
    train_config = TrainConfig(**t)
    train_config.validate_fields()
    schedule = ScheduleSpec(**cfg["schedule"])
    return Experiment(name=str(cfg.get("name", "run")), config=cfg, splits=splits, model=model,
                      optimizer=optimizer, criterion=criterion, train_config=train_config, schedule=schedule)


def to_toml(cfg: dict[str, Any]) -> str:
    """A resolved config as TOML (written next to a run so it can be re-run with --config)."""
    lines: list[str] = []
    for k, v in cfg.items():
        if not isinstance(v, dict) and v is not None:
            lines.append(f"{k} = {_toml_value(v)}")
    for k, v in cfg.items():
        if isinstance(v, dict):
            lines.append(f"\n[{k}]")
            lines.extend(f"{kk} = {_toml_value(vv)}" for kk, vv in v.items() if vv is not None)
    return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    import json

    return json.dumps(str(v))
