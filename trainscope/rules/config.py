"""User configuration of the rule engine: `[tool.trainscope]` in pyproject.toml or `trainscope.toml`.

    [tool.trainscope]                 # in trainscope.toml the table prefix is optional
    select = ["TS1", "dead-relu"]     # names, codes or code prefixes
    ignore = ["slow-start"]
    fail-on = "warning"               # CLI only

    [tool.trainscope.rules.overfitting]
    min_gap = 0.05                    # per-rule parameters, see `trainscope rule NAME`

and on the command line `--set overfitting.min_gap=0.05` (value parsed as a TOML scalar).
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainscope.errors import TrainscopeError

CONFIG_FILES = ("trainscope.toml", "pyproject.toml")
TOP_KEYS = ("select", "ignore", "fail-on", "rules")


@dataclass
class Config:
    select: list[str] | None = None
    ignore: list[str] = field(default_factory=list)
    fail_on: str | None = None
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    path: Path | None = None


def _table(path: Path) -> dict[str, Any] | None:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise TrainscopeError(f"cannot read config {path}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise TrainscopeError(f"config {path} is not valid TOML: {e}") from None
    tool = data.get("tool", {}).get("trainscope")
    if tool is not None:
        return tool
    if path.name == "pyproject.toml":
        return None  # a pyproject without our table is not our config
    return data


def find_config(where: str | Path | None = None) -> Path | None:
    """The config file to use: `where` itself if a file, else the first of CONFIG_FILES in it (or CWD)."""
    if where is not None and Path(where).is_file():
        return Path(where)
    if where is not None and not Path(where).exists():
        raise TrainscopeError(f"config {where} does not exist")
    folder = Path(where) if where is not None else Path.cwd()
    for name in CONFIG_FILES:
        candidate = folder / name
        if candidate.is_file() and _table(candidate) is not None:
            return candidate
    return None


def load_config(where: str | Path | None = None) -> Config:
    """Read the config (empty Config when there is none)."""
    path = find_config(where)
    if path is None:
        return Config()
    table = _table(path) or {}
    unknown = sorted(set(table) - set(TOP_KEYS))
    if unknown:
        raise TrainscopeError(
            f"config {path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(TOP_KEYS)}"
        )

    def names(key: str) -> list[str] | None:
        v = table.get(key)
        if v is None:
            return None
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise TrainscopeError(f"config {path}: {key} must be a list of rule names or codes")
        return v

    rules = table.get("rules", {})
    if not isinstance(rules, dict) or not all(isinstance(v, dict) for v in rules.values()):
        raise TrainscopeError(f"config {path}: [rules.NAME] tables must hold parameter = value pairs")
    fail_on = table.get("fail-on")
    return Config(
        select=names("select"),
        ignore=names("ignore") or [],
        fail_on=str(fail_on) if fail_on is not None else None,
        settings={k: dict(v) for k, v in rules.items()},
        path=path,
    )


def parse_set(items: list[str]) -> dict[str, dict[str, Any]]:
    """`["overfitting.min_gap=0.05", ...]` -> {"overfitting": {"min_gap": 0.05}}."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        rule, dot, param = key.strip().partition(".")
        if not sep or not dot or not rule or not param:
            raise TrainscopeError(f"--set {item!r}: expected NAME.param=value, e.g. overfitting.min_gap=0.05")
        out.setdefault(rule, {})[param.strip()] = parse_scalar(raw.strip())
    return out


def parse_scalar(raw: str) -> Any:
    """A TOML scalar (number, bool, quoted string); anything else is taken as a bare string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def merge_settings(*layers: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """Later layers override earlier ones, parameter by parameter."""
    out: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for rule, params in (layer or {}).items():
            out.setdefault(rule, {}).update(params)
    return out
