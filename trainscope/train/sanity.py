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

from trainscope.errors import TrainscopeError


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


def run_checks(experiment: Any, overfit_steps: int = 500, baseline_epochs: int = 3) -> list[CheckResult]:
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
                          steps=overfit_steps, pass_fraction=NEAR_ZERO),
    ]
    if baseline_epochs > 0:
        def fresh() -> tuple[nn.Module, torch.optim.Optimizer]:
            e = build(exp.config)
            return e.model, e.optimizer

        results.append(zeroed_input_baseline(fresh, exp.criterion, exp.splits.train, exp.splits.val,
                                             epochs=baseline_epochs, batch_size=exp.train_config.batch_size))
    return results


# -- the same checks on the user's own model and batches --------------------------------------------
# `trainscope.check(model, loader, criterion)` / `trainscope check --model F.py:FN --data F.py:FN`.
# `loader` is anything that yields (inputs, targets) batches: a DataLoader, a list of pairs, a generator.
# inputs may be a tensor (model(x)), a tuple/list (model(*x)) or a dict (model(**x)).

OVERFIT_STEPS = 500          # the case study runs 500 steps on one batch
NEAR_ZERO = 0.01             # "near zero": the final loss is at most 1% of the first step's loss
INITIAL_TOLERANCE = 0.25     # initial loss within ±25% of -log(1/C)
BASELINE_STEPS = 100         # optimizer steps of each input-independent baseline run
BASELINE_MARGIN = 0.05       # real inputs must beat zeroed inputs by 5% of the zeroed loss
IMBALANCE_RATIO = 10.0       # most common class at least 10x the rarest class seen
MAX_BATCHES = 16             # batches taken from the loader (peek, baseline training and evaluation)

_CLASS_LOSSES = (nn.CrossEntropyLoss, nn.NLLLoss)
_BINARY_LOSSES = (nn.BCEWithLogitsLoss, nn.BCELoss)


@dataclass
class CheckReport:
    """The checks' results, in order; `passed` is False when any check failed (skipped ones do not count)."""
    results: list[CheckResult]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failed(self) -> list[str]:
        return [r.name for r in self.results if not r.passed]

    def __getitem__(self, name: str) -> CheckResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def summary(self) -> str:
        lines = [r.line() for r in self.results]
        ran = [r for r in self.results if not r.values.get("skipped")]
        bad = self.failed
        lines.append(f"{len(ran) - len(bad)}/{len(ran)} checks passed" + (f"; failed: {', '.join(bad)}" if bad else ""))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _skip(name: str, why: str) -> CheckResult:
    r = CheckResult(name, True, f"skipped: {why}", {"skipped": True})
    return r


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def _call(model: nn.Module, x: Any) -> Any:
    if isinstance(x, dict):
        return model(**x)
    if isinstance(x, (list, tuple)):
        return model(*x)
    return model(x)


