"""The HTML report: one self-contained, offline file showing the run, the findings and the fix.

    from trainscope.report import write_report
    write_report(run, trainscope.diagnose(run), "runs/exp1/report.html")

Findings come first (most severe first); each links to the figure that shows it, and that figure
marks it (best epoch, divergence step, the flagged layers). See docs/report.md.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from trainscope.errors import TrainscopeError
from trainscope.report import data as D
from trainscope.report import figures as F
from trainscope.report.html import page, sort_findings
from trainscope.rules.finding import Finding
from trainscope.store import schema
from trainscope.store.run import Run

__all__ = ["render_report", "write_report", "default_report_path"]


def available_sections(run: Run) -> set[str]:
    """Which figure sections this run has data for (cheap: no figure is built)."""
    names = set(run.scalar_names()) if not run.scalars.empty else set()
    present = {"run"}
    if any(D.is_loss(n) for n in names):
        present.add("loss")
    if any(n.startswith(schema.LR_PREFIX) for n in names):
        present.add("lr")
    if schema.GRAD_NORM in names:
        present.add("grad-norm")
    if D.has_layer_stat(run, "grad", "norm"):
        present.add("grad")
    if D.has_layer_stat(run, "activation", "frac_dead", D.DYING_TYPES):
        present.add("act-dead")
    if D.has_layer_stat(run, "activation", "frac_saturated"):
        present.add("act-sat")
    if D.has_layer_stat(run, "activation", "mean") and D.has_layer_stat(run, "activation", "std"):
        present.add("act-stats")
    if D.has_layer_stat(run, "update", "ratio"):
        present.add("update")
    if not run.init.empty:
        present.add("init")
    return present


def render_report(run: Run, findings: Iterable[Finding], *, skipped: Iterable[Any] = (),
                  crashed: Iterable[Any] = ()) -> str:
    """The report as one HTML string (plotly.js embedded once; no network access when opened).

    skipped/crashed: the engine's rules that could not run or failed (`diagnose_report`), listed
    under the findings so that silence is not mistaken for health.
    """
    try:
        return _render(run, sort_findings(findings), list(skipped), list(crashed))
    finally:
        D.clear_cache()


def _render(run: Run, findings: list[Finding], skipped: list[Any], crashed: list[Any]) -> str:
    anchors = [f"finding-{i + 1}" for i in range(len(findings))]
    present = available_sections(run)
    targets = [D.section_for(f, present) for f in findings]
    marks: dict[str, list[D.Mark]] = {}
    for f, a, t in zip(findings, anchors, targets):
        marks.setdefault(t, []).extend(D.marks_for(f, a))
    sections: list[F.Section] = []
    with np.errstate(all="ignore"):
        for sid, build in F.BUILDERS:
            sec = build(run, marks.get(sid, []))
            if sec is not None:
                sections.append(sec)
    built = {s.id for s in sections}
    # a section the cheap check expected but that came out empty: link to the run card instead
    targets = [t if t in built else "run" for t in targets]
    return page(run, findings, anchors, targets, sections, built, skipped, crashed)


def default_report_path(run_path: str | os.PathLike[str]) -> Path:
    """RUN/report.html for a run directory; <log>.report.html next to an imported log file."""
    p = Path(run_path)
    if p.is_dir():
        return p / "report.html"
    return p.with_name(p.name + ".report.html") if p.suffix == "" else p.with_suffix(".report.html")


def write_report(run: Run, findings: Iterable[Finding], path: str | os.PathLike[str] | None = None, *,
                 skipped: Iterable[Any] = (), crashed: Iterable[Any] = ()) -> Path:
    """Write the report atomically (a half-written file never replaces a good one) and return its path."""
    out = Path(path) if path is not None else default_report_path(run.path)
    text = render_report(run, findings, skipped=skipped, crashed=crashed)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".html", dir=out.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, out)
    except OSError as e:
        raise TrainscopeError(f"cannot write the report to {out}: {e.strerror or e}") from e
    return out
