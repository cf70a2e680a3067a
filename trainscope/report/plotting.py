"""Shared plotting pieces of the report: the Section value, styling, marks, NaN markers, epochs.

Every string that came from the run (layer, metric and file names) goes through `pe()` before it
reaches plotly, because plotly renders a subset of HTML inside labels and hover text.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.graph_objects as go

from trainscope.report import data as D
from trainscope.report.downsample import envelope
from trainscope.store.run import Run

SEVERITY_COLORS = {"error": "#dc2626", "warning": "#d97706", "info": "#0d9488"}
TRAIN_COLOR = "#2563eb"
VAL_COLOR = "#9333ea"
PALETTE = ("#2563eb", "#9333ea", "#0891b2", "#65a30d", "#db2777", "#475569", "#ca8a04", "#7c3aed")
BAD_COLOR = "#dc2626"
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"
HEALTHY_UPDATE_BAND = (1e-4, 1e-1)  # ||dW||/||W|| per step; ~1e-3 is typical (prior-art-rules.md)
MAX_LINE_POINTS = 2000  # per series on the loss/LR plots
MAX_HEATMAP_COLS = 300
LINE_POINT_BUDGET = 60000  # summed over all per-layer lines of one figure


def pe(text: Any) -> str:
    """Escape for plotly labels: plotly turns <b>, <a href>, &amp; ... in text into markup."""
    return html.escape(str(text), quote=False)


@dataclass
class Section:
    id: str  # anchor: "fig-<id>"
    title: str
    caption: str  # what to look for, in one or two sentences (plain text, escaped on output)
    figure: go.Figure | None = None
    table_html: str | None = None  # already escaped HTML (the init table)
    notes: list[str] = field(default_factory=list)  # plain text
    marks: list[D.Mark] = field(default_factory=list)


# ----------------------------------------------------------------------------- shared styling


# A small template instead of "plotly_white": that one carries defaults for every trace type and
# deep-copying it into each figure was half the render time of a small report.
TEMPLATE = go.layout.Template(layout=dict(
    paper_bgcolor="white", plot_bgcolor="white", colorway=list(PALETTE),
    xaxis=dict(gridcolor="#eef0f3", linecolor="#9ca3af", zeroline=False, automargin=True),
    yaxis=dict(gridcolor="#eef0f3", linecolor="#9ca3af", zeroline=False, automargin=True),
    colorscale=dict(sequential="Viridis"),
))


def layout(fig: go.Figure, height: int, **kw: Any) -> go.Figure:
    margin = dict(l=70, r=30, t=40, b=55)
    margin.update(kw.pop("margin", None) or {})
    fig.update_layout(
        template=TEMPLATE,
        height=height,
        margin=margin,
        font=dict(family=FONT, size=13, color="#1f2937"),
        hoverlabel=dict(font=dict(family=FONT, size=12)),
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0, font=dict(size=12)),
        **kw,
    )
    fig.update_xaxes(showline=True, linecolor="#9ca3af", ticks="outside", tickcolor="#9ca3af",
                     gridcolor="#eef0f3", zeroline=False, title_font=dict(size=13))
    fig.update_yaxes(showline=True, linecolor="#9ca3af", ticks="outside", tickcolor="#9ca3af",
                     gridcolor="#eef0f3", zeroline=False, title_font=dict(size=13))
    return fig


def buttons(x: float, active: int, buttons: list[dict]) -> dict[str, Any]:
    """A small button group above the plot's top-left corner (the mode bar sits top-right)."""
    return dict(type="buttons", direction="right", showactive=True, active=active, x=x, xanchor="left",
                y=1.0, yanchor="bottom", pad=dict(t=0, r=0, b=34, l=0), font=dict(size=11),
                bgcolor="#f9fafb", bordercolor="#d1d5db", buttons=buttons)


def log_toggle(axis: str = "yaxis", x: float = 0.0, default_log: bool = False,
                decade_ticks: bool = True) -> dict[str, Any]:
    return buttons(x, 1 if default_log else 0, [
        dict(label="linear", method="relayout", args=[{f"{axis}.type": "linear", f"{axis}.dtick": None}]),
        dict(label="log", method="relayout",
             args=[{f"{axis}.type": "log", f"{axis}.dtick": 1 if decade_ticks else None}]),
    ])


def spans_decades(y: np.ndarray, decades: float = 2.0) -> bool:
    pos = y[np.isfinite(y) & (y > 0)]
    return len(pos) > 1 and pos.max() / pos.min() > 10**decades


LOG_AXIS = dict(type="log", dtick=1, exponentformat="power")  # one tick per decade


def log_axis(values: np.ndarray, max_ticks: int = 8) -> dict[str, Any]:
    """Log axis; a tick per decade (or per few) when the data spans several, plotly's own otherwise."""
    v = np.asarray(values, dtype=np.float64)
    if not spans_decades(v, 1.5):
        return dict(type="log")
    pos = v[np.isfinite(v) & (v > 0)]
    span = np.log10(pos.max()) - np.log10(pos.min())
    return dict(LOG_AXIS, dtick=max(1, int(np.ceil(span / max_ticks))))