def _logits(out: Any) -> torch.Tensor:
    """The tensor a criterion gets: the output itself, `.logits` (Hugging Face) or the first element."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TrainscopeError(f"the model returned {type(out).__name__}; expected a tensor (or .logits)")


def _zeros(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return torch.zeros_like(x)
    if isinstance(x, (list, tuple)):
        return type(x)(_zeros(o) for o in x)
    if isinstance(x, dict):
        return {k: _zeros(v) for k, v in x.items()}
    return x


def take_batches(loader: Any, n: int = MAX_BATCHES) -> list[tuple[Any, torch.Tensor]]:
    """The first `n` (inputs, targets) batches of `loader`; a clear error for anything else."""
    if isinstance(loader, Dataset) and not hasattr(loader, "__iter__"):
        raise TrainscopeError("data must yield (inputs, targets) batches: wrap a Dataset in a DataLoader")
    try:
        it = iter(loader)
    except TypeError:
        raise TrainscopeError(f"data must be an iterable of (inputs, targets) batches, not {type(loader).__name__}") \
            from None
    out = []
    for i, batch in enumerate(it):
        if i >= n:
            break
        if not isinstance(batch, (list, tuple)) or len(batch) != 2:
            raise TrainscopeError(f"batch {i} is a {type(batch).__name__}"
                                  f"{f' of {len(batch)} items' if isinstance(batch, (list, tuple)) else ''}; "
                                  "each batch must be a pair (inputs, targets)")
        x, y = batch
        if not isinstance(y, torch.Tensor):
            y = torch.as_tensor(y)
        out.append((x, y))
    if not out:
        raise TrainscopeError("the data yielded no batches")
    return out


def _tensors_of(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for o in x for t in _tensors_of(o)]
    if isinstance(x, dict):
        return [t for o in x.values() for t in _tensors_of(o)]
    return []


def peek_batches(batches: list[tuple[Any, torch.Tensor]]) -> CheckResult:
    """The data pipeline seen right before the model: NaN/Inf, unnormalized features, constant labels,
    class imbalance. Float inputs only for the scale checks (token ids are not features)."""
    problems: list[str] = []
    values: dict[str, Any] = {"batches": len(batches)}
    x0, y0 = batches[0]
    first = _tensors_of(x0)
    values["input_shape"] = [list(t.shape) for t in first] if len(first) != 1 else list(first[0].shape)
    values["input_dtype"] = [str(t.dtype) for t in first] if len(first) != 1 else str(first[0].dtype)
    values["target_shape"], values["target_dtype"] = list(y0.shape), str(y0.dtype)
    parts = [_tensors_of(x) for x, _ in batches]
    msg_parts = []
    for j in range(len(first)):
        ts = [p[j] for p in parts if len(p) > j and p[j].shape[1:] == first[j].shape[1:]]
        if not ts[0].is_floating_point():
            continue
        xf = torch.cat([t.detach().float().cpu().reshape(len(t), -1) if t.ndim else t.reshape(1, 1) for t in ts])
        finite = torch.isfinite(xf)
        nonfinite = int((~finite).sum())
        xs = torch.where(finite, xf, torch.zeros(()))
        mean, std = xs.mean(dim=0), xs.std(dim=0) if len(xs) > 1 else torch.zeros(xs.shape[1])
        key = "" if len(first) == 1 else f"[{j}]"
        values[f"nonfinite{key}"] = nonfinite
        values[f"mean{key}"] = float(xs.mean())
        values[f"std{key}"] = float(xs.std()) if xs.numel() > 1 else 0.0
        values[f"feature_abs_mean_max{key}"] = float(mean.abs().max())
        values[f"feature_std_max{key}"] = float(std.max())
        msg_parts.append(f"inputs{key} {list(first[j].shape)} {first[j].dtype}: mean {values[f'mean{key}']:.3g} "
                         f"std {values[f'std{key}']:.3g}")
        if nonfinite:
            problems.append(f"{nonfinite} NaN/Inf input values{key}")
        if values[f"feature_abs_mean_max{key}"] > 10 or values[f"feature_std_max{key}"] > 100:
            problems.append(f"inputs{key} are not normalized (a feature's |mean| is "
                            f"{values[f'feature_abs_mean_max{key}']:.3g}, its largest std "
                            f"{values[f'feature_std_max{key}']:.3g}; standardize with the training split's statistics)")
    y = torch.cat([yy.detach().cpu().reshape(-1) for _, yy in batches if yy.ndim == y0.ndim])
    if y.is_floating_point() and int((~torch.isfinite(y)).sum()):
        problems.append(f"{int((~torch.isfinite(y)).sum())} NaN/Inf targets")
    integral = not y.is_floating_point() or bool(torch.all(torch.isfinite(y) & (y == y.round())))
    distinct = torch.unique(y[torch.isfinite(y.float())]) if y.numel() else y
    if integral and len(distinct) <= max(50, int(0.2 * len(y))):
        labels, counts = torch.unique(y, return_counts=True)
        values["labels"] = {str(int(k)): int(c) for k, c in zip(labels.tolist(), counts.tolist())}
        msg_parts.append(f"{len(labels)} distinct labels in {len(y)} targets")
        if len(labels) == 1:
            problems.append(f"every target is {int(labels[0])} (constant labels)")
        elif float(counts.max()) >= IMBALANCE_RATIO * float(counts.min()):
            top = int(labels[counts.argmax()])
            problems.append(f"class imbalance: label {top} has {int(counts.max())} of {len(y)} targets, the rarest "
                            f"{int(counts.min())} (>= {IMBALANCE_RATIO:g}x)")
    elif len(y) > 1 and float(y.float().std()) == 0.0:
        problems.append("every target has the same value (constant labels)")
    msg = f"{len(batches)} batches: " + "; ".join(msg_parts)
    if problems:
        msg += " — " + "; ".join(problems)
    values["problems"] = problems
    return CheckResult("data-peek", not problems, msg, values)


def _criterion_kind(criterion: Any, out: torch.Tensor, y: torch.Tensor) -> str:
    if isinstance(criterion, _CLASS_LOSSES):
        return "class"
    if isinstance(criterion, _BINARY_LOSSES):
        return "binary"
    name = getattr(criterion, "__name__", type(criterion).__name__).lower()
    if "cross_entropy" in name and "binary" not in name or name.startswith("nll"):
        return "class"
    if "binary_cross_entropy" in name:
        return "binary"
    if isinstance(criterion, nn.modules.loss._Loss):
        return "other"
    if not y.is_floating_point() and out.ndim >= 2 and out.shape[1] > 1:
        return "class"
    return "other"


def default_criterion(batches: list[tuple[Any, torch.Tensor]]) -> nn.Module:
    """CrossEntropyLoss for integer targets, MSELoss otherwise (pass a criterion to choose)."""
    y = batches[0][1]
    return nn.CrossEntropyLoss() if not y.is_floating_point() else nn.MSELoss()


def _initial_loss_check(model: nn.Module, batches: list, criterion: Any, device: torch.device,
                        num_classes: int | None) -> CheckResult:
    x, y = _to(batches[0][0], device), batches[0][1].to(device)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = _logits(_call(model, x))
            measured = float(criterion(out, y))
    finally:
        model.train(was)
    kind = _criterion_kind(criterion, out, y)
    if kind == "class":
        c = num_classes or (int(out.shape[1]) if out.ndim >= 2 else None)
    elif kind == "binary":
        c = 2
    else:
        return _skip("initial-loss", f"{type(criterion).__name__} is not a classification loss; -log(1/C) applies to "
                                     f"softmax/sigmoid outputs only (measured {measured:.4g})")
    if not c or c < 2:
        return _skip("initial-loss", "could not tell the number of classes (pass num_classes)")
    expected = math.log(c)
    ratio = measured / expected
    ok = math.isfinite(measured) and abs(ratio - 1) <= INITIAL_TOLERANCE
    msg = (f"{measured:.4f} vs -log(1/{c}) = {expected:.4f} (ratio {ratio:.2f}, tolerance ±{INITIAL_TOLERANCE:.0%})")
    if not ok:
        msg += (" — an untrained classifier should be unsure of every class: check the output layer's init/scale, "
                "the loss's input (logits?) and the labels")
    return CheckResult("initial-loss", ok, msg, {"measured": measured, "expected": expected, "ratio": ratio,
                                                 "num_classes": c})


def _make_opt(model: nn.Module, optimizer_factory: Callable[..., torch.optim.Optimizer] | None,
              no_weight_decay: bool) -> tuple[torch.optim.Optimizer, list[float]]:
    opt = (optimizer_factory(model.parameters()) if optimizer_factory is not None
           else torch.optim.Adam(model.parameters(), lr=1e-3))
    if not isinstance(opt, torch.optim.Optimizer):
        raise TrainscopeError(f"optimizer_factory returned {type(opt).__name__}, not a torch.optim.Optimizer")
    decays = [float(g.get("weight_decay", 0.0) or 0.0) for g in opt.param_groups]
    if no_weight_decay:
        for g in opt.param_groups:
            if "weight_decay" in g:
                g["weight_decay"] = 0.0
    return opt, decays


class _Untouched:
    """Clone weights, buffers, train/eval mode, dropout rates and RNG states; put them all back."""

    def __init__(self, model: nn.Module, no_dropout: bool) -> None:
        self.model, self.no_dropout = model, no_dropout

    def __enter__(self) -> "_Untouched":
        m = self.model
        self.state = {k: v.detach().clone() for k, v in m.state_dict().items()}
        self.modes = [(mod, mod.training) for mod in m.modules()]
        self.dropouts = [(d, d.p) for d in m.modules() if isinstance(d, nn.modules.dropout._DropoutNd)]
        self.rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        if self.no_dropout:
            for d, _ in self.dropouts:
                d.p = 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        for d, p in self.dropouts:
            d.p = p
        with torch.no_grad():
            self.model.load_state_dict(self.state)
        for mod, training in self.modes:
            mod.training = training
        torch.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)


def _accuracy(out: torch.Tensor, y: torch.Tensor, kind: str) -> float:
    if kind == "class" and out.ndim == 2 and out.shape[1] > 1 and not y.is_floating_point():
        return float((out.argmax(1) == y).float().mean())
    if kind == "binary" and out.shape == y.shape:
        return float(((out > 0).float() == y).float().mean())
    return math.nan


def _overfit_check(model: nn.Module, batches: list, criterion: Any, device: torch.device,
                   optimizer_factory: Any, steps: int, near_zero: float, seed: int) -> CheckResult:
    x, y = _to(batches[0][0], device), batches[0][1].to(device)
    losses: list[float] = []
    with _Untouched(model, no_dropout=True) as saved:
        torch.manual_seed(seed)
        opt, decays = _make_opt(model, optimizer_factory, no_weight_decay=True)
        model.train()
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = criterion(_logits(_call(model, x)), y)
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                break
            loss.backward()
            opt.step()
        with torch.no_grad():
            out = _logits(_call(model, x))
            final = float(criterion(out, y))
            acc = _accuracy(out, y, _criterion_kind(criterion, out, y))
        n_dropout = len(saved.dropouts)
    start = losses[0]
    mark = near_zero * abs(start)
    passed = math.isfinite(final) and final <= mark
    kind = type(opt).__name__
    lr = opt.param_groups[0].get("lr")
    msg = (f"loss {start:.4f} -> {final:.4f} in {len(losses)} steps on one batch of {len(y)} "
           f"(pass: <= {near_zero:g} x start = {mark:.4g}; {kind} lr {lr:g}, weight decay off"
           f"{f', {n_dropout} dropout layer(s) off' if n_dropout else ''})")
    if not math.isnan(acc):
        msg += f", batch accuracy {acc:.2f}"
    if not passed:
        msg += (" — the model cannot fit even one batch: the bug is in the model, the loss or the loop "
                "(softmax before CrossEntropyLoss, a saturating activation stack, detached outputs, a too-low lr)")
    return CheckResult("overfit-one-batch", passed, msg,
                       {"initial_loss": start, "final_loss": final, "accuracy": acc, "losses": losses,
                        "steps": len(losses), "pass_mark": mark, "weight_decay_was": decays,
                        "dropout_layers_off": n_dropout})


def _eval_loss(model: nn.Module, batches: list, criterion: Any, device: torch.device, zero: bool) -> float:
    was = model.training
    model.eval()
    total, n = 0.0, 0
    try:
        with torch.no_grad():
            for x, y in batches:
                x = _to(_zeros(x) if zero else x, device)
                y = y.to(device)
                total += float(criterion(_logits(_call(model, x)), y)) * len(y)
                n += len(y)
    finally:
        model.train(was)
    return total / max(n, 1)


def _baseline_check(model: nn.Module, batches: list, criterion: Any, device: torch.device,
                    optimizer_factory: Any, steps: int, seed: int, val_batches: list | None) -> CheckResult:
    if val_batches:
        train_b, eval_b, where = batches, val_batches, "validation batches"
    elif len(batches) >= 2:
        k = max(1, int(round(len(batches) * 0.75)))
        train_b, eval_b = batches[:k], batches[k:]
        where = f"{len(eval_b)} held-out batch(es) of the data"
    else:
        train_b, eval_b, where = batches, batches, "the one training batch (give more batches for a held-out loss)"
    results = {}
    for zero in (False, True):
        torch.manual_seed(seed)
        m = copy.deepcopy(model).train()
        opt, _ = _make_opt(m, optimizer_factory, no_weight_decay=False)
        for i in range(steps):
            x, y = train_b[i % len(train_b)]
            x = _to(_zeros(x) if zero else x, device)
            opt.zero_grad(set_to_none=True)
            loss = criterion(_logits(_call(m, x)), y.to(device))
            if not math.isfinite(float(loss.detach())):
                break
            loss.backward()
            opt.step()
        results[zero] = _eval_loss(m, eval_b, criterion, device, zero)
        del m, opt
    real, zeroed = results[False], results[True]
    passed = math.isfinite(real) and real < zeroed * (1 - BASELINE_MARGIN)
    msg = (f"after {steps} steps, loss {real:.4f} with real inputs vs {zeroed:.4f} with zeroed inputs on {where} "
           f"(pass: real < {1 - BASELINE_MARGIN:g} x zeroed)")
    if not passed:
        msg += (" — the model does no better than an input-independent baseline: it is not using its inputs "
                "(data/label mismatch, inputs cut off, or it cannot learn at all)")
    return CheckResult("input-independent-baseline", passed, msg, {"real": real, "zeroed": zeroed, "steps": steps})


def check(
    model: nn.Module,
    loader: Any,
    criterion: Any = None,
    *,
    optimizer_factory: Callable[..., torch.optim.Optimizer] | None = None,
    num_classes: int | None = None,
    steps: int = OVERFIT_STEPS,
    near_zero: float = NEAR_ZERO,
    baseline_steps: int = BASELINE_STEPS,
    val_loader: Any = None,
    max_batches: int = MAX_BATCHES,
    seed: int = 0,
) -> CheckReport:
    """The trustworthy-skeleton checks on your own model and data (production checklist, playbook 7.8.5).

    - data-peek: the first `max_batches` batches: NaN/Inf, unnormalized features, constant labels,
      class imbalance;
    - initial-loss: the untrained model's loss on the first batch vs -log(1/C), within ±25%
      (classification losses only);
    - overfit-one-batch: `steps` (500) steps on the first batch with dropout and weight decay off; passes
      when the loss ends at most `near_zero` (1%) of where it started;
    - input-independent-baseline: two copies trained `baseline_steps` steps on real vs zeroed inputs;
      real must beat zeroed by 5% on held-out batches (`val_loader`, else the last quarter of the batches).
      `baseline_steps=0` skips it.

    `optimizer_factory(params)` builds the optimizer (default Adam lr 1e-3, "Adam is forgiving"); pass your
    own (e.g. `functools.partial(torch.optim.SGD, lr=1e-4)`) to test your loop's settings. `criterion`
    defaults to CrossEntropyLoss for integer targets, MSELoss otherwise. The model is left exactly as it
    was: weights, buffers, train/eval mode, dropout rates and RNG state are restored.
    """
    if not isinstance(model, nn.Module):
        raise TrainscopeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    if steps < 1:
        raise TrainscopeError("steps must be >= 1")
    batches = take_batches(loader, max_batches)
    val_batches = take_batches(val_loader, max_batches) if val_loader is not None else None
    if criterion is None:
        criterion = default_criterion(batches)
    if not callable(criterion):
        raise TrainscopeError(f"criterion must be callable, not {type(criterion).__name__}")
    device = _device_of(model)
    results = [peek_batches(batches),
               _initial_loss_check(model, batches, criterion, device, num_classes),
               _overfit_check(model, batches, criterion, device, optimizer_factory, steps, near_zero, seed)]
    if baseline_steps > 0:
        results.append(_baseline_check(model, batches, criterion, device, optimizer_factory, baseline_steps, seed,
                                       val_batches))
    return CheckReport(results)


def lr_find(model: nn.Module, loader: Any, criterion: Any = None, *,
            optimizer_factory: Callable[..., torch.optim.Optimizer] | None = None, **kwargs: Any) -> Any:
    """Smith's range test on your own model and batches; see `trainscope.train.lr_finder.find_lr`.

    `optimizer_factory(params)` builds the optimizer whose lr is swept (default SGD, momentum 0.9).
    Returns an `LRFinderResult`: the curve (`lrs`, `losses`, `smoothed`, `to_frame()`), `suggested_lr`
    and the `rule` that produced it. Weights, optimizer state, mode and RNG are restored.
    """
    from trainscope.train.lr_finder import find_lr

    if not isinstance(model, nn.Module):
        raise TrainscopeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    is_dataset = isinstance(loader, Dataset) and not hasattr(loader, "__iter__")  # find_lr batches it
    if not is_dataset and iter(loader) is loader:  # a generator: keep what one sweep needs
        loader = take_batches(loader, int(kwargs.get("num_steps", 100)))
    if criterion is None:
        criterion = default_criterion(take_batches(loader, 1)) if not is_dataset else nn.CrossEntropyLoss()
    opt = optimizer_factory(model.parameters()) if optimizer_factory is not None else None
    if opt is not None and not isinstance(opt, torch.optim.Optimizer):
        raise TrainscopeError(f"optimizer_factory returned {type(opt).__name__}, not a torch.optim.Optimizer")
    return find_lr(model, loader, criterion, opt, **kwargs)
