"""The rule engine: a catalogue of rules (top-level `rules/`), detectors, and `diagnose`.

    from trainscope.rules import diagnose, diagnose_report, load_catalogue
"""
from __future__ import annotations

from typing import Any

from trainscope.rules.finding import Finding, Severity
from trainscope.rules.registry import Context, NotApplicable, RuleSpec, detector

__all__ = [
    "Finding",
    "Severity",
    "Context",
    "NotApplicable",
    "RuleSpec",
    "detector",
    "diagnose",
    "diagnose_report",
    "load_catalogue",
]


def __getattr__(name: str) -> Any:  # lazy: importing the registry must not pull in every detector
    if name in ("diagnose", "diagnose_report"):
        from trainscope.rules import engine

        return getattr(engine, name)
    if name == "load_catalogue":
        from trainscope.rules.catalogue import load_catalogue

        return load_catalogue
    raise AttributeError(name)