def vlines(items: list[tuple[float, D.Mark]], xref: str = "x") -> tuple[list[dict], list[dict]]:
    """One dashed line per distinct x, labelled "best epoch 5 · overfitting, no-early-stopping"
    in the color of its most severe finding (two rules pointing at one epoch share a line)."""
    groups: dict[float, list[D.Mark]] = {}
    for x, m in items:
        groups.setdefault(round(float(x), 6), []).append(m)
    shapes, anns = [], []
    for row, (x, ms) in enumerate(sorted(groups.items())):
        worst = max(ms, key=lambda m: m.severity.rank)
        labels = list(dict.fromkeys(m.label for m in ms))
        rules = list(dict.fromkeys(m.rule for m in ms))
        text = f"{' / '.join(labels)} · {', '.join(rules)}"
        sh, an = vline(x, SEVERITY_COLORS[worst.severity.value], text, row % 4, xref)
        shapes.append(sh), anns.append(an)
    return shapes, anns


def vline(x: float, color: str, label: str, row: int, xref: str = "x") -> tuple[dict, dict]:
    shape = dict(type="line", xref=xref, yref="paper", x0=x, x1=x, y0=0, y1=1,
                 line=dict(color=color, width=2, dash="dash"), layer="above")
    ann = dict(x=x, xref=xref, yref="paper", y=1 - 0.075 * row, yanchor="top", xanchor="left",
               text=pe(label), showarrow=False, font=dict(color=color, size=12),
               bgcolor="rgba(255,255,255,0.85)", borderpad=2)
    return shape, ann


def run_extent(run: Run) -> tuple[float, float]:
    """First and last step anything was recorded at."""
    lo, hi = [], []
    for df in (run.scalars, run.layers):
        if not df.empty:
            lo.append(float(df["step"].min())), hi.append(float(df["step"].max()))
    return (min(lo), max(hi)) if lo else (0.0, 0.0)


def worth_shading(rng: tuple[float, float] | None, extent: tuple[float, float]) -> bool:
    """A span covering most of the run highlights nothing."""
    if rng is None:
        return False
    return (rng[1] - rng[0]) < 0.8 * max(extent[1] - extent[0], 1e-9)


def vrect(x0: float, x1: float, color: str, xref: str = "x") -> dict:
    return dict(type="rect", xref=xref, yref="paper", x0=x0, x1=x1, y0=0, y1=1, fillcolor=color,
                opacity=0.10, line=dict(width=0), layer="below")


def bad_markers(x: np.ndarray, y: np.ndarray, kinds: np.ndarray, name: str, xlabel: str,
                 showlegend: bool = True) -> go.Scatter:
    return go.Scatter(
        x=x, y=y, mode="markers", name=pe(f"{name}: NaN/Inf"), legendgroup="bad",
        marker=dict(symbol="x", size=9, color=BAD_COLOR, line=dict(width=1)),
        text=[pe(k) for k in kinds], showlegend=showlegend,
        hovertemplate=f"{pe(name)}<br>{xlabel} %{{x}}: <b>%{{text}}</b><extra></extra>",
    )


def bad_y(ds_x: np.ndarray, ds_y: np.ndarray, bad_x: np.ndarray) -> np.ndarray:
    """Place NaN/Inf markers on the line: at the last finite value before them."""
    if len(ds_x) == 0:
        return np.zeros(len(bad_x))
    i = np.clip(np.searchsorted(ds_x, bad_x, side="right") - 1, 0, len(ds_x) - 1)
    return ds_y[i]


def line(x: np.ndarray, y: np.ndarray, max_points: int, **kw: Any) -> tuple[go.Scatter, Any]:
    ds = envelope(x, y, max_points)
    return go.Scatter(x=ds.x, y=ds.y, mode="lines", **kw), ds


def step_marks(marks: list[D.Mark], extent: tuple[float, float], xref: str = "x") -> tuple[list[dict], list[dict]]:
    shapes = [vrect(*m.step_range, SEVERITY_COLORS[m.severity.value], xref)
              for m in marks if worth_shading(m.step_range, extent)]
    sh, anns = vlines([(st, m) for m in marks for st in m.steps], xref)
    return shapes + sh, anns


# ----------------------------------------------------------------------------- epochs <-> steps


class EpochMap:
    """Convert between epochs and steps using the scalars' epoch column (end of epoch = last step)."""

    def __init__(self, run: Run) -> None:
        df = run.scalars
        df = df[np.isfinite(df["epoch"].to_numpy(dtype=np.float64, na_value=np.nan))] if not df.empty else df
        if df.empty:
            self.epochs = np.empty(0)
            self.last_step = np.empty(0)
        else:
            g = df.groupby("epoch")["step"].max().sort_index()
            self.epochs = g.index.to_numpy(dtype=np.float64)
            self.last_step = g.to_numpy(dtype=np.float64)

    @property
    def known(self) -> bool:
        return len(self.epochs) > 0

    def step_of(self, epoch: float) -> float | None:
        if not self.known:
            return None
        return float(np.interp(epoch, self.epochs, self.last_step))

    def epoch_of(self, step: float) -> float | None:
        if not self.known or len(self.epochs) < 2:
            return None
        return float(np.interp(step, self.last_step, self.epochs))
