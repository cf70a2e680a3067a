"""Assemble the report page: header, findings, sections, embedded data; one offline file.

Safety rules, applied everywhere here: text from the run goes through `esc()` (HTML) and JSON goes
through `json_for_script()` (no `<`, `>` or `&` survive, so nothing can close the <script> block).
A Content-Security-Policy forbids every network fetch, so the file stays offline even if a future
change forgot to escape something.
"""
from __future__ import annotations

import datetime as _dt
import html
import json
import math
import os
from functools import lru_cache
from importlib import resources
from typing import Any, Iterable

import plotly
import plotly.io as pio

from trainscope.report.figures import Section, fmt
from trainscope.rules.finding import Finding, Severity
from trainscope.store.run import Run

CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
       "img-src data: blob:; font-src data:")
SEVERITIES = (Severity.ERROR, Severity.WARNING, Severity.INFO)


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _strict(obj: Any) -> Any:
    """NaN/Inf are not JSON (JSON.parse and strict parsers reject them): write them as strings."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def json_for_script(obj: Any) -> str:
    """JSON that is safe inside <script type="application/json">: escape <, >, & and line separators."""
    text = obj if isinstance(obj, str) else json.dumps(_strict(obj), ensure_ascii=False, default=str,
                                                       allow_nan=False)
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


@lru_cache(maxsize=None)
def _asset(name: str) -> str:
    return resources.files("trainscope.report").joinpath("assets", name).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def _plotly_js() -> str:
    """The full plotly.js bundle that ships with the installed plotly package."""
    from plotly.offline import get_plotlyjs

    # a literal "</script>" inside the bundle would end our script tag early
    return get_plotlyjs().replace("</script", "<\\/script")


# plotly.js's own "cartesian" partial bundle (npm plotly.js-cartesian-dist-min, MIT, license next to
# it): a third of the full bundle, so a report opens in about half the time (parsing and setting up
# plotly.js is most of it). It is used only when it is the same plotly.js version as the installed
# plotly package's bundle (the figures' JSON is written for that version) and every trace of the
# report is one of its trace types; otherwise the full bundle is embedded.
PARTIAL_BUNDLE = "plotly-cartesian.min.js"
PARTIAL_TRACE_TYPES = frozenset({"bar", "box", "contour", "heatmap", "histogram", "histogram2d",
                                 "histogram2dcontour", "image", "pie", "scatter", "scatterternary", "violin"})


@lru_cache(maxsize=1)
def _partial_js() -> tuple[str, str] | None:
    """(script, version) of the vendored partial bundle, or None if it is missing."""
    import re

    try:
        text = _asset(PARTIAL_BUNDLE)
    except (FileNotFoundError, OSError):
        return None
    m = re.search(r"plotly\.js \(cartesian[^)]*\) v(\d+\.\d+\.\d+\S*)", text[:400])
    return (text.replace("</script", "<\\/script"), m.group(1)) if m else None


def plotly_bundle(trace_types: Iterable[str]) -> tuple[str, str]:
    """(script, description) of the plotly.js to embed for figures of these trace types."""
    version = _plotly_js_version()
    partial = _partial_js()
    if (partial is not None and partial[1] == version and set(trace_types) <= PARTIAL_TRACE_TYPES
            and not os.environ.get("TRAINSCOPE_FULL_PLOTLY")):
        return partial[0], f"{version} (cartesian bundle)"
    return _plotly_js(), version


def _plotly_js_version() -> str:
    try:
        from plotly.offline import get_plotlyjs_version

        return get_plotlyjs_version()
    except ImportError:  # very old plotly
        return plotly.__version__


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Most severe first; the engine's order within a severity."""
    return sorted(findings, key=lambda f: -Severity(f.severity).rank)


# ----------------------------------------------------------------------------- header


def _params(d: Any) -> str:
    if not isinstance(d, dict):
        return ""
    parts = []
    for k, v in d.items():
        if v is None or isinstance(v, (dict, list)) and not v:
            continue
        if isinstance(v, float):
            v = f"{v:.3g}"
        elif isinstance(v, (list, tuple)):
            v = "(" + ", ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v) + ")"
        parts.append(f"{k}={v}")
    return ", ".join(parts)


def _component(meta: Any, params_key: str) -> str:
    if not isinstance(meta, dict) or not meta.get("class"):
        return ""
    return f"{meta['class']}({_params(meta.get(params_key))})"


