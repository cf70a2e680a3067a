"""The sanity checks of the trustworthy skeleton (playbook 7.8.5 and the production checklist).

- data-pipeline peek: look at a batch right before the model (shapes, scale, labels, NaNs);
- initial loss: with N classes an untrained classifier should score about -log(1/N);
- overfit one batch: with regularization off the model must drive one batch's loss near zero —
  if it cannot, the bug is in the model/loss/loop, not in the hyperparameters;
- input-independent baseline: the model trained on zeroed inputs must be clearly worse than the one
  trained on the real inputs, or the inputs carry no signal the model uses.

Every check leaves the model as it found it (weights cloned and restored).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset


@dataclass
class CheckResult:
    name: str
    passed: bool
    message: str
    values: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return f"[{'PASS' if self.passed else 'FAIL'}] {self.name}: {self.message}"


def _first_batch(data: Dataset, batch_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=gen)[:batch_size]  # type: ignore[arg-type]
    items = [data[int(i)] for i in idx]
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


def peek(data: Dataset, batch_size: int = 64) -> CheckResult:
    """What the model will see: shapes, dtypes, value range, per-feature scale, labels, NaNs."""
    x, y = _first_batch(data, batch_size)
    xf = x.float()
    nonfinite = int((~torch.isfinite(xf)).sum())
    feat_std = xf.std(dim=0) if len(xf) > 1 else torch.zeros(())
    values: dict[str, Any] = {
        "input_shape": list(x.shape), "input_dtype": str(x.dtype), "target_shape": list(y.shape),
        "target_dtype": str(y.dtype), "mean": float(xf.mean()), "std": float(xf.std()),
        "min": float(xf.min()), "max": float(xf.max()), "feature_std_max": float(feat_std.max()),
        "nonfinite": nonfinite,
    }
    if not y.is_floating_point() or y.ndim > 1 and y.shape[-1] == 1:
        labels, counts = torch.unique(y.view(-1), return_counts=True)
        values["labels"] = {str(int(k) if float(k).is_integer() else float(k)): int(c)
                            for k, c in zip(labels.tolist(), counts.tolist())}
    problems = []
    if nonfinite:
        problems.append(f"{nonfinite} NaN/Inf inputs")
    if abs(values["mean"]) > 10 or values["feature_std_max"] > 100:
        problems.append("inputs are far from standardized (|mean| > 10 or a feature std > 100)")
    if "labels" in values and len(values["labels"]) == 1:
        problems.append("every label in the batch is the same")
    msg = (f"batch {values['input_shape']} {values['input_dtype']}, mean {values['mean']:.3g} std {values['std']:.3g} "
           f"range [{values['min']:.3g}, {values['max']:.3g}]; targets {values['target_shape']} {values['target_dtype']}")
    if "labels" in values:
        msg += f", {len(values['labels'])} distinct labels"
    if problems:
        msg += " — " + "; ".join(problems)
    return CheckResult("data-peek", not problems, msg, values)


def expected_initial_loss(criterion: nn.Module, num_classes: int) -> float:
    """-log(1/N): N classes for cross-entropy, 2 for a binary logit."""
    n = 2 if num_classes <= 1 or isinstance(criterion, (nn.BCEWithLogitsLoss, nn.BCELoss)) else num_classes
    return math.log(n)


@torch.no_grad()
def initial_loss(model: nn.Module, data: Dataset, criterion: nn.Module, num_classes: int,
                 batch_size: int = 256, tolerance: float = 0.25) -> CheckResult:
    """Loss of the untrained model (eval mode) vs -log(1/N); fails if off by more than `tolerance` x."""
    was = model.training
    model.eval()
    x, y = _first_batch(data, batch_size)
    measured = float(criterion(model(x), y))
    model.train(was)
    expected = expected_initial_loss(criterion, num_classes)
    ratio = measured / expected
    ok = math.isfinite(measured) and abs(ratio - 1) <= tolerance
    return CheckResult("initial-loss", ok,
                       f"{measured:.4f} vs -log(1/N) = {expected:.4f} (ratio {ratio:.2f}, tolerance ±{tolerance:.0%})",
                       {"measured": measured, "expected": expected, "ratio": ratio})


def overfit_one_batch(
    model: nn.Module,
    data: Dataset,
    criterion: nn.Module,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    steps: int = 200,
    batch_size: int = 32,
    pass_fraction: float = 0.1,
    disable_dropout: bool = True,
    seed: int = 0,
) -> CheckResult:
    """Train on one fixed batch for `steps` steps; passes if the loss falls below `pass_fraction` x start.

    Runs in train mode with dropout switched off (the checklist's "remove all regularization"); the
    optimizer comes from `make_optimizer` so the loop's own settings (e.g. a too-low lr) are tested.
    """
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    saved_rng = torch.get_rng_state()
    was = model.training
    dropouts = [(m, m.p) for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    torch.manual_seed(seed)
    x, y = _first_batch(data, batch_size, seed)
    losses: list[float] = []
    acc = math.nan
    try:
        if disable_dropout:
            for m, _ in dropouts:
                m.p = 0.0
        opt = make_optimizer(model)
        model.train()
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            out = model(x)
            loss = criterion(out, y)
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                break
            loss.backward()
            opt.step()
        with torch.no_grad():
            out = model(x)
            final = float(criterion(out, y))
            if out.ndim == 2 and out.shape[1] > 1:
                acc = float((out.argmax(1) == y).float().mean())
            elif y.is_floating_point():
                acc = float(((out.view(-1) > 0).float() == y.view(-1)).float().mean())
    finally:
        for m, p in dropouts:
            m.p = p
        model.load_state_dict(saved)
        torch.set_rng_state(saved_rng)
        model.train(was)
    start = losses[0]
    passed = math.isfinite(final) and final <= pass_fraction * start
    msg = (f"loss {start:.4f} -> {final:.4f} in {len(losses)} steps on one batch of {len(x)}"
           f" (needs <= {pass_fraction:g} x start = {pass_fraction * start:.4f})")
    if not math.isnan(acc):
        msg += f", batch accuracy {acc:.2f}"
    if not passed:
        msg += " — the model cannot fit even one batch: look for a bug in the model, loss or loop"
    return CheckResult("overfit-one-batch", passed, msg,
                       {"initial_loss": start, "final_loss": final, "accuracy": acc, "losses": losses})


def zeroed_input_baseline(
    make_model_and_optimizer: Callable[[], tuple[nn.Module, torch.optim.Optimizer]],
    criterion: nn.Module,
    train: TensorDataset,
    val: TensorDataset,
    epochs: int = 3,
    batch_size: int = 64,
    margin: float = 0.01,
) -> CheckResult:
    """Train twice for `epochs` (real inputs, then all-zero inputs); real must beat zeroed by `margin`."""
    from trainscope.train.loop import TrainConfig, Trainer

    def val_loss(zero: bool) -> float:
        model, opt = make_model_and_optimizer()
        tr, va = train, val
        if zero:
            tr = TensorDataset(torch.zeros_like(train.tensors[0]), train.tensors[1])
            va = TensorDataset(torch.zeros_like(val.tensors[0]), val.tensors[1])
        cfg = TrainConfig(epochs=epochs, batch_size=batch_size)
        return Trainer(model, opt, copy.deepcopy(criterion), tr, va, config=cfg).fit().epochs[-1].val_loss

    real, zeroed = val_loss(False), val_loss(True)
    passed = real < zeroed * (1 - margin)
    msg = f"val loss {real:.4f} with real inputs vs {zeroed:.4f} with zeroed inputs"
    if not passed:
        msg += " — the model does no better than an input-independent baseline"
    return CheckResult("input-independent-baseline", passed, msg, {"real": real, "zeroed": zeroed})


def run_checks(experiment: Any, overfit_steps: int = 200, baseline_epochs: int = 3) -> list[CheckResult]:
    """All four checks on a built `presets.Experiment` (the model is left untouched)."""
    from trainscope.train.optim import make_optimizer
    from trainscope.train.presets import build

    exp = experiment
    o = {k: v for k, v in exp.config["optim"].items()}
    o["weight_decay"] = 0.0  # the checklist: no regularization while overfitting one batch
    if "betas" in o:
        o["betas"] = tuple(o["betas"])
    results = [
        peek(exp.splits.train),
        initial_loss(exp.model, exp.splits.train, exp.criterion, exp.splits.num_classes),
        overfit_one_batch(exp.model, exp.splits.train, exp.criterion, lambda m: make_optimizer(m, **o),
                          steps=overfit_steps),
    ]
    if baseline_epochs > 0:
        def fresh() -> tuple[nn.Module, torch.optim.Optimizer]:
            e = build(exp.config)
            return e.model, e.optimizer

        results.append(zeroed_input_baseline(fresh, exp.criterion, exp.splits.train, exp.splits.val,
                                             epochs=baseline_epochs, batch_size=exp.train_config.batch_size))
    return results
