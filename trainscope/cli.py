"""The `trainscope` command line: diagnose runs, browse the rule catalogue.

    trainscope diagnose RUN [--format text|json] [--select ..] [--ignore ..] [--set NAME.param=value]
                            [--fail-on error|warning|info|never] [--config FILE] [--html PATH | --no-html]
    trainscope rules
    trainscope rule NAME|CODE

Exit codes: 0 clean, 1 findings at or above --fail-on, 2 bad input (one line on stderr, no traceback).
Other packages add commands through `register(app)` in trainscope.report.commands and
trainscope.train.commands.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Any, List, Optional

import typer

from trainscope.errors import TrainscopeError

app = typer.Typer(
    name="trainscope",
    help="Why is my PyTorch training run failing, and what should I change?",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

EXTENSIONS = ("trainscope.report.commands", "trainscope.train.commands")
MOUNT_ERRORS: dict[str, str] = {}


class Format(str, Enum):
    text = "text"
    json = "json"


class FailOn(str, Enum):
    error = "error"
    warning = "warning"
    info = "info"
    never = "never"


def fail(message: str) -> typer.Exit:
    """Print one line to stderr and return the exit-2 exception to raise."""
    typer.echo(f"trainscope: error: {message}", err=True)
    return typer.Exit(2)


def _split(values: Optional[List[str]]) -> list[str]:
    """`--select a,b --select c` -> [a, b, c]."""
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def default_html_path(run_path: Path) -> Path:
    """RUN/report.html for a folder; <stem>.report.html next to a log file."""
    if run_path.is_dir():
        return run_path / "report.html"
    return run_path.with_name(f"{run_path.stem}.report.html")


def _write_html(report: Any, path: Path) -> tuple[Path | None, str | None]:
    try:
        from trainscope.report import write_report
    except ImportError as e:
        return None, f"HTML report skipped (trainscope.report unavailable: {e})"
    try:
        # The report lists the rules that could not run too, so silence is not read as health.
        return write_report(report.run, report.findings, path, skipped=report.skipped, crashed=report.crashed), None
    except (OSError, TrainscopeError) as e:
        return None, f"HTML report not written: {e}"


@app.command()
def diagnose(
    run: Path = typer.Argument(..., help="Run directory, or a CSV/TSV/JSON-lines log or TensorBoard event folder."),
    format: Format = typer.Option(Format.text, "--format", "-f", help="Output format."),
    select: Optional[List[str]] = typer.Option(None, "--select", help="Rules to run: names, codes or prefixes (TS1)."),
    ignore: Optional[List[str]] = typer.Option(None, "--ignore", help="Rules to skip: names, codes or prefixes."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Rule parameter, NAME.param=value (repeatable)."),
    fail_on: Optional[FailOn] = typer.Option(None, "--fail-on", help="Exit 1 on findings at or above this severity [default: error]."),
    config: Optional[Path] = typer.Option(None, "--config", help="Config file (trainscope.toml or pyproject.toml)."),
    html: Optional[Path] = typer.Option(None, "--html", help="Where to write the HTML report."),
    no_html: bool = typer.Option(False, "--no-html", help="Do not write the HTML report."),
    attempt: Optional[int] = typer.Option(None, "--attempt", help="Which attempt of a reused run directory to read [default: the latest]."),
    skip_corrupt: bool = typer.Option(False, "--skip-corrupt", help="Leave out chunks that fail their checksum and read the rest."),
) -> None:
    """Diagnose a training run: findings, most severe first, each with its evidence and fixes."""
    from trainscope.rules.config import load_config, merge_settings, parse_set
    from trainscope.rules.engine import diagnose_report
    from trainscope.rules.finding import Severity
    from trainscope.rules.render import render_json, render_text

    if html is not None and no_html:
        raise fail("--html and --no-html exclude each other")
    try:
        cfg = load_config(config if config is not None else Path.cwd())
        sel = _split(select) or cfg.select
        ign = cfg.ignore + _split(ignore)
        settings = merge_settings(cfg.settings, parse_set(set_ or []))
        threshold = fail_on.value if fail_on is not None else (cfg.fail_on or "error")
        if threshold not in [f.value for f in FailOn]:
            raise TrainscopeError(f"fail-on {threshold!r} must be one of error, warning, info, never")
        from trainscope.store.reader import load_any

        if not os.path.lexists(run):
            raise TrainscopeError(f"{run}: no such file or directory")
        the_run = load_any(run, attempt=attempt, skip_corrupt=skip_corrupt)
        report = diagnose_report(the_run, select=sel, ignore=ign, settings=settings)
    except TrainscopeError as e:
        raise fail(str(e)) from None
    except (OSError, ValueError, RecursionError) as e:  # unreadable files, bad values the loaders did not word
        raise fail(f"{run}: {type(e).__name__}: {e}") from None
    notes = _notes(report.run)

    name = report.run.name
    if report.run.meta.get("found_in"):  # a folder holding a run or log: say which one was read
        typer.echo(f"trainscope: reading {report.run.path}", err=True)
    if format is Format.json:
        out = json.loads(render_json(name, report.findings, report.skipped, report.crashed, report.run.source,
                                     report.run.status))
        if report.run.source == "trainscope":
            out["attempt"] = report.run.meta.get("attempt")
            out["attempts"] = report.run.meta.get("attempts")
        out["notes"] = notes
        typer.echo(json.dumps(out, indent=2))
    else:
        text = render_text(str(run), report.findings, report.skipped, report.crashed, report.run.status)
        typer.echo("\n".join([text] + [f"note: {n}" for n in notes]))

    if not no_html:
        written, note = _write_html(report, html or default_html_path(run))
        message = f"HTML report: {written}" if written else note
        typer.echo(message, err=format is Format.json)

    if threshold != "never":
        limit = Severity(threshold).rank
        if any(f.severity.rank >= limit for f in report.findings):
            raise typer.Exit(1)


def _notes(run: Any) -> list[str]:
    """What the reader or importer could not take at face value, and which attempt was read."""
    meta = run.meta
    notes = [str(n) for n in meta.get("notes") or []]
    attempts = meta.get("attempts") or []
    if run.source == "trainscope" and len(attempts) > 1:
        a = meta.get("attempt")
        which = "the latest" if a == max(attempts) else "not the latest"
        notes.insert(0, f"this run directory holds {len(attempts)} attempts ({', '.join(map(str, attempts))}); "
                        f"read attempt {a} ({which}; --attempt N reads another)")
    return notes


@app.command("rules")
def list_rules() -> None:
    """The rule catalogue: code, name, severity, family, title."""
    from trainscope.rules.catalogue import load_catalogue

    try:
        cat = load_catalogue()
    except TrainscopeError as e:
        raise fail(str(e)) from None
    rows = [(r.code, r.name, r.severity.value, r.family, r.title) for r in cat.values()]
    widths = [max(len(row[i]) for row in rows + [("code", "name", "severity", "family", "")]) for i in range(4)]
    typer.echo("  ".join(h.ljust(w) for h, w in zip(("code", "name", "severity", "family"), widths)) + "  title")
    for row in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4])


@app.command("rule")
def show_rule(rule: str = typer.Argument(..., help="Rule name or code, e.g. overfitting or TS103.")) -> None:
    """A rule's documentation: what it detects, why it matters, example, fix, known false positives, parameters."""
    from trainscope.rules.catalogue import find_rule

    try:
        r = find_rule(rule)
    except TrainscopeError as e:
        raise fail(str(e)) from None
    doc = r.doc or {}
    out = [f"{r.code} {r.name} ({r.severity.value}, {r.family}): {r.title}", f"Playbook: {r.reference}", ""]
    out += ["What it does", "    " + doc.get("what", ""), "", "Why is this bad?", "    " + doc.get("why", ""), ""]
    out += ["Example", _indent(doc.get("example", "")), "", "Use instead", _indent(doc.get("fix", "")), ""]
    if doc.get("false_positives", "").strip():
        out += ["Known false positives", "    " + doc["false_positives"].strip(), ""]
    out.append("Fixes suggested")
    out += [f"    {i}. {f}" for i, f in enumerate(r.fixes, 1)]
    if r.params:
        out += ["", "Options (--set " + r.name + ".PARAM=VALUE)"]
        out += [f"    {p.name} = {p.default!r}: {p.help}" for p in r.params.values()]
    typer.echo("\n".join(out))


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.strip("\n").splitlines())


