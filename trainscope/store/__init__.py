"""The run store: writer (used by the probe), reader (`load_run`) and importers."""
from trainscope.store.run import Run
from trainscope.store.reader import load_run

__all__ = ["Run", "load_run"]
