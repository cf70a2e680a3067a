"""`trainscope report RUN [--html PATH]`: write the HTML report only (mounted by trainscope.cli)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from trainscope.errors import TrainscopeError


def register(app: typer.Typer) -> None:
    """Add the `report` command to the trainscope CLI."""

    @app.command("report")
    def report(
        run: Path = typer.Argument(..., help="Run directory, or a CSV/TSV/JSON-lines log or TensorBoard event folder."),
        html: Optional[Path] = typer.Option(None, "--html", help="Where to write the report "
                                            "[default: RUN/report.html, or <log>.report.html next to a log file]."),
    ) -> None:
        """Write the self-contained HTML report of a run (findings, loss curves, gradient flow, ...)."""
        import trainscope
        from trainscope.report import default_report_path, write_report
        from trainscope.rules.engine import diagnose_report

        try:
            if not run.exists():
                raise TrainscopeError(f"{run}: no such file or directory")
            result = diagnose_report(trainscope.load_run(run))
            findings = result.findings
            path = write_report(result.run, findings, html or default_report_path(run),
                                skipped=result.skipped, crashed=result.crashed)
        except TrainscopeError as e:
            typer.echo(f"trainscope: error: {e}", err=True)
            raise typer.Exit(2) from None
        except (OSError, ValueError) as e:  # unreadable files the loaders did not word
            typer.echo(f"trainscope: error: {run}: {e}", err=True)
            raise typer.Exit(2) from None
        counts = {s: sum(1 for f in findings if f.severity.value == s) for s in ("error", "warning", "info")}
        plural = {"error": "errors", "warning": "warnings", "info": "info"}
        summary = ", ".join(f"{n} {s if n == 1 else plural[s]}" for s, n in counts.items() if n) or "no findings"
        typer.echo(f"HTML report: {path} ({summary})")
