"""The initialization table: per weight, its variance against the target of the nonlinearity after it."""
from __future__ import annotations

import html
from typing import Any

import numpy as np

from trainscope.report import data as D
from trainscope.report.plotting import Section
from trainscope.store.run import Run

# ----------------------------------------------------------------------------- initialization table


def fmt(v: Any) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return html.escape(str(v)) if v is not None and not (isinstance(v, float)) else "–"
    if not np.isfinite(f):
        return "–" if np.isnan(f) else html.escape(str(f))
    if f == int(f) and abs(f) < 1e6:
        return f"{int(f)}"
    return f"{f:.3g}" if 1e-3 <= abs(f) < 1e4 else f"{f:.2e}"


def init_section(run: Run, marks: list[D.Mark], ok_range: tuple[float, float] = (0.5, 2.0)) -> Section | None:
    df = D.main_rank(run.init)
    if df.empty:
        return None
    df = df.sort_values(["order", "param"], kind="stable") if "order" in df else df
    flagged = {layer: mk for mk in marks for layer in mk.layers}
    rows = []
    n_off = 0
    for rec in df.to_dict("records"):
        ratio = rec.get("ratio")
        try:
            r = float(ratio)
        except (TypeError, ValueError):
            r = float("nan")
        off = np.isfinite(r) and not (ok_range[0] <= r <= ok_range[1])
        mk = flagged.get(str(rec.get("layer")))
        cls = " class=\"off\"" if off or mk else ""
        n_off += bool(off)
        ratio_cell = f"<td class=\"num ratio{' bad' if off else ''}\">{fmt(r)}</td>"
        target = f"{html.escape(str(rec.get('target_scheme') or ''))} {fmt(rec.get('target_var'))}".strip()
        flag = ""
        if mk is not None:
            flag = (f" <a class=\"sev sev-{mk.severity.value}\" href=\"#{mk.anchor}\">"
                    f"{html.escape(mk.rule)}</a>")
        rows.append(
            f"<tr{cls}><td class=\"name\">{html.escape(str(rec.get('layer', '')))}{flag}</td>"
            f"<td>{html.escape(str(rec.get('param', '')))}</td><td>{html.escape(str(rec.get('module_type', '')))}</td>"
            f"<td class=\"num\">{fmt(rec.get('fan_in'))}</td><td class=\"num\">{fmt(rec.get('fan_out'))}</td>"
            f"<td>{html.escape(str(rec.get('nonlinearity') or ''))}</td>"
            f"<td class=\"num\">{fmt(rec.get('var'))}</td><td class=\"num\">{target}</td>{ratio_cell}"
            f"<td>{html.escape(str(rec.get('scheme') or ''))}</td></tr>"
        )
    table = (
        "<table class=\"init\"><thead><tr><th>layer</th><th>parameter</th><th>type</th><th>fan_in</th>"
        "<th>fan_out</th><th>followed by</th><th>Var(W)</th><th>target</th><th>ratio</th>"
        "<th>looks like</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )
    notes = [f"{n_off} of {len(rows)} parameters have a variance ratio outside "
             f"{ok_range[0]:g}–{ok_range[1]:g} (highlighted)."] if n_off else []
    return Section("init", "Initialization", "Weight variance at initialization against the target of the "
                   "nonlinearity that follows (He for ReLU, Xavier for tanh/sigmoid). PyTorch's default "
                   "Linear init gives a ratio of about 0.17 against He.", table_html=table, notes=notes, marks=marks)
