"""`TrainscopeCallback` for the standalone `pytorch_lightning` package (a `pytorch_lightning.Callback`);
`trainscope.integrations.lightning` documents it, and uses `lightning.pytorch` when that is installed."""
from __future__ import annotations

import os
from typing import Any

from pytorch_lightning import Callback as _Callback

from trainscope.integrations._lightning import LightningRecorder

__all__ = ["TrainscopeCallback"]


class TrainscopeCallback(LightningRecorder, _Callback):
    """A Lightning `Callback` that records the run with `trainscope.watch`.

    run_dir: where the run store goes (default `<trainer.log_dir>/trainscope`).
    watch_options: passed to `trainscope.watch` (every, activations, criterion, name, config, ...);
    `optimizer` and `scheduler` default to the trainer's first ones, `criterion` to the module's loss
    attribute (an `nn.modules.loss._Loss`) when it has exactly one.
    """

    def __init__(self, run_dir: str | os.PathLike[str] | None = None, **watch_options: Any) -> None:
        LightningRecorder.__init__(self, run_dir, **watch_options)
