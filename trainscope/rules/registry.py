"""Detector registry and the context a detector works in.

A detector is a small function registered under a rule name from the catalogue in top-level
`rules/`. It reads the run's frames (never the live model), and returns findings built with
`ctx.finding(...)`, which fills code, severity, title, fixes and reference from the catalogue.
A detector that lacks the data it needs raises `NotApplicable(reason)`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from trainscope.rules.finding import Finding, Severity
from trainscope.store.run import Run


class NotApplicable(Exception):
    """The rule could not run on this run (e.g. an imported CSV has no layer statistics)."""


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    help: str = ""


@dataclass(frozen=True)
class RuleSpec:
    """One catalogue entry (rules/<name>.toml)."""

    name: str
    code: str
    family: str
    severity: Severity
    title: str
    reference: str
    params: Mapping[str, Param]
    fixes: tuple[str, ...]
    needs: tuple[str, ...] = ()  # data it needs: scalars, layers, init, events, validation
    doc: Mapping[str, str] = None  # what, why, example, fix  # type: ignore[assignment]


class _Fill(dict):
    """str.format_map that leaves unknown placeholders visible instead of raising."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def fill(template: str, values: Mapping[str, Any]) -> str:
    try:
        return template.format_map(_Fill(values))
    except (ValueError, IndexError, KeyError):
        return template


@dataclass
class Context:
    run: Run
    rule: RuleSpec
    params: Mapping[str, Any]  # defaults overridden by user settings

    def p(self, name: str) -> Any:
        return self.params[name]

    def finding(
        self,
        message: str,
        *,
        layers: Iterable[str] = (),
        steps: tuple[int, int] | None = None,
        evidence: Mapping[str, Any] | None = None,
        fix_values: Mapping[str, Any] | None = None,
        severity: Severity | str | None = None,
        explains: Iterable[str] = (),
        extra_fixes: Iterable[str] = (),
    ) -> Finding:
        evidence = dict(evidence or {})
        values = {**self.params, **evidence, **(fix_values or {}),
                  "layers": ", ".join(layers) if layers else "the model"}
        layers = tuple(layers)
        fixes = tuple(fill(t, values) for t in self.rule.fixes) + tuple(extra_fixes)
        if self.rule.name != "lr-too-high" and any(_raises_lr(f) for f in fixes):
            fixes = _guard_lr(self.run, fixes)
        sev = Severity(severity) if severity is not None else self.rule.severity
        return Finding(
            name=self.rule.name,
            code=self.rule.code,
            severity=sev,
            title=self.rule.title,
            message=message,
            layers=layers,
            steps=(int(steps[0]), int(steps[1])) if steps is not None else None,
            evidence=tuple(evidence.items()),
            fixes=fixes,
            reference=self.rule.reference,
            explains=tuple(explains),
        )


def _raises_lr(fix: str) -> bool:
    from trainscope.rules.evidence import raises_lr

    return raises_lr(fix)


_SIGNS: dict[int, tuple[Run, list[str]]] = {}


def _guard_lr(run: Run, fixes: tuple[str, ...]) -> tuple[str, ...]:
    """Principle 2: a fix that raises the LR is dropped when the run shows the LR may be too high."""
    from trainscope.rules.evidence import guard_lr_fixes, peak_lr, too_high_signs
    from trainscope.rules.detectors._common import fmt

    cached = _SIGNS.get(id(run))
    if cached is None or cached[0] is not run:
        cached = (run, too_high_signs(run))
        if len(_SIGNS) > 64:
            _SIGNS.clear()
        _SIGNS[id(run)] = cached
    peak = peak_lr(run)
    return guard_lr_fixes(fixes, cached[1], fmt(peak) if peak else None)


DetectorFn = Callable[[Context], Iterable[Finding]]
DETECTORS: dict[str, DetectorFn] = {}


def detector(name: str) -> Callable[[DetectorFn], DetectorFn]:
    """Register `fn` as the detector of catalogue rule `name`."""

    def register(fn: DetectorFn) -> DetectorFn:
        if name in DETECTORS:
            raise RuntimeError(f"two detectors for rule {name!r}")
        DETECTORS[name] = fn
        return fn

    return register
