"""Compatibility: the probe now lives in `trainscope.probe.probe` and its collectors (see there)."""
from trainscope.probe.probe import Probe, watch

__all__ = ["Probe", "watch"]
