"""When the probe may read a tensor's value on the training thread.

On CPU reading a value costs nothing more than the value itself, so a few checks read at once (the
first NaN/Inf gradient norm, the anomaly triggers, live findings). On an accelerator the same read
would block the training thread until the device caught up (a host sync), so there those checks use
non-blocking copies read when they have arrived, or wait for the flush. `free(t)` says which.

`FREE_ON_CPU = False` makes CPU tensors take the accelerator's path: the host-copy test
(tests/test_probe_scale.py) uses it to show, on a machine without a GPU, that cheap steps make no
host copy at all.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

FREE_ON_CPU = True


def free(t: Any) -> bool:
    """True if reading `t` on the host now cannot stall the device (a CPU tensor, or not a tensor)."""
    if isinstance(t, Tensor):
        return t.is_cpu and FREE_ON_CPU  # `is_cpu`, not `device.type`: no torch.device object per call
    dev = getattr(t, "device", None)
    return dev is None or (dev.type == "cpu" and FREE_ON_CPU)


def async_readable(t: Any) -> bool:
    """True if `t` can be copied to pinned host memory without blocking and read once its event has
    completed (live.HostValue): CUDA tensors."""
    dev = getattr(t, "device", None)
    return dev is not None and dev.type == "cuda"
