"""trainscope: why is my PyTorch training run failing, and what should I change?

    probe = trainscope.watch(model, "runs/exp1", optimizer=opt, criterion=loss_fn)
    ...
    probe.log(step=step, train_loss=loss)
    probe.close()
    findings = trainscope.diagnose("runs/exp1")

    report = trainscope.check(model, train_loader, loss_fn)   # the checklist's sanity checks, your model
    result = trainscope.lr_find(model, train_loader, loss_fn)  # Smith's range test: curve + suggested lr
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from trainscope.errors import TrainscopeError, TrainscopeFinding

if TYPE_CHECKING:
    from trainscope.probe.watch import Probe
    from trainscope.store.run import Run


def watch(model: Any, run_dir: Any = None, **kwargs: Any) -> "Probe":
    """Attach the probe to `model`; see `trainscope.probe.watch.Probe` for the options."""
    from trainscope.probe.watch import watch as _watch

    return _watch(model, run_dir, **kwargs)


def load_run(path: Any, attempt: int | None = None, skip_corrupt: bool = False) -> "Run":
    """Read a run: a trainscope run directory, or a CSV/TSV/JSON-lines/TensorBoard log.

    attempt: which attempt of a reused run directory (default the latest); skip_corrupt: leave out
    chunks that fail their checksum (named in run.meta["notes"]) instead of raising.
    """
    from trainscope.store.reader import load_any

    return load_any(path, attempt=attempt, skip_corrupt=skip_corrupt)


def diagnose(run: Any, **kwargs: Any) -> list:
    """Findings for a run (a `Run` or a path), most severe first."""
    from trainscope.rules.engine import diagnose as _diagnose

    return _diagnose(run, **kwargs)


def check(model: Any, loader: Any, criterion: Any = None, **kwargs: Any) -> Any:
    """The trustworthy-skeleton checks on your own model and (inputs, targets) batches: data peek,
    initial loss vs -log(1/C), overfit one batch (500 steps, dropout and weight decay off, loss to <= 1%
    of its start), zeroed-input baseline. Returns a `CheckReport` (`.passed`, `.summary()`, `["name"]`);
    the model is left as it was. See `trainscope.train.sanity.check` for the options."""
    from trainscope.train.sanity import check as _check

    return _check(model, loader, criterion, **kwargs)


def lr_find(model: Any, loader: Any, criterion: Any = None, **kwargs: Any) -> Any:
    """Smith's learning-rate range test on your own model and batches (`optimizer_factory(params)` builds
    the swept optimizer). Returns an `LRFinderResult`: the curve, `suggested_lr` and its `rule`."""
    from trainscope.train.sanity import lr_find as _lr_find

    return _lr_find(model, loader, criterion, **kwargs)


__all__ = ["watch", "load_run", "diagnose", "check", "lr_find", "TrainscopeError", "TrainscopeFinding", "__version__"]
