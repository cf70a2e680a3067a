"""The rule engine: run every selected detector on a run and return ordered findings.

Flow: resolve the selection and parameters against the catalogue -> skip rules whose data the run
lacks (`needs`) -> run each detector, turning `NotApplicable` into a skipped entry and any other
exception into a crashed entry (one broken detector never aborts a diagnosis) -> let root causes
explain their symptoms -> sort.

Root causes and symptoms. A finding may name the rules it explains (`Finding.explains`, filled by
the detector, plus the catalogue's static `explains` list). When a finding R explains a finding S
that is also present, S stays in the list (the evidence is still true and useful) but is demoted:
severity becomes info, the message gets "(explained by R)", and `explained_by` is added to its
evidence. The root cause takes the highest severity among the findings it explains, so nothing
becomes less urgent overall: a warning-level `lr-too-high` that explains an error-level
`divergence` is reported as an error, with divergence as an info note under it. So
`softmax-before-cross-entropy` + a flat loss reads as one error and an info note, not two errors.
Two findings that explain each other are both kept as they are.

Ordering: severity (error, warning, info), then findings that explain others before the rest, then
the rule family from causes to symptoms (loop/wiring bugs TS6, initialization TS4, learning rate
TS5, gradients TS2, activations TS3, loss curves TS1), then code, then first step.
"""
from __future__ import annotations

import contextlib
import dataclasses
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from trainscope.errors import TrainscopeError
from trainscope.rules.catalogue import CatalogueRule, load_catalogue
from trainscope.rules.config import load_config, merge_settings
from trainscope.rules.finding import Finding, Severity
from trainscope.rules.registry import DETECTORS, Context, NotApplicable
from trainscope.rules.signals import has_validation
from trainscope.store.run import Run

# causes before symptoms, by the code's family digit (TS<digit>xx)
FAMILY_ORDER = {"6": 0, "4": 1, "5": 2, "2": 3, "3": 4, "1": 5}

NEED_REASONS = {
    "scalars": "no scalar metrics",
    "validation": "no validation metric",
    "layers": "no layer statistics",
    "init": "no initialization statistics",
    "events": "no probe events",
    "meta": "no model metadata",
}


@dataclass(frozen=True)
class Skipped:
    """A rule that could not run on this run, and why."""

    name: str
    code: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "code": self.code, "reason": self.reason}


@dataclass(frozen=True)
class Crashed:
    """A detector that raised: an internal error of trainscope, reported instead of aborting."""

    name: str
    code: str
    error: str
    traceback: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "code": self.code, "error": self.error}


@dataclass
class Report:
    run: Run
    findings: list[Finding]
    skipped: list[Skipped] = field(default_factory=list)
    crashed: list[Crashed] = field(default_factory=list)
    rules_run: list[str] = field(default_factory=list)


def _load_detectors() -> None:
    import trainscope.rules.detectors  # noqa: F401  (registers every detector module)


def load_run_any(run: Run | str | Path) -> Run:
    """A Run from a Run, a run directory or a log file."""
    if isinstance(run, Run):
        return run
    path = Path(run)
    if not path.exists():
        raise TrainscopeError(f"{path}: no such file or directory")
    try:
        from trainscope.store.reader import load_any
    except ImportError:  # reader not available: logs only
        from trainscope.store.importers import import_log

        return import_log(path)
    return load_any(path)


def resolve_selection(
    catalogue: dict[str, CatalogueRule],
    select: Iterable[str] | None = None,
    ignore: Iterable[str] | None = None,
) -> list[str]:
    """Rule names selected, in catalogue order. Tokens: name, code, code prefix ("TS1"), or "ALL"."""

    def expand(token: str) -> set[str]:
        t = token.strip()
        if t.upper() == "ALL":
            return set(catalogue)
        if t in catalogue:
            return {t}
        hits = {n for n, r in catalogue.items() if r.code.startswith(t.upper())} if t.upper().startswith("TS") else set()
        if not hits:
            raise TrainscopeError(
                f"unknown rule {t!r}; valid names: {', '.join(catalogue)} (or codes/prefixes such as TS1, TS203)"
            )
        return hits

    chosen = set(catalogue) if not select else set().union(*(expand(t) for t in select))
    for t in ignore or ():
        chosen -= expand(t)
    return [n for n in catalogue if n in chosen]


def resolve_params(
    catalogue: dict[str, CatalogueRule], settings: dict[str, dict[str, Any]] | None
) -> dict[str, dict[str, Any]]:
    """Each rule's parameters: catalogue defaults overridden by `settings` (keyed by name or code)."""
    out = {name: {p.name: p.default for p in rule.params.values()} for name, rule in catalogue.items()}
    by_code = {r.code: n for n, r in catalogue.items()}
    for key, values in (settings or {}).items():
        name = key if key in catalogue else by_code.get(str(key).upper())
        if name is None:
            raise TrainscopeError(f"unknown rule {key!r} in settings; valid names: {', '.join(catalogue)}")
        rule = catalogue[name]
        for pname, value in values.items():
            if pname not in rule.params:
                valid = ", ".join(rule.params) or "none"
                raise TrainscopeError(f"rule {name} has no parameter {pname!r}; valid parameters: {valid}")
            out[name][pname] = _coerce(name, pname, rule.params[pname].default, value)
    return out


