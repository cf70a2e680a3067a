"""A finding is a frozen value; text, JSON and HTML render the same list."""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any


class Severity(str, enum.Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        """Higher is more severe (for sorting and --fail-on)."""
        return {"error": 2, "warning": 1, "info": 0}[self.value]


def _plain(v: Any) -> Any:
    """JSON-safe evidence values (numpy scalars -> Python, NaN/Inf -> strings)."""
    if hasattr(v, "item") and callable(v.item):
        try:
            v = v.item()
        except (ValueError, TypeError):
            pass
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


@dataclass(frozen=True)
class Finding:
    name: str  # rule name, kebab-case, e.g. "dead-relu"
    code: str  # rule code, e.g. "TS301"
    severity: Severity
    title: str  # the rule's one-line title
    message: str  # measured value vs threshold, e.g. "grad norm ratio first/last 3.1e-05 < 1e-03"
    layers: tuple[str, ...] = ()
    steps: tuple[int, int] | None = None  # first and last step of the evidence
    evidence: tuple[tuple[str, Any], ...] = ()  # ordered (key, value) pairs
    fixes: tuple[str, ...] = ()  # ordered, filled in with the evidence
    reference: str = ""  # playbook section, e.g. "7.8.3 Gradient Statistics"
    explains: tuple[str, ...] = field(default=())  # names of symptom findings this root cause explains

    @property
    def evidence_dict(self) -> dict[str, Any]:
        return dict(self.evidence)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "code": self.code,
            "severity": self.severity.value,
            "title": self.title,
            "message": self.message,
            "layers": list(self.layers),
            "steps": list(self.steps) if self.steps is not None else None,
            "evidence": {k: _plain(v) for k, v in self.evidence},
            "fixes": list(self.fixes),
            "reference": self.reference,
            "explains": list(self.explains),
        }
