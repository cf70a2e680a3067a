"""trainscope: why is my PyTorch training run failing, and what should I change?

    probe = trainscope.watch(model, "runs/exp1", optimizer=opt, criterion=loss_fn)
    ...
    probe.log(step=step, train_loss=loss)
    probe.close()
    findings = trainscope.diagnose("runs/exp1")
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from trainscope.errors import TrainscopeError

if TYPE_CHECKING:
    from trainscope.probe.watch import Probe
    from trainscope.store.run import Run


def watch(model: Any, run_dir: Any = None, **kwargs: Any) -> "Probe":
    """Attach the probe to `model`; see `trainscope.probe.watch.Probe` for the options."""
    from trainscope.probe.watch import watch as _watch

    return _watch(model, run_dir, **kwargs)


def load_run(path: Any) -> "Run":
    """Read a run: a trainscope run directory, or a CSV/TSV/JSON-lines/TensorBoard log."""
    from trainscope.store.reader import load_any

    return load_any(path)


def diagnose(run: Any, **kwargs: Any) -> list:
    """Findings for a run (a `Run` or a path), most severe first."""
    from trainscope.rules.engine import diagnose as _diagnose

    return _diagnose(run, **kwargs)


__all__ = ["watch", "load_run", "diagnose", "TrainscopeError", "__version__"]