def _mount_extensions() -> None:
    for modname in EXTENSIONS:
        try:
            mod = importlib.import_module(modname)
            mod.register(app)
        except ModuleNotFoundError as e:
            if not (e.name and (modname == e.name or modname.startswith(e.name + "."))):  # not installed: silent
                MOUNT_ERRORS[modname] = f"{type(e).__name__}: {e}"
        except Exception as e:  # noqa: BLE001 - another package's bug must not break `diagnose`
            MOUNT_ERRORS[modname] = f"{type(e).__name__}: {e}"


_mount_extensions()


def _click_exceptions() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """UsageError, ClickException and Abort of click and of the click that typer vendors."""
    mods = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            mods.append(importlib.import_module(name))
        except ImportError:
            pass
    return tuple(tuple(getattr(m, n) for m in mods if hasattr(m, n)) for n in ("UsageError", "ClickException", "Abort"))


def main() -> None:
    """The console script: every error is one line on stderr and exit 2 (click's usage boxes too)."""
    usage, click_error, abort = _click_exceptions()
    try:
        rc = app(standalone_mode=False)
    except usage as e:
        hint = f" (try '{e.ctx.command_path} --help')" if e.ctx is not None else ""
        message = " ".join(e.format_message().split())
        if message:  # (no arguments at all: the help was printed)
            typer.echo(f"trainscope: error: {message}{hint}", err=True)
        sys.exit(2)
    except click_error as e:
        typer.echo(f"trainscope: error: {' '.join(e.format_message().split())}", err=True)
        sys.exit(2)
    except abort:
        typer.echo("trainscope: error: aborted", err=True)
        sys.exit(130)
    except TrainscopeError as e:
        typer.echo(f"trainscope: error: {e}", err=True)
        sys.exit(2)
    except (OSError, RecursionError) as e:
        typer.echo(f"trainscope: error: {type(e).__name__}: {e}", err=True)
        sys.exit(2)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