def _model_summary(meta: dict[str, Any]) -> str:
    model = meta.get("model")
    if not isinstance(model, dict):
        return ""
    mods = model.get("modules") or []
    n_layers = sum(1 for m in mods if isinstance(m, dict) and (m.get("n_params") or 0) > 0)
    parts = [str(model.get("class", "model"))]
    if n_layers:
        parts.append(f"{n_layers} layers with parameters ({len(mods)} modules)")
    if model.get("n_params") is not None:
        p = f"{int(model['n_params']):,} parameters"
        if model.get("n_trainable") is not None and model["n_trainable"] != model["n_params"]:
            p += f" ({int(model['n_trainable']):,} trainable)"
        parts.append(p)
    return " · ".join(parts)


def _steps(run: Run) -> str:
    steps = run.meta.get("steps")
    if steps is None and not run.scalars.empty:
        steps = int(run.scalars["step"].max())
    if steps is None:
        return ""
    out = f"{int(steps):,}"
    ep = run.scalars["epoch"].max() if not run.scalars.empty else float("nan")
    if ep == ep:  # not NaN
        out += f" (epochs up to {ep:g})"
    return out


def run_summary(run: Run) -> dict[str, Any]:
    return {"name": run.name, "path": str(run.path), "status": run.status, "source": run.source,
            "steps": run.meta.get("steps"), "world_size": run.meta.get("world_size")}


def _header(run: Run, findings: list[Finding]) -> str:
    counts = {s: sum(1 for f in findings if Severity(f.severity) is s) for s in SEVERITIES}
    chips = []
    if not findings:
        chips.append('<span class="chip ok">no findings</span>')
    else:
        for s in SEVERITIES:
            n = counts[s]
            word = {"error": "error", "warning": "warning", "info": "info"}[s.value]
            label = f"{n} {word}{'s' if n != 1 and s is not Severity.INFO else ''}"
            chips.append(f'<span class="chip {s.value if n else "zero"}">{esc(label)}</span>')
    status = run.status if run.status in ("finished", "crashed", "running", "incomplete") else "unknown"
    lead = ""
    if findings:  # the one thing to read first
        top = findings[0]
        lead = (f'<a class="lead" href="#finding-1"><span class="muted">most severe:</span> '
                f'{esc(top.title or top.name)} <span class="rule">{esc(top.name)}</span></a>')
    return (
        '<header class="top"><div class="brand">trainscope report</div>'
        f"<h1>{esc(run.name)}</h1>"
        f'<div class="row"><span class="badge status-{status}">{esc(run.status)}</span>'
        f'<div class="verdict" id="verdict">{"".join(chips)}</div>{lead}</div></header>'
    )


def _run_card(run: Run) -> str:
    meta = run.meta
    rows = [
        ("run", f"<span class=\"mono\">{esc(run.path)}</span>"),
        ("source", esc("recorded by trainscope.watch" if run.source == "trainscope" else f"imported from {run.source}")),
        ("model", esc(_model_summary(meta))),
        ("optimizer", esc(_component(meta.get("optimizer"), "defaults"))),
        ("scheduler", esc(_component(meta.get("scheduler"), "params"))),
        ("criterion", esc(_component(meta.get("criterion"), "params"))),
        ("steps", esc(_steps(run))),
        ("ranks", esc(meta.get("world_size")) if (meta.get("world_size") or 1) > 1 else ""),
    ]
    opt = meta.get("optimizer")
    groups = opt.get("param_groups") if isinstance(opt, dict) else None
    if isinstance(groups, list) and len(groups) > 1:
        keep = ("lr", "weight_decay", "momentum", "n_params")
        rows.append(("param groups", esc("; ".join(
            f"{i}: " + _params({k: g[k] for k in keep if k in g}) for i, g in enumerate(groups) if isinstance(g, dict)))))
    body = "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in rows if v)
    return f'<section class="card" id="run"><h2>Run</h2><dl class="summary">{body}</dl></section>'


# ----------------------------------------------------------------------------- findings


def _evidence_value(v: Any) -> str:
    if isinstance(v, (list, tuple, dict, str)) and len(v) == 0:
        return "–"
    if isinstance(v, bool) or v is None:
        return esc(v)
    if isinstance(v, (int, float)) or hasattr(v, "item"):
        return esc(fmt(v))
    if isinstance(v, (list, tuple)):
        return esc(", ".join(str(x) for x in v))
    if isinstance(v, dict):
        return esc(", ".join(f"{k}: {fmt(x) if isinstance(x, (int, float)) else x}" for k, x in v.items()))
    return esc(v)


