"""How numbers are written in findings and reports: the one place that decides it."""
from __future__ import annotations

import math
from typing import Any


def fmt(x: Any, digits: int = 3) -> str:
    """A number as a message shows it: `digits` significant digits, scientific when tiny or huge."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == 0:
        return "0"
    a = abs(v)
    if a < 1e-2 or a >= 1e4:
        return f"{v:.{max(1, digits - 2)}e}"
    return f"{v:.{digits}g}"


def sig1(x: float) -> str:
    """A suggested value rounded to one significant digit (3e-04, 0.03, 1)."""
    if not math.isfinite(x) or x <= 0:
        return fmt(x)
    exp = math.floor(math.log10(x))
    mant = round(x / 10**exp)
    if mant == 10:
        mant, exp = 1, exp + 1
    v = mant * 10.0**exp
    return f"{v:.0e}" if (v < 1e-2 or v >= 1e4) else f"{v:g}"