def _coerce(rule: str, pname: str, default: Any, value: Any) -> Any:
    """Keep a parameter's type: an int where a float is expected is fine, a string is not."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, (int, float)):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value) if isinstance(default, float) else (int(value) if float(value).is_integer() else value)
    elif isinstance(default, str):
        return str(value)
    elif isinstance(default, list) and isinstance(value, list):
        return value
    else:
        return value
    raise TrainscopeError(
        f"{rule}.{pname}={value!r}: expected a {type(default).__name__} like the default {default!r}"
    )


def missing_need(run: Run, needs: Iterable[str]) -> str | None:
    """The reason a rule cannot run on `run`, or None if its data is there."""
    for need in needs:
        if need == "scalars" and run.scalars.empty:
            return NEED_REASONS[need]
        if need == "validation" and not has_validation(run):
            return NEED_REASONS[need]
        if need == "layers" and run.layers.empty:
            return NEED_REASONS[need]
        if need == "init" and run.init.empty:
            return NEED_REASONS[need]
        if need == "events" and run.events.empty and run.source != "trainscope":
            return NEED_REASONS[need]
        if need == "meta" and not run.meta.get("model"):
            return NEED_REASONS[need]
    return None


def explain(findings: list[Finding], catalogue: dict[str, CatalogueRule]) -> list[Finding]:
    """Demote symptoms explained by a root cause present in the same run (see module doc)."""

    def explained_names(f: Finding) -> set[str]:
        # an info finding is, by its own detector's judgement, not harm measured in this run: it cannot
        # be the cause of a symptom (and must not be raised to that symptom's severity)
        if f.severity == Severity.INFO:
            return set(f.explains) - {f.name}
        static = catalogue[f.name].explains if f.name in catalogue else ()
        return (set(f.explains) | set(static)) - {f.name}

    roots = [(f, explained_names(f)) for f in findings]
    explained_by: dict[int, list[str]] = {}
    for i, f in enumerate(findings):
        by = [r.name for r, names in roots if f.name in names and r.name not in explained_names(f)]
        if by:
            explained_by[i] = list(dict.fromkeys(by))  # unique, in order
    # a root cause is as urgent as the worst symptom it explains
    worst: dict[str, Severity] = {}
    for i, by in explained_by.items():
        for name in by:
            cur = worst.get(name)
            if cur is None or findings[i].severity.rank > cur.rank:
                worst[name] = findings[i].severity
    out: list[Finding] = []
    for i, f in enumerate(findings):
        if i in explained_by:
            by = explained_by[i]
            f = dataclasses.replace(
                f,
                severity=Severity.INFO,
                message=f"{f.message} (explained by {', '.join(by)})",
                evidence=f.evidence + (("explained_by", ", ".join(by)),),
            )
        elif f.name in worst and worst[f.name].rank > f.severity.rank:
            f = dataclasses.replace(
                f, severity=worst[f.name], evidence=f.evidence + (("raised_from", f.severity.value),)
            )
        out.append(f)
    return out


def sort_findings(findings: list[Finding], catalogue: dict[str, CatalogueRule] | None = None) -> list[Finding]:
    present = {f.name for f in findings}
    cat = catalogue or {}

    def explains_present(f: Finding) -> bool:
        static = cat[f.name].explains if f.name in cat else ()
        return bool((set(f.explains) | set(static)) & (present - {f.name}))

    def key(f: Finding) -> tuple:
        digit = f.code[2:3] if f.code.startswith("TS") else ""
        return (
            -f.severity.rank,
            0 if explains_present(f) else 1,
            FAMILY_ORDER.get(digit, 9),
            f.code,
            f.steps[0] if f.steps else -1,
        )

    return sorted(findings, key=key)


def diagnose_report(
    run: Run | str | Path,
    select: Iterable[str] | None = None,
    ignore: Iterable[str] | None = None,
    settings: dict[str, dict[str, Any]] | None = None,
    config_path: str | Path | None = None,
) -> Report:
    """Findings plus the rules that were skipped or crashed.

    `config_path`: a config file or a folder holding trainscope.toml / pyproject.toml. The Python
    API reads no config unless given one (the CLI looks in the current directory). Explicit
    arguments win: `select` replaces the config's, `ignore` adds to it, `settings` override it.
    """
    catalogue = load_catalogue()
    _load_detectors()
    cfg = load_config(config_path) if config_path is not None else None
    if cfg is not None:
        select = select if select else cfg.select
        ignore = list(cfg.ignore) + list(ignore or [])
        settings = merge_settings(cfg.settings, settings)
    names = resolve_selection(catalogue, select, ignore)
    params = resolve_params(catalogue, settings)
    the_run = load_run_any(run)

    report = Report(run=the_run, findings=[])
    cached = getattr(the_run, "cached_scalars", None)  # the rules ask for the same series many times
    with cached() if cached is not None else contextlib.nullcontext():
        for name in names:
            rule = catalogue[name]
            fn = DETECTORS.get(name)
            if fn is None:
                report.crashed.append(Crashed(name, rule.code, "no detector registered for this rule"))
                continue
            reason = missing_need(the_run, rule.needs)
            if reason is not None:
                report.skipped.append(Skipped(name, rule.code, reason))
                continue
            try:
                found = list(fn(Context(the_run, rule, params[name])) or ())
            except NotApplicable as e:
                report.skipped.append(Skipped(name, rule.code, str(e) or "not applicable"))
                continue
            except Exception as e:  # noqa: BLE001 - a broken detector must not abort the diagnosis
                report.crashed.append(
                    Crashed(name, rule.code, f"{type(e).__name__}: {e}", traceback.format_exc())
                )
                continue
            report.rules_run.append(name)
            report.findings.extend(found)
        report.findings = sort_findings(explain(report.findings, catalogue), catalogue)
    return report


def diagnose(
    run: Run | str | Path,
    select: Iterable[str] | None = None,
    ignore: Iterable[str] | None = None,
    settings: dict[str, dict[str, Any]] | None = None,
    config_path: str | Path | None = None,
) -> list[Finding]:
    """Findings for a run, most important first (see `diagnose_report` for skipped/crashed rules)."""
    return diagnose_report(run, select, ignore, settings, config_path).findings