def _finding_card(f: Finding, anchor: str, section: Section | None) -> str:
    sev = Severity(f.severity).value
    ev = "".join(f'<tr><td class="k">{esc(k)}</td><td class="v">{_evidence_value(v)}</td></tr>'
                 for k, v in f.evidence)
    fixes = "".join(f"<li>{esc(x)}</li>" for x in f.fixes)
    foot = []
    if section is not None:
        foot.append(f'<a class="see" href="#fig-{esc(section.id)}">see {esc(section.title)} &rarr;</a>')
    if f.layers:
        shown = ", ".join(f.layers[:8]) + (f" and {len(f.layers) - 8} more" if len(f.layers) > 8 else "")
        foot.append(f"layers: <span class=\"mono\">{esc(shown)}</span>")
    if f.steps is not None:
        foot.append(f"step {esc(f.steps[0])}" if f.steps[0] == f.steps[1]
                    else f"steps {esc(f.steps[0])}–{esc(f.steps[1])}")
    if f.reference:
        from trainscope.playbook import playbook_url

        foot.append(f'playbook: <a class="ref" href="{esc(playbook_url(f.reference))}">{esc(f.reference)}</a>')
    if f.explains:
        foot.append(f"explains: {esc(', '.join(f.explains))}")
    return (
        f'<article class="finding {sev}" id="{esc(anchor)}" data-rule="{esc(f.name)}">'
        f'<div class="head"><span class="sev sev-{sev}">{esc(sev)}</span>'
        f'<span class="title">{esc(f.title or f.name)}</span>'
        f'<span class="rule">{esc(f.code)} {esc(f.name)}</span></div>'
        f'<div class="message">{esc(f.message)}</div>'
        '<div class="cols">'
        f'<div><h4>Evidence</h4><table class="evidence">{ev or "<tr><td>–</td></tr>"}</table></div>'
        f'<div><h4>Try, in this order</h4><ol class="fixes">{fixes or "<li>–</li>"}</ol></div>'
        "</div>"
        f'<div class="foot">{"".join(f"<span>{x}</span>" for x in foot)}</div>'
        "</article>"
    )


def _rules_not_run(skipped: list[Any], crashed: list[Any]) -> str:
    """Rules that could not run (missing data) or failed: so silence is not mistaken for health."""
    out = ""
    if crashed:
        items = "".join(f"<li><code>{esc(getattr(c, 'name', c))}</code>: {esc(getattr(c, 'error', ''))}</li>"
                        for c in crashed)
        out += (f'<details class="not-run crashed" open><summary>{len(crashed)} rule'
                f'{"s" if len(crashed) != 1 else ""} failed with an internal error (please report it)'
                f"</summary><ul>{items}</ul></details>")
    if skipped:
        items = "".join(f"<li><code>{esc(getattr(s, 'name', s))}</code>: {esc(getattr(s, 'reason', ''))}</li>"
                        for s in skipped)
        out += (f'<details class="not-run"><summary>{len(skipped)} rule{"s" if len(skipped) != 1 else ""} '
                f"could not run on this run</summary><ul>{items}</ul></details>")
    return out


def _findings_block(findings: list[Finding], anchors: list[str], sections: dict[str, Section],
                    targets: list[str], skipped: list[Any], crashed: list[Any]) -> str:
    if not findings:
        body = '<div class="healthy">No findings: every rule that could run on this run stayed silent.</div>'
    else:
        body = '<div class="findings-list">' + "".join(
            _finding_card(f, a, sections.get(t)) for f, a, t in zip(findings, anchors, targets)) + "</div>"
    body += _rules_not_run(skipped, crashed)
    return f'<section class="card" id="findings"><h2>Findings</h2>{body}</section>'


def findings_document(run: Run, findings: list[Finding], skipped: list[Any], crashed: list[Any]) -> dict[str, Any]:
    """The embedded JSON: the same document as `trainscope diagnose --format json`, plus run details."""
    try:
        from trainscope.rules.render import to_json_dict

        doc = to_json_dict(run.name, findings, skipped, crashed, run.source)
    except ImportError:  # the renderer is optional for the report
        doc = {"run": run.name, "source": run.source, "findings": [f.to_dict() for f in findings]}
    doc["run_info"] = run_summary(run)
    return doc


