"""The rule catalogue: one TOML file per rule in top-level `rules/`, shipped in the wheel.

The wheel force-includes `rules/` as `trainscope/_catalogue`; an editable install reads the repo's
`rules/` directly. Each file is validated on load so a typo in a rule file is a clear error naming
the file, not a KeyError deep inside a detector.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from trainscope.errors import TrainscopeError
from trainscope.rules.finding import Severity
from trainscope.rules.registry import Param, RuleSpec

NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
CODE_RE = re.compile(r"^TS\d{3}$")
NEEDS = ("scalars", "validation", "layers", "init", "events", "meta")
REQUIRED = ("name", "code", "family", "severity", "title", "reference", "needs", "fixes", "doc")
DOC_KEYS = ("what", "why", "example", "fix", "false_positives")
OPTIONAL = ("params", "explains")


class CatalogueError(TrainscopeError):
    """A rule file is malformed."""


@dataclass(frozen=True)
class CatalogueRule(RuleSpec):
    """A RuleSpec plus catalogue-only data.

    explains: rule names whose findings this rule's finding explains when both are present
    (root cause -> symptom); merged with a finding's own `explains` by the engine.
    """

    explains: tuple[str, ...] = ()
    source: str = ""  # the file it was read from


def catalogue_dir() -> Path:
    """Where the catalogue lives: package data in a wheel, else the repo's `rules/`."""
    packaged = Path(__file__).resolve().parent.parent / "_catalogue"
    if packaged.is_dir() and any(packaged.glob("*.toml")):
        return packaged
    repo = Path(__file__).resolve().parents[2] / "rules"
    if repo.is_dir():
        return repo
    raise CatalogueError(
        f"rule catalogue not found (looked in {packaged} and {repo}); reinstall trainscope"
    )


def _err(path: Path, msg: str) -> CatalogueError:
    return CatalogueError(f"rule file {path.name}: {msg}")


def parse_rule(path: Path) -> CatalogueRule:
    """Read and validate one rule file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise _err(path, f"not valid TOML ({e})") from None
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise _err(path, f"missing field(s) {', '.join(missing)}")
    unknown = sorted(set(data) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise _err(path, f"unknown field(s) {', '.join(unknown)}")
    name, code = data["name"], data["code"]
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise _err(path, f"name {name!r} is not kebab-case")
    if name != path.stem:
        raise _err(path, f"name {name!r} does not match the file name")
    if not isinstance(code, str) or not CODE_RE.match(code):
        raise _err(path, f"code {code!r} is not TS followed by three digits")
    if data["severity"] not in [s.value for s in Severity]:
        raise _err(path, f"severity {data['severity']!r} is not one of error, warning, info")
    for key in ("family", "title", "reference"):
        if not isinstance(data[key], str) or not data[key].strip():
            raise _err(path, f"{key} must be a non-empty string")
    needs = data["needs"]
    if not isinstance(needs, list) or any(n not in NEEDS for n in needs):
        raise _err(path, f"needs {needs!r} must be a list drawn from {', '.join(NEEDS)}")
    fixes = data["fixes"]
    if not isinstance(fixes, list) or not fixes or not all(isinstance(f, str) for f in fixes):
        raise _err(path, "fixes must be a non-empty list of strings")
    doc = data["doc"]
    if not isinstance(doc, dict):
        raise _err(path, f"[doc] must be a table with string fields {', '.join(DOC_KEYS)}")
    missing_doc = [k for k in DOC_KEYS if k not in doc]
    if missing_doc:
        raise _err(path, f"[doc] is missing field(s) {', '.join(missing_doc)} (needs {', '.join(DOC_KEYS)})")
    not_str = [k for k in DOC_KEYS if not isinstance(doc[k], str)]
    if not_str:
        raise _err(path, f"[doc] field(s) {', '.join(not_str)} must be strings")
    if not doc["false_positives"].strip():
        raise _err(path, "[doc] false_positives must say when the rule can fire on a healthy run (not empty)")
    params: dict[str, Param] = {}
    for pname, table in (data.get("params") or {}).items():
        if not isinstance(table, dict) or "default" not in table:
            raise _err(path, f"[params.{pname}] needs a default")
        params[pname] = Param(pname, table["default"], str(table.get("help", "")))
    explains = data.get("explains", [])
    if not isinstance(explains, list) or not all(isinstance(x, str) for x in explains):
        raise _err(path, "explains must be a list of rule names")
    return CatalogueRule(
        name=name,
        code=code,
        family=data["family"],
        severity=Severity(data["severity"]),
        title=data["title"],
        reference=data["reference"],
        params=params,
        fixes=tuple(fixes),
        needs=tuple(needs),
        doc={k: str(v) for k, v in doc.items()},
        explains=tuple(explains),
        source=str(path),
    )


@lru_cache(maxsize=8)
def _load(directory: str) -> dict[str, CatalogueRule]:
    rules: dict[str, CatalogueRule] = {}
    codes: dict[str, str] = {}
    for path in sorted(Path(directory).glob("*.toml")):
        rule = parse_rule(path)
        if rule.code in codes:
            raise _err(path, f"code {rule.code} is also used by {codes[rule.code]}")
        codes[rule.code] = rule.name
        rules[rule.name] = rule
    if not rules:
        raise CatalogueError(f"rule catalogue {directory} is empty")
    # `explains` naming an unknown rule is harmless at run time (nothing to demote); the
    # catalogue test reports it
    return dict(sorted(rules.items(), key=lambda kv: kv[1].code))


def load_catalogue(directory: str | Path | None = None) -> dict[str, CatalogueRule]:
    """All rules by name, ordered by code. Cached; pass `directory` to read another catalogue."""
    return dict(_load(str(Path(directory) if directory else catalogue_dir())))


def find_rule(token: str, catalogue: dict[str, Any] | None = None) -> CatalogueRule:
    """A rule by name or code (case-insensitive for codes)."""
    cat = catalogue if catalogue is not None else load_catalogue()
    if token in cat:
        return cat[token]
    for rule in cat.values():
        if rule.code == token.upper():
            return rule
    raise TrainscopeError(f"unknown rule {token!r}; valid rules: {', '.join(cat)}")
