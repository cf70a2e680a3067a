"""Text and JSON renderings of a diagnosis. Renderers only format; they never compute."""
from __future__ import annotations

import json
from collections import Counter
from typing import Any

from trainscope.rules.finding import Finding, Severity


def _num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_num(x) for x in v) + "]"
    return str(v)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def summary_line(findings: list[Finding], skipped: list[Any] = (), crashed: list[Any] = (),
                 status: str | None = None) -> str:
    """"3 findings: 1 error, 2 warnings; 2 rules could not run (no layer statistics)"."""
    if findings:
        counts = Counter(f.severity for f in findings)
        parts = [_plural(counts[s], s.value) if s is not Severity.INFO else f"{counts[s]} info"
                 for s in Severity if counts[s]]
        line = f"{_plural(len(findings), 'finding')}: {', '.join(parts)}"
    else:
        line = "no findings"
    if skipped:
        counts = Counter(s.reason for s in skipped).most_common()
        shown = [r if n == 1 else f"{r} x{n}" for r, n in counts[:2]]
        if len(counts) > 2:
            shown.append(f"{len(counts) - 2} other reasons")
        line += f"; {_plural(len(skipped), 'rule')} could not run ({', '.join(shown)})"
    if crashed:
        line += f"; {_plural(len(crashed), 'rule')} failed with an internal error ({', '.join(c.name for c in crashed)})"
    if status in ("crashed", "running", "incomplete"):
        line += f"; the run is {status}: its record may end early"
    return line


def render_finding(run_name: str, f: Finding) -> str:
    lines = [f"{run_name}: {f.code} {f.severity.value} {f.name}  {f.message}"]
    if f.layers:
        lines.append(f"    layers: {', '.join(f.layers)}")
    if f.steps is not None:
        lines.append(f"    steps: {f.steps[0]}-{f.steps[1]}")
    if f.evidence:
        lines.append("    evidence: " + ", ".join(f"{k}={_num(v)}" for k, v in f.evidence))
    for i, fix in enumerate(f.fixes, 1):
        lines.append(f"    fix {i}: {fix}")
    if f.reference:
        lines.append(f"    see: playbook {f.reference} (trainscope rule {f.name})")
    return "\n".join(lines)


def render_text(run_name: str, findings: list[Finding], skipped: list[Any] = (), crashed: list[Any] = (),
                status: str | None = None) -> str:
    blocks = [render_finding(run_name, f) for f in findings]
    for c in crashed:
        blocks.append(f"{run_name}: {c.code} internal-error {c.name}  the detector failed: {c.error}")
    blocks.append(summary_line(findings, skipped, crashed, status))
    return "\n\n".join(blocks)


def to_json_dict(run_name: str, findings: list[Finding], skipped: list[Any] = (), crashed: list[Any] = (),
                 source: str | None = None, status: str | None = None) -> dict[str, Any]:
    keys = ("name", "code", "severity", "message", "layers", "steps", "evidence", "fixes", "reference", "title",
            "explains")
    return {
        "run": run_name,
        "source": source,
        "status": status,
        "findings": [{k: f.to_dict()[k] for k in keys} for f in findings],
        "skipped": [s.to_dict() for s in skipped],
        "errors": [c.to_dict() for c in crashed],
        "summary": summary_line(findings, skipped, crashed, status),
    }


def render_json(run_name: str, findings: list[Finding], skipped: list[Any] = (), crashed: list[Any] = (),
                source: str | None = None, status: str | None = None) -> str:
    return json.dumps(to_json_dict(run_name, findings, skipped, crashed, source, status), indent=2)
