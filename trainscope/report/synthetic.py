"""Synthetic runs with the run store's exact columns, for the report's size benchmark and demos.

Real runs (recorded with `trainscope.watch`) are what the tests diagnose; this builds what no tiny
CPU run can: 100k steps and 100+ layers, in a second, with optional NaN/spike failures.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from trainscope.store import schema
from trainscope.store.run import Run, empty_frame


def _frame(table: str, cols: dict[str, object]) -> pd.DataFrame:
    df = pd.DataFrame(cols)
    for c, dt in schema.COLUMNS[table].items():
        if c not in df:
            df[c] = pd.Series(np.nan if dt.startswith("float") else (0 if dt.startswith("int") else ""),
                              index=df.index)
        df[c] = df[c].astype(dt)
    return df[list(schema.COLUMNS[table])]


def synthetic_run(
    steps: int = 2000,
    n_layers: int = 6,
    every: int = 10,
    epochs: int = 20,
    *,
    diverge_at: int | None = None,
    dead_layer: int | None = None,
    ranks: int = 1,
    layer_names: list[str] | None = None,
    seed: int = 0,
    path: str | Path = "synthetic-run",
) -> Run:
    """A plausible MLP-like run: decaying noisy train loss, U-shaped val loss (overfits after 40%)."""
    rng = np.random.default_rng(seed)
    names = layer_names or [f"blocks.{i}.fc" for i in range(n_layers)]
    n_layers = len(names)
    step = np.arange(steps, dtype=np.int64)
    per_epoch = max(1, steps // epochs)
    epoch = (step // per_epoch).astype(np.float64)
    t = step / max(steps - 1, 1)
    scal = []
    for rank in range(ranks):
        loss = 2.3 * np.exp(-4 * t) + 0.05 + 0.08 * rng.standard_normal(steps) * np.exp(-2 * t) + 0.01 * rank
        loss = np.abs(loss)
        if diverge_at is not None and diverge_at < steps:
            loss[diverge_at:] = loss[diverge_at] * np.exp(np.minimum(np.arange(steps - diverge_at), 600) * 0.5)
            loss[diverge_at + 20:] = np.nan
            loss[diverge_at + 10] = np.inf
        gnorm = 1.0 + 0.3 * rng.standard_normal(steps) ** 2
        gnorm[rng.integers(0, steps, max(1, steps // 5000))] *= 300  # rare spikes must survive
        if diverge_at is not None and diverge_at < steps:
            gnorm[diverge_at + 10:] = np.nan
        peak = max(1, int(0.3 * steps))
        lr = np.where(step < peak, 1e-3 * step / peak, 1e-3 * 0.5 * (1 + np.cos(np.pi * (step - peak) / max(steps - peak, 1))))
        for name, vals in (("train_loss", loss), ("grad_norm", gnorm), ("lr/0", lr), ("lr/1", lr * 0.1)):
            if rank > 0 and name.startswith("lr/"):
                continue
            scal.append(pd.DataFrame({"step": step, "name": name, "value": vals, "epoch": epoch, "rank": rank,
                                      "time": step * 0.01}))
        e = np.arange(epochs, dtype=np.float64)
        val = 2.0 * np.exp(-e / 3) + 0.25 + 0.02 * (e - 0.4 * epochs).clip(0) ** 1.5 / max(epochs, 1) * 10
        ends = np.minimum((e + 1) * per_epoch - 1, steps - 1).astype(np.int64)
        for name, vals in (("val_loss", val), ("val_acc", 1 - val / 3)):
            scal.append(pd.DataFrame({"step": ends, "name": name, "value": vals, "epoch": e, "rank": rank,
                                      "time": ends * 0.01}))
    scalars = _frame(schema.SCALARS, pd.concat(scal, ignore_index=True))

    rec = np.arange(0, steps, every, dtype=np.int64)
    L, S = n_layers, len(rec)
    depth = np.arange(L)[:, None] / max(L - 1, 1)
    tt = rec[None, :] / max(steps - 1, 1)
    grad = 10 ** (-3 * (1 - depth) - 0.5 * tt) * (1 + 0.2 * rng.standard_normal((L, S)) ** 2)
    frac_dead = np.clip(0.1 + 0.05 * rng.standard_normal((L, S)), 0, 1) * np.ones((L, S))
    if dead_layer is not None:
        frac_dead[dead_layer] = np.clip(0.5 + 0.45 * tt[0], 0, 0.97)
    act_std = (0.8 - 0.3 * depth) * np.ones((L, S))
    act_mean = 0.3 * np.ones((L, S)) + 0.05 * rng.standard_normal((L, S))
    ratio = 10 ** (-3 + 0.3 * rng.standard_normal((L, S)) - 0.6 * tt)
    nonfinite = np.zeros((L, S))
    if diverge_at is not None and diverge_at < steps:
        bad = rec >= diverge_at + 10
        grad[:, bad] = np.nan
        nonfinite[:, bad] = 1
    relu_names = [f"{n}.relu" for n in names]  # each Linear is followed by a ReLU (forward order 2i, 2i+1)
    stepc = np.tile(rec, L)

    def kind(k: str, layer_names: list[str], module: str, offset: int, **stats: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame({"step": stepc, "layer": np.repeat(np.array(layer_names, dtype=object), S),
                             "module_type": module, "order": np.repeat(2 * np.arange(L, dtype=np.int32) + offset, S),
                             "rank": 0, "kind": k, **{s: v.ravel() for s, v in stats.items()}})

    layers = pd.concat([
        kind("grad", names, "Linear", 0, norm=grad, nonfinite=nonfinite, numel=np.full((L, S), 4096.0)),
        kind("activation", names, "Linear", 0, mean=act_mean - 0.3, std=act_std * 1.4, frac_zero=np.zeros((L, S)),
             nonfinite=nonfinite),
        kind("activation", relu_names, "ReLU", 1, mean=act_mean, std=act_std, frac_zero=frac_dead * 0.98,
             frac_dead=frac_dead, nonfinite=nonfinite),
        kind("weight", names, "Linear", 0, norm=np.full((L, S), 12.0), std=np.full((L, S), 0.05)),
        kind("update", names, "Linear", 0, ratio=ratio),
    ], ignore_index=True)
    layers = _frame(schema.LAYERS, layers)

    fan = np.full(L, 256)
    var = 1 / (3 * fan)
    init = _frame(schema.INIT, pd.DataFrame({
        "layer": names, "param": [f"{n}.weight" for n in names], "module_type": "Linear",
        "order": np.arange(L, dtype=np.int32), "fan_in": fan, "fan_out": fan, "var": var, "mean": 0.0,
        "nonlinearity": "relu", "target_scheme": "he", "target_var": 2 / fan, "ratio": var / (2 / fan),
        "scheme": "torch_default", "normalized_after": False, "rank": 0,
    }))
    meta = {
        "name": Path(path).name, "status": "crashed" if diverge_at is not None else "finished",
        "world_size": ranks, "steps": steps, "every": every,
        "model": {"class": "DeepMLP", "n_params": int(L * 256 * 257), "n_trainable": int(L * 256 * 257),
                  "modules": [{"name": n, "type": "Linear", "order": i, "n_params": 256 * 257, "training": True}
                              for i, n in enumerate(names)]},
        "optimizer": {"class": "AdamW", "defaults": {"lr": 1e-3, "weight_decay": 1e-2, "betas": [0.9, 0.999]},
                      "param_groups": [{"lr": 1e-3, "weight_decay": 1e-2, "n_params": 1},
                                       {"lr": 1e-4, "weight_decay": 0.0, "n_params": 1}]},
        "scheduler": {"class": "OneCycleLR", "params": {"max_lr": 1e-3, "total_steps": steps}},
        "criterion": {"class": "CrossEntropyLoss", "params": {}},
        "num_classes": 10,
    }
    return Run(Path(path), meta, scalars=scalars, layers=layers, init=init, events=empty_frame(schema.EVENTS))