# ----------------------------------------------------------------------------- sections


def _section_html(sec: Section) -> str:
    marks = ""
    seen = set()
    chips = []
    for m in sec.marks:
        if m.anchor in seen:
            continue
        seen.add(m.anchor)
        chips.append(f'<a class="sev sev-{m.severity.value}" href="#{esc(m.anchor)}">{esc(m.rule)}</a>')
    if chips:
        marks = '<div class="marks">' + "".join(chips) + "</div>"
    notes = "".join(f'<div class="note">{esc(n)}</div>' for n in sec.notes)
    body = ""
    if sec.figure is not None:
        fig_json = pio.to_json(sec.figure, validate=False, remove_uids=True)
        # the final height before it is drawn: figures draw lazily (report.js) and must not jump
        height = sec.figure.layout.height
        style = f' style="height:{int(height)}px"' if isinstance(height, (int, float)) and height > 0 else ""
        body = (f'<div class="ts-figure" id="plot-{esc(sec.id)}"{style}></div>'
                f'<script type="application/json" class="ts-figure-data" data-target="plot-{esc(sec.id)}">'
                f"{json_for_script(fig_json)}</script>")
    elif sec.table_html is not None:
        body = f'<div class="table-wrap">{sec.table_html}</div>'
    return (f'<section class="card fig" id="fig-{esc(sec.id)}"><h2>{esc(sec.title)}</h2>'
            f'<p class="caption">{esc(sec.caption)}</p>{marks}{body}{notes}</section>')


MISSING_WHAT = {
    "grad": "gradient flow",
    "act-dead": "dead units",
    "act-stats": "activation statistics",
    "update": "update-to-weight ratios",
    "init": "initialization",
    "lr": "learning rate",
}


def _missing_note(run: Run, present: set[str]) -> str:
    missing = [w for sid, w in MISSING_WHAT.items() if sid not in present]
    if run.source != "trainscope":
        what = f"This run was imported from a {esc(run.source)} log, so the report shows only the metrics it holds."
        if missing:
            what += (f" Not available: {esc(', '.join(missing))}. Record the run with "
                     "<code>trainscope.watch(model, run_dir, optimizer=..., criterion=...)</code> to get them.")
        return f'<div class="note imported">{what}</div>'
    if missing:
        return f'<div class="note">Not recorded in this run: {esc(", ".join(missing))}.</div>'
    return ""


def _toc(sections: list[Section]) -> str:
    links = ['<a href="#run">Run</a>', '<a href="#findings">Findings</a>']
    links += [f'<a href="#fig-{esc(s.id)}">{esc(s.title)}</a>' for s in sections]
    return '<nav class="toc">' + "".join(links) + "</nav>"


def page(run: Run, findings: list[Finding], anchors: list[str], targets: list[str],
         sections: list[Section], present: set[str], skipped: list[Any] = (), crashed: list[Any] = ()) -> str:
    from trainscope import __version__

    by_id = {s.id: s for s in sections}
    findings_json = findings_document(run, findings, list(skipped), list(crashed))
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    torch_v = run.meta.get("torch_version") or run.meta.get("torch") or ""
    bundle_js, bundle_name = plotly_bundle(
        {tr.type for sec in sections if sec.figure is not None for tr in sec.figure.data})
    return "".join([
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="generator" content="trainscope">',
        f"<title>{esc(run.name)} · trainscope report</title>",
        f"<style>{_asset('report.css')}</style></head><body>",
        _header(run, findings),
        _toc(sections),
        "<main>",
        _run_card(run),
        _findings_block(findings, anchors, by_id, targets, list(skipped), list(crashed)),
        _missing_note(run, present),
        "".join(_section_html(s) for s in sections),
        "</main>",
        f"<footer>Generated by trainscope {esc(__version__)} on {esc(now)}"
        + (f" · recorded with torch {esc(torch_v)}" if torch_v else "")
        + f" · self-contained file, plotly.js {esc(bundle_name)} embedded, no network access.</footer>",
        f'<script type="application/json" id="trainscope-findings">{json_for_script(findings_json)}</script>',
        f"<script>{bundle_js}</script>",
        f"<script>{_asset('report.js')}</script>",
        "</body></html>",
    ])
