"""Per-layer figures: gradient flow, activations (dead, saturated, mean/std), update-to-weight ratio.

Layers run input -> output (the probe's forward order). Heatmaps keep each column's maximum over
its steps so a burst stays visible; 100+ layers stay a few hundred KB.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from trainscope.report import data as D
from trainscope.report.downsample import envelope, reduce_columns
from trainscope.report.plotting import (
    BAD_COLOR, HEALTHY_UPDATE_BAND, LINE_POINT_BUDGET, LOG_AXIS, MAX_HEATMAP_COLS, MAX_LINE_POINTS,
    SEVERITY_COLORS, TRAIN_COLOR, Section, bad_markers, bad_y, layout, log_axis, pe, run_extent, step_marks,
)
from trainscope.store.run import Run

def highlight_rows(names: list[str], marks: list[D.Mark], xref: str, yref: str) -> list[dict]:
    """Outline the rows of flagged layers on a heatmap (category index as y)."""
    pos = {n: i for i, n in enumerate(names)}
    shapes = []
    for m in marks:
        for layer in m.layers:
            if layer in pos:
                i = pos[layer]
                shapes.append(dict(type="rect", xref=f"{xref} domain", yref=yref, x0=0, x1=1,
                                   y0=i - 0.5, y1=i + 0.5, line=dict(color=SEVERITY_COLORS[m.severity.value],
                                                                      width=2.5)))
    return shapes


def heatmap_height(n_layers: int) -> int:
    per = 18 if n_layers <= 30 else 12 if n_layers <= 80 else 9
    return int(min(2000, max(280, 150 + per * n_layers)))


def layer_labels(m: D.LayerMatrix) -> list[str]:
    return [pe(f"{n} ({t})" if t else n) for n, t in zip(m.layers, m.module_types)]


def heatmap(fig: go.Figure, cols: Any, z: np.ndarray, labels: list[str], row: int, col: int, *,
             colorscale: Any, zmin: float, zmax: float, cbar_title: str, hover: str,
             bad_color: str = BAD_COLOR) -> None:
    fig.add_trace(go.Heatmap(
        x=cols.step_lo, y=labels, z=z, colorscale=colorscale, zmin=zmin, zmax=zmax,
        hovertemplate=hover, hoverongaps=False, ygap=1 if len(labels) <= 40 else 0,
        colorbar=dict(title=dict(text=pe(cbar_title), side="right"), thickness=12, len=0.9),
    ), row=row, col=col)
    if cols.bad.any():
        # NaN/Inf cells as a second, one-color heatmap on top: drawn on a canvas like the first
        # (hundreds of SVG markers made a diverged 100-layer run slow to open)
        # only the column window that holds bad cells (a run that diverged at the end: a few columns)
        hit = np.flatnonzero(cols.bad.any(axis=0))
        c0, c1 = max(int(hit[0]) - 1, 0), min(int(hit[-1]) + 2, cols.bad.shape[1])
        fig.add_trace(go.Heatmap(
            x=cols.step_lo[c0:c1], y=labels, z=np.where(cols.bad[:, c0:c1], 1.0, np.nan).astype(np.float32),
            zmin=0, zmax=1,
            colorscale=[[0, bad_color], [1, bad_color]], showscale=False, hoverongaps=False, name="NaN/Inf",
            hovertemplate="%{y}<br>step %{x}: <b>NaN/Inf</b><extra></extra>",
        ), row=row, col=col)
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="NaN/Inf", showlegend=True,
                                 marker=dict(symbol="square", size=11, color=bad_color)), row=row, col=col)


def layer_font_size(n_layers: int) -> int:
    return 12 if n_layers <= 30 else 10 if n_layers <= 80 else 8


def heatmap_margins(labels: list[str], right: int = 110) -> dict[str, int]:
    """Margins that already fit the layer labels and the colorbar.

    plotly's automargin would find them too, but only by drawing the figure a second time once it
    has measured every label; a first guess that is large enough makes that second pass a no-op
    (automargin stays on, so an unusually wide label still gets its room).
    """
    import html as _html

    size = layer_font_size(len(labels))
    longest = max((len(_html.unescape(lab)) for lab in labels), default=0)
    return dict(l=int(min(420, 30 + 0.62 * size * longest)), r=right, t=40, b=60)


def layer_yaxis(fig: go.Figure, labels: list[str], row: int = 1, col: int = 1,
                 layers: list[str] | None = None, marks: list[D.Mark] | None = None) -> None:
    """Categorical layer axis, input at the top; layers a finding names get a bold colored label."""
    # type=category: nn.Sequential names ("0", "1") would otherwise make a numeric axis
    kw: dict[str, Any] = {}
    if layers is not None and marks:
        color = {}
        for m in sorted(marks, key=lambda m: m.severity.rank):  # most severe wins
            for layer in m.layers:
                color[layer] = SEVERITY_COLORS[m.severity.value]
        if any(n in color for n in layers):
            # labels are already escaped (pe), so wrapping them in plotly's markup is safe
            text = [f"<span style='color:{color[n]}'><b>▶ {lab}</b></span>" if n in color else lab
                    for n, lab in zip(layers, labels)]
            kw = dict(tickmode="array", tickvals=labels, ticktext=text)
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=labels, autorange="reversed",
                     showgrid=False, ticks="",
                     tickfont=dict(size=layer_font_size(len(labels))),
                     row=row, col=col, **kw)


def grad_section(run: Run, marks: list[D.Mark]) -> Section | None:
    m = D.layer_matrix(run, "grad", "norm")
    if m.empty:
        return None
    cols = reduce_columns(m.values, m.steps, MAX_HEATMAP_COLS, "max", bad_cells=m.bad)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.log10(cols.values)
    finite = z[np.isfinite(z)]
    zmin, zmax = (float(np.percentile(finite, 1)), float(np.percentile(finite, 99.5))) if len(finite) else (-6.0, 1.0)
    if zmax - zmin < 1:
        zmin, zmax = zmin - 0.5, zmax + 0.5
    z = np.where(np.isneginf(z), zmin, z).astype(np.float32)  # exactly-zero gradients: bottom of the scale
    labels = layer_labels(m)
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, column_widths=[0.76, 0.24], horizontal_spacing=0.02)
    heatmap(fig, cols, z, labels, 1, 1, colorscale="Viridis", zmin=zmin, zmax=zmax,
             cbar_title="log10 ‖grad‖₂",
             hover="%{y}<br>step %{x}<br>log10 ‖grad‖₂ = %{z:.2f}<extra></extra>")
    fig.data[0].colorbar.update(x=1.01, len=min(1.0, 300 / heatmap_height(len(labels)) + 0.2))
    latest = m.latest()
    flagged = {layer: SEVERITY_COLORS[mk.severity.value] for mk in marks for layer in mk.layers}
    colors = [flagged.get(n, "#64748b") for n in m.layers]
    floor = 10 ** (zmin - 0.5)  # exactly-zero gradients: a stub at the axis start, labelled 0
    pos = np.where(latest > 0, latest, np.where(latest == 0, floor, np.nan))
    fig.add_trace(go.Bar(x=pos, y=labels, orientation="h", marker=dict(color=colors),
                         name="latest", showlegend=False, text=np.where(latest == 0, "0", ""),
                         textposition="outside", cliponaxis=False,
                         hovertemplate="%{y}<br>latest ‖grad‖₂ %{x:.3g}<extra></extra>"), row=1, col=2)
    layer_yaxis(fig, labels, 1, 1, m.layers, marks)
    layer_yaxis(fig, labels, 1, 2)
    fig.update_xaxes(title_text="latest ‖grad‖₂", row=1, col=2, tickangle=0, **log_axis(pos, max_ticks=3))
    fig.update_xaxes(title_text="step (optimizer steps)", row=1, col=1)
    shapes, anns = step_marks(marks, run_extent(run), "x")
    shapes += highlight_rows(m.layers, marks, "x", "y")
    h = heatmap_height(len(labels))
    layout(fig, h, shapes=shapes, annotations=anns)
    fig.update_layout(margin=heatmap_margins(labels),
                      legend=dict(y=1.0, yanchor="bottom", x=0, xanchor="left"))
    fig.update_yaxes(showgrid=False, row=1, col=2)
    notes = []
    if cols.values.shape[1] < len(m.steps):
        notes.append(f"{len(m.steps)} recorded steps shown as {cols.values.shape[1]} columns "
                     "(the maximum of each column's steps, so spikes stay visible).")
    return Section("grad", "Gradient flow", "Per-layer gradient norm over training, input layer at the top. "
                   "A dark band at the top (input side) means vanishing gradients, a bright one exploding "
                   "gradients; the bar shows the latest value per layer.", figure=fig, notes=notes, marks=marks)


# ----------------------------------------------------------------------------- activations


DEAD_SCALE = [[0.0, "#f8fafc"], [0.5, "#fca5a5"], [0.7, "#ef4444"], [1.0, "#7f1d1d"]]
SAT_SCALE = [[0.0, "#f8fafc"], [0.5, "#fcd34d"], [1.0, "#b45309"]]


def _fraction_heatmap(run: Run, stat: str, sec_id: str, title: str, caption: str, scale: Any,
                      cbar: str, marks: list[D.Mark], module_types: tuple[str, ...] | None = None) -> Section | None:
    m = D.layer_matrix(run, "activation", stat, module_types)
    if m.empty:
        return None
    cols = reduce_columns(m.values, m.steps, MAX_HEATMAP_COLS, "max", bad_cells=m.bad)
    labels = layer_labels(m)
    fig = make_subplots(rows=1, cols=1)
    heatmap(fig, cols, cols.values.astype(np.float32), labels, 1, 1, colorscale=scale, zmin=0, zmax=1,
            cbar_title=cbar, bad_color="#111827",
            hover="%{y}<br>step %{x}<br>" + pe(cbar) + " %{z:.0%}<extra></extra>")
    layer_yaxis(fig, labels, layers=m.layers, marks=marks)
    shapes, anns = step_marks(marks, run_extent(run))
    shapes += highlight_rows(m.layers, marks, "x", "y")
    layout(fig, heatmap_height(len(labels)), shapes=shapes, annotations=anns, margin=heatmap_margins(labels))
    fig.update_xaxes(title_text="step (optimizer steps)")
    fig.update_traces(colorbar=dict(tickformat=".0%"), selector=dict(type="heatmap"))
    return Section(sec_id, title, caption, figure=fig, marks=marks)


def dead_section(run: Run, marks: list[D.Mark]) -> Section | None:
    """Dead units of the ReLU layers (only their units can die)."""
    return _fraction_heatmap(
        run, "frac_dead", "act-dead", "Activations: dead units",
        "Fraction of dead units per ReLU layer over training (a dead unit outputs 0 for the whole batch). "
        "70% or more means the layer has stopped learning.",
        DEAD_SCALE, "fraction dead units", marks, D.DYING_TYPES)


def saturation_section(run: Run, marks: list[D.Mark]) -> Section | None:
    return _fraction_heatmap(
        run, "frac_saturated", "act-sat", "Activations: saturation",
        "Fraction of saturated outputs of bounded nonlinearities (sigmoid, tanh, softmax) per layer: "
        "a saturated unit passes almost no gradient.", SAT_SCALE, "fraction saturated", marks)


MAX_ERROR_BARS = 40  # beyond this many layers, mean ± std is drawn as a band


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    return f"rgba({int(h[0:2], 16)},{int(h[2:4], 16)},{int(h[4:6], 16)},{alpha})"


def act_stats_section(run: Run, marks: list[D.Mark]) -> Section | None:
    mean = D.layer_matrix(run, "activation", "mean")
    std = D.layer_matrix(run, "activation", "std")
    if mean.empty or std.empty or mean.layers != std.layers:
        return None
    labels = layer_labels(mean)
    x = list(range(len(labels)))
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("mean ± std of each layer's output", "std of each layer's output (log)"))
    # first and last recorded step where the layer has a value
    firsts, lasts = [], []
    for mat in (mean, std):
        f = np.full(len(mat.layers), np.nan)
        la = np.full(len(mat.layers), np.nan)
        for i, row in enumerate(mat.values):
            idx = np.flatnonzero(np.isfinite(row))
            if len(idx):
                f[i], la[i] = row[idx[0]], row[idx[-1]]
        firsts.append(f), lasts.append(la)
    s0, s1 = int(mean.steps[0]), int(mean.steps[-1])
    many = len(labels) > MAX_ERROR_BARS
    for (mu, sd), name, color, off in (((firsts[0], firsts[1]), f"first (step {s0})", "#94a3b8", -0.12),
                                       ((lasts[0], lasts[1]), f"last (step {s1})", TRAIN_COLOR, 0.12)):
        if many:  # a band instead of hundreds of error bars
            fig.add_trace(go.Scatter(x=x, y=mu + sd, mode="lines", line=dict(width=0), legendgroup=name,
                                     showlegend=False, hoverinfo="skip"), row=1, col=1)
            fig.add_trace(go.Scatter(x=x, y=mu - sd, mode="lines", line=dict(width=0), fill="tonexty",
                                     fillcolor=_rgba(color, 0.18), legendgroup=name, showlegend=False,
                                     hoverinfo="skip"), row=1, col=1)
            fig.add_trace(go.Scatter(x=x, y=mu, mode="lines", line=dict(color=color, width=1.5), name=pe(name),
                                     legendgroup=name, text=labels,
                                     hovertemplate="%{text}<br>mean %{y:.3g}<extra>" + pe(name) + "</extra>"),
                          row=1, col=1)
        else:
            fig.add_trace(go.Scatter(x=np.array(x) + off, y=mu, error_y=dict(type="data", array=sd, thickness=1.5,
                                     width=3, color=color), mode="markers", marker=dict(color=color, size=7),
                                     name=pe(name), legendgroup=name, text=labels,
                                     hovertemplate="%{text}<br>mean %{y:.3g}<extra>" + pe(name) + "</extra>"),
                          row=1, col=1)
        fig.add_trace(go.Scatter(x=x, y=np.where(sd > 0, sd, np.nan), mode="lines" if many else "lines+markers",
                                 marker=dict(color=color, size=6), line=dict(color=color, width=1.5),
                                 name=pe(name), legendgroup=name, showlegend=False, text=labels,
                                 hovertemplate="%{text}<br>std %{y:.3g}<extra>" + pe(name) + "</extra>"),
                      row=2, col=1)
    flagged = [(x[mean.layers.index(layer)], SEVERITY_COLORS[mk.severity.value])
               for mk in marks for layer in mk.layers if layer in mean.layers]
    shapes = [dict(type="rect", xref="x", yref="paper", x0=i - 0.45, x1=i + 0.45, y0=0, y1=1, fillcolor=c,
                   opacity=0.12, line=dict(width=0), layer="below") for i, c in flagged]
    show = len(labels) <= 60
    fig.update_xaxes(tickmode="array", tickvals=x, ticktext=labels, tickangle=-40 if len(labels) > 6 else 0,
                     tickfont=dict(size=11 if len(labels) <= 30 else 8), showticklabels=show, row=2, col=1)
    if many:
        fig.update_xaxes(showgrid=False, ticks="")
    fig.update_yaxes(title_text="std", row=2, col=1, **log_axis(np.concatenate([firsts[1], lasts[1]])))
    fig.update_yaxes(title_text="mean", row=1, col=1)
    layout(fig, 600 + (6 * max(len(max(labels, key=len)), 10) if show else 0), shapes=shapes)
    fig.update_annotations(font=dict(size=13))
    return Section("act-stats", "Activations: mean and spread",
                   "Mean ± std of each layer's output, input to output, at the first and last recorded step. "
                   "A std collapsing towards 0 means collapsed activations; a growing one, exploding activations.",
                   figure=fig, marks=marks)


# ----------------------------------------------------------------------------- update ratio


UPDATE_SCALE = [[0.0, "#1e3a8a"], [0.333, "#93c5fd"], [0.334, "#dcfce7"], [0.5, "#4ade80"],
                [0.833, "#dcfce7"], [0.834, "#fca5a5"], [1.0, "#991b1b"]]  # zmin -6 .. zmax 0 (log10)
MAX_UPDATE_LINES = 20  # beyond this many layers, lines become a heatmap


def _update_heatmap(m: D.LayerMatrix, marks: list[D.Mark], extent: tuple[float, float]) -> go.Figure:
    with np.errstate(divide="ignore", invalid="ignore"):
        logr = np.where(m.values > 0, np.log10(m.values), np.nan)
    cols = reduce_columns(logr, m.steps, MAX_HEATMAP_COLS, "mean", bad_cells=m.bad)
    labels = layer_labels(m)
    fig = make_subplots(rows=1, cols=1)
    heatmap(fig, cols, np.clip(cols.values, -6, 0).astype(np.float32), labels, 1, 1,
             colorscale=UPDATE_SCALE, zmin=-6, zmax=0,
             cbar_title="‖ΔW‖/‖W‖", hover="%{y}<br>step %{x}<br>log10 ‖ΔW‖/‖W‖ = %{z:.2f}<extra></extra>")
    fig.update_traces(colorbar=dict(tickvals=[-6, -5, -4, -3, -2, -1, 0],
                                    ticktext=["1e-6", "1e-5", "1e-4", "1e-3", "1e-2", "1e-1", "1"]),
                      selector=dict(type="heatmap"))
    layer_yaxis(fig, labels, layers=m.layers, marks=marks)
    shapes, anns = step_marks(marks, extent)
    shapes += highlight_rows(m.layers, marks, "x", "y")
    layout(fig, heatmap_height(len(labels)), shapes=shapes, annotations=anns, margin=heatmap_margins(labels))
    fig.update_xaxes(title_text="step (optimizer steps)")
    return fig


def update_section(run: Run, marks: list[D.Mark]) -> Section | None:
    m = D.layer_matrix(run, "update", "ratio")
    if m.empty:
        return None
    labels = layer_labels(m)
    n = len(labels)
    lo, hi = HEALTHY_UPDATE_BAND
    caption = ("Size of each optimizer step relative to the weights, per layer. Inside the healthy band "
               f"({lo:.0e} – {hi:.0e}, about 1e-3 is typical) is fine; far above means the learning rate is "
               "too high, far below that it is too low or the layer is frozen.")
    if n > MAX_UPDATE_LINES:
        notes = [f"{n} layers: green cells are inside the healthy band, red above it, blue below "
                 "(geometric mean of the steps in each column)."]
        return Section("update", "Update-to-weight ratio", caption, figure=_update_heatmap(m, marks, run_extent(run)),
                       notes=notes, marks=marks)
    per_line = int(np.clip(LINE_POINT_BUDGET // max(n, 1), 100, MAX_LINE_POINTS))
    flagged = {layer: SEVERITY_COLORS[mk.severity.value] for mk in marks for layer in mk.layers}
    depth = sample_colorscale("Viridis", [i / max(n - 1, 1) * 0.9 for i in range(n)])
    fig = go.Figure()
    frozen = []
    any_bad = False
    for i, (name, label) in enumerate(zip(m.layers, labels)):
        row = m.values[i]
        ok = np.isfinite(row)
        if ok.any() and np.nanmax(np.where(ok, row, np.nan)) <= 0:
            frozen.append(name)
        y = np.where(row > 0, row, np.nan)
        sel = ok | m.bad[i]
        ds = envelope(m.steps[sel], np.where(m.bad[i][sel], np.inf, y[sel]), per_line)
        hot = name in flagged
        fig.add_trace(go.Scatter(x=ds.x, y=ds.y, mode="lines", name=label, legendgroup=label,
                                 line=dict(color=flagged.get(name, depth[i]), width=3 if hot else 1.3),
                                 opacity=1.0 if hot or not flagged else 0.55, showlegend=n <= 12 or hot,
                                 hovertemplate=f"{label}<br>step %{{x}}<br>‖ΔW‖/‖W‖ %{{y:.2e}}<extra></extra>"))
        if len(ds.bad_x):
            by = bad_y(ds.x, ds.y, ds.bad_x) if len(ds.x) else np.ones(len(ds.bad_x))
            fig.add_trace(bad_markers(ds.bad_x, by, ds.bad_kind, name, "step", showlegend=not any_bad))
            any_bad = True
    shapes = [dict(type="rect", xref="paper", yref="y", x0=0, x1=1, y0=lo, y1=hi, fillcolor="#22c55e",
                   opacity=0.08, line=dict(width=0), layer="below"),
              dict(type="line", xref="paper", yref="y", x0=0, x1=1, y0=1e-3, y1=1e-3,
                   line=dict(color="#16a34a", width=1, dash="dot"), layer="below")]
    anns = [dict(xref="paper", yref="y", x=0.995, y=np.log10(hi), xanchor="right", yanchor="top",
                 text=f"healthy band {lo:.0e} – {hi:.0e}", showarrow=False, font=dict(color="#15803d", size=11)),
            dict(xref="paper", yref="y", x=0.995, y=np.log10(1e-3), xanchor="right", yanchor="bottom",
                 text="typical 1e-3", showarrow=False, font=dict(color="#15803d", size=11))]
    s2, a2 = step_marks(marks, run_extent(run))
    layout(fig, 420, shapes=shapes + s2, annotations=anns + a2)
    fig.update_xaxes(title_text="step (optimizer steps)")
    fig.update_yaxes(title_text="update / weight norm ‖ΔW‖/‖W‖", **LOG_AXIS)
    if n > 12:
        fig.update_layout(legend=dict(orientation="v", y=1, yanchor="top", x=1.01))
    notes = [f"Frozen (update ratio 0): {', '.join(frozen)}"] if frozen else []
    if n > 12:
        notes.append(f"{n} layers, colored by depth (dark = input side); hover a line for its name.")
    return Section("update", "Update-to-weight ratio", caption, figure=fig, notes=notes, marks=marks)
