"""The probe: hooks that record per-layer statistics and training-loop facts into a run store."""
from trainscope.probe.probe import Probe, watch

__all__ = ["Probe", "watch"]
