"""The report's figures: one `Section` per view of the run, each a plotly figure or a table.

Every string that came from the run (layer, metric and file names) goes through `pe()` before it
reaches plotly, because plotly renders a subset of HTML inside labels and hover text. Long
series are downsampled (`downsample.py`) so a 100k-step, 100-layer run stays a few MB.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from trainscope.report import data as D
from trainscope.report.downsample import envelope, reduce_columns
from trainscope.store import schema
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


def _layout(fig: go.Figure, height: int, **kw: Any) -> go.Figure:
    fig.update_layout(
        template="plotly_white",
        height=height,
        margin=dict(l=70, r=30, t=40, b=55),
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


def _buttons(x: float, active: int, buttons: list[dict]) -> dict[str, Any]:
    """A small button group above the plot's top-left corner (the mode bar sits top-right)."""
    return dict(type="buttons", direction="right", showactive=True, active=active, x=x, xanchor="left",
                y=1.0, yanchor="bottom", pad=dict(t=0, r=0, b=34, l=0), font=dict(size=11),
                bgcolor="#f9fafb", bordercolor="#d1d5db", buttons=buttons)


def _log_toggle(axis: str = "yaxis", x: float = 0.0, default_log: bool = False,
                decade_ticks: bool = True) -> dict[str, Any]:
    return _buttons(x, 1 if default_log else 0, [
        dict(label="linear", method="relayout", args=[{f"{axis}.type": "linear", f"{axis}.dtick": None}]),
        dict(label="log", method="relayout",
             args=[{f"{axis}.type": "log", f"{axis}.dtick": 1 if decade_ticks else None}]),
    ])


def _spans_decades(y: np.ndarray, decades: float = 2.0) -> bool:
    pos = y[np.isfinite(y) & (y > 0)]
    return len(pos) > 1 and pos.max() / pos.min() > 10**decades


LOG_AXIS = dict(type="log", dtick=1, exponentformat="power")  # one tick per decade


def log_axis(values: np.ndarray, max_ticks: int = 8) -> dict[str, Any]:
    """Log axis; a tick per decade (or per few) when the data spans several, plotly's own otherwise."""
    v = np.asarray(values, dtype=np.float64)
    if not _spans_decades(v, 1.5):
        return dict(type="log")
    pos = v[np.isfinite(v) & (v > 0)]
    span = np.log10(pos.max()) - np.log10(pos.min())
    return dict(LOG_AXIS, dtick=max(1, int(np.ceil(span / max_ticks))))


def _vlines(items: list[tuple[float, D.Mark]], xref: str = "x") -> tuple[list[dict], list[dict]]:
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
        sh, an = _vline(x, SEVERITY_COLORS[worst.severity.value], text, row % 4, xref)
        shapes.append(sh), anns.append(an)
    return shapes, anns


def _vline(x: float, color: str, label: str, row: int, xref: str = "x") -> tuple[dict, dict]:
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


def _worth_shading(rng: tuple[float, float] | None, extent: tuple[float, float]) -> bool:
    """A span covering most of the run highlights nothing."""
    if rng is None:
        return False
    return (rng[1] - rng[0]) < 0.8 * max(extent[1] - extent[0], 1e-9)


def _vrect(x0: float, x1: float, color: str, xref: str = "x") -> dict:
    return dict(type="rect", xref=xref, yref="paper", x0=x0, x1=x1, y0=0, y1=1, fillcolor=color,
                opacity=0.10, line=dict(width=0), layer="below")


def _bad_markers(x: np.ndarray, y: np.ndarray, kinds: np.ndarray, name: str, xlabel: str,
                 showlegend: bool = True) -> go.Scatter:
    return go.Scatter(
        x=x, y=y, mode="markers", name=pe(f"{name}: NaN/Inf"), legendgroup="bad",
        marker=dict(symbol="x", size=9, color=BAD_COLOR, line=dict(width=1)),
        text=[pe(k) for k in kinds], showlegend=showlegend,
        hovertemplate=f"{pe(name)}<br>{xlabel} %{{x}}: <b>%{{text}}</b><extra></extra>",
    )


def _bad_y(ds_x: np.ndarray, ds_y: np.ndarray, bad_x: np.ndarray) -> np.ndarray:
    """Place NaN/Inf markers on the line: at the last finite value before them."""
    if len(ds_x) == 0:
        return np.zeros(len(bad_x))
    i = np.clip(np.searchsorted(ds_x, bad_x, side="right") - 1, 0, len(ds_x) - 1)
    return ds_y[i]


def _line(x: np.ndarray, y: np.ndarray, max_points: int, **kw: Any) -> tuple[go.Scatter, Any]:
    ds = envelope(x, y, max_points)
    return go.Scatter(x=ds.x, y=ds.y, mode="lines", **kw), ds


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


# ----------------------------------------------------------------------------- loss curves


def loss_section(run: Run, marks: list[D.Mark]) -> Section | None:
    names = [n for n in run.scalar_names() if D.is_loss(n)]
    if not names:
        return None
    # training first, then validation with val_* before test_* (it is the curve early stopping uses)
    names.sort(key=lambda n: (D.is_validation(n), not n.lower().startswith("val"), n))
    emap = EpochMap(run)
    series = [D.scalar_series(run, n) for n in names]
    per_epoch = all(np.isfinite(s.epoch).all() and len(s.step) > 0 for s in series) and emap.known
    # logged once per epoch (typical Keras/Lightning CSV): start on the epoch axis
    default_epoch = per_epoch and all(len(np.unique(s.epoch)) == len(s.step) for s in series)
    fig = go.Figure()
    step_traces: list[int] = []
    epoch_traces: list[int] = []
    notes: list[str] = []
    colors: dict[str, str] = {}
    extra = iter(PALETTE[2:])
    for s in series:
        color = colors[s.name] = (
            VAL_COLOR if D.is_validation(s.name) and VAL_COLOR not in colors.values()
            else TRAIN_COLOR if not D.is_validation(s.name) and TRAIN_COLOR not in colors.values()
            else next(extra, "#64748b")
        )
        label = pe(s.name)
        n_epochs = len(np.unique(s.epoch[np.isfinite(s.epoch)]))
        # smooth series logged every step; a once-per-epoch validation curve is shown as it is
        noisy = len(s.step) > 30 and (n_epochs == 0 or len(s.step) > 1.5 * n_epochs)
        if noisy:
            tr, ds = _line(s.step, s.value, MAX_LINE_POINTS, name=f"{label} (raw)", legendgroup=label,
                           line=dict(color=color, width=1), opacity=0.35,
                           hovertemplate=f"{label}<br>step %{{x}}<br>%{{y:.4g}}<extra>raw</extra>")
            fig.add_trace(tr)
            step_traces.append(len(fig.data) - 1)
            sm = D.smooth(s.value)
            tr2, _ = _line(s.step, sm, MAX_LINE_POINTS, name=f"{label} (smoothed)", legendgroup=label,
                           line=dict(color=color, width=2.5),
                           hovertemplate=f"{label} smoothed<br>step %{{x}}<br>%{{y:.4g}}<extra></extra>")
            fig.add_trace(tr2)
            step_traces.append(len(fig.data) - 1)
        else:
            ds = envelope(s.step, s.value, MAX_LINE_POINTS)
            fig.add_trace(go.Scatter(x=ds.x, y=ds.y, mode="lines+markers", name=label, legendgroup=label,
                                     line=dict(color=color, width=2.5), marker=dict(size=6),
                                     hovertemplate=f"{label}<br>step %{{x}}<br>%{{y:.4g}}<extra></extra>"))
            step_traces.append(len(fig.data) - 1)
        if len(ds.bad_x):
            fig.add_trace(_bad_markers(ds.bad_x, _bad_y(ds.x, ds.y, ds.bad_x), ds.bad_kind, s.name, "step"))
            step_traces.append(len(fig.data) - 1)
            notes.append(f"{s.name} has {int((~np.isfinite(s.value)).sum())} NaN/Inf values "
                         f"(first at step {int(ds.bad_x[0])}), marked with a red x.")
        if per_epoch:
            ex, ey = D.per_epoch_mean(s)
            ok = np.isfinite(ey)
            fig.add_trace(go.Scatter(x=ex[ok], y=ey[ok], mode="lines+markers", name=label, legendgroup=label,
                                     line=dict(color=color, width=2.5), marker=dict(size=6),
                                     hovertemplate=f"{label}<br>epoch %{{x}}<br>%{{y:.4g}}<extra>epoch mean</extra>"))
            epoch_traces.append(len(fig.data) - 1)
            if (~ok).any():
                fig.add_trace(_bad_markers(ex[~ok], _bad_y(ex[ok], ey[ok], ex[~ok]),
                                           np.array(["NaN/Inf"] * int((~ok).sum()), dtype=object), s.name, "epoch"))
                epoch_traces.append(len(fig.data) - 1)
    if not any(D.is_validation(n) for n in names):
        notes.append("No validation loss was logged: overfitting and early stopping cannot be judged "
                     "(log one with probe.log(val_loss=...)).")

    extent = run_extent(run)
    step_items: list[tuple[float, D.Mark]] = []
    epoch_items: list[tuple[float, D.Mark]] = []
    step_shapes, epoch_shapes = [], []
    for m in marks:
        color = SEVERITY_COLORS[m.severity.value]
        for st in m.steps:
            step_items.append((st, m))
            ep = emap.epoch_of(st)
            if ep is not None:
                epoch_items.append((ep, m))
        for ep in m.epochs:
            epoch_items.append((ep, m))
            st = emap.step_of(ep)
            if st is not None:
                step_items.append((st, m))
        if _worth_shading(m.step_range, extent):
            step_shapes.append(_vrect(*m.step_range, color))
            e0, e1 = emap.epoch_of(m.step_range[0]), emap.epoch_of(m.step_range[1])
            if e0 is not None and e1 is not None:
                epoch_shapes.append(_vrect(e0, e1, color))
    sh, step_anns = _vlines(step_items)
    step_shapes += sh
    sh, epoch_anns = _vlines(epoch_items)
    epoch_shapes += sh

    n = len(fig.data)
    vis_step = [i in step_traces for i in range(n)]
    vis_epoch = [i in epoch_traces for i in range(n)]
    use_epoch = default_epoch
    for i, tr in enumerate(fig.data):
        tr.visible = vis_epoch[i] if use_epoch else vis_step[i]
    xtitle_step, xtitle_epoch = "step (optimizer steps)", "epoch"
    all_y = np.concatenate([s.value for s in series])
    use_log = _spans_decades(all_y)  # a divergence would squash the rest of the curve flat
    menus = [_log_toggle(x=0.2 if per_epoch and epoch_traces else 0.0, default_log=use_log,
                         decade_ticks=_spans_decades(all_y, 1.5))]
    if per_epoch and epoch_traces:
        menus.append(_buttons(0.0, 1 if use_epoch else 0, [
                dict(label="by step", method="update",
                     args=[{"visible": vis_step}, {"shapes": step_shapes, "annotations": step_anns,
                                                   "xaxis.title.text": xtitle_step}]),
                dict(label="by epoch", method="update",
                     args=[{"visible": vis_epoch}, {"shapes": epoch_shapes, "annotations": epoch_anns,
                                                    "xaxis.title.text": xtitle_epoch}]),
            ]))
    _layout(fig, 440, updatemenus=menus,
            shapes=epoch_shapes if use_epoch else step_shapes,
            annotations=epoch_anns if use_epoch else step_anns)
    fig.update_layout(margin=dict(t=60), legend=dict(y=1.0, yanchor="top", x=1.01, orientation="v"))
    fig.update_xaxes(title_text=xtitle_epoch if use_epoch else xtitle_step)
    fig.update_yaxes(title_text="loss", **(LOG_AXIS if use_log else {}))
    caption = ("Training and validation loss. Thin lines are raw values, thick lines an exponential "
               "moving average over about 2% of the run. Toggle log scale to see late progress.")
    return Section("loss", "Loss curves", caption, figure=fig, notes=notes, marks=marks)


# ----------------------------------------------------------------------------- other metrics


def metrics_section(run: Run) -> Section | None:
    names = [n for n in run.scalar_names()
             if not D.is_loss(n) and not n.startswith(D.PROBE_PREFIXES) and n != schema.GRAD_NORM]
    if not names:
        return None
    once, series = [], []
    for name in names:
        s = D.scalar_series(run, name)
        (once if len(s.step) == 1 else series).append((name, s))
    notes = ["Logged once: " + ", ".join(f"{n} = {s.value[0]:.4g}" for n, s in once)] if once else []
    if not series:
        return Section("metrics", "Other metrics", "Metrics the training loop logged besides the loss.",
                       notes=notes)
    names = [n for n, _ in series]
    shown = names[:6]
    fig = make_subplots(rows=len(shown), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[pe(n) for n in shown])
    for i, name in enumerate(shown, start=1):
        s = D.scalar_series(run, name)
        ds = envelope(s.step, s.value, MAX_LINE_POINTS)
        mode = "lines" if len(ds.x) > 30 else "lines+markers"
        fig.add_trace(go.Scatter(x=ds.x, y=ds.y, mode=mode, name=pe(name), showlegend=False,
                                 line=dict(color=PALETTE[(i - 1) % len(PALETTE)], width=2),
                                 hovertemplate=f"{pe(name)}<br>step %{{x}}<br>%{{y:.4g}}<extra></extra>"),
                      row=i, col=1)
        if len(ds.bad_x):
            fig.add_trace(_bad_markers(ds.bad_x, _bad_y(ds.x, ds.y, ds.bad_x), ds.bad_kind, name, "step",
                                       showlegend=False), row=i, col=1)
    _layout(fig, 170 + 150 * len(shown))
    fig.update_xaxes(title_text="step (optimizer steps)", row=len(shown), col=1)
    if len(names) > 6:
        notes.append(f"{len(names) - 6} more metrics not shown: {', '.join(names[6:])}")
    return Section("metrics", "Other metrics", "Metrics the training loop logged besides the loss.",
                   figure=fig, notes=notes)


# ----------------------------------------------------------------------------- learning rate


def lr_section(run: Run, marks: list[D.Mark]) -> Section | None:
    names = sorted((n for n in run.scalar_names() if n.startswith(schema.LR_PREFIX)),
                   key=lambda n: (len(n), n))
    if not names:
        return None
    fig = go.Figure()
    for i, name in enumerate(names):
        s = D.scalar_series(run, name)
        group = name[len(schema.LR_PREFIX):]
        tr, ds = _line(s.step, s.value, MAX_LINE_POINTS, name=pe(f"param group {group}"),
                       line=dict(color=PALETTE[i % len(PALETTE)], width=2.5, shape="hv"),
                       hovertemplate=f"group {pe(group)}<br>step %{{x}}<br>lr %{{y:.3g}}<extra></extra>")
        fig.add_trace(tr)
    shapes, anns = _step_marks(marks, run_extent(run))
    all_lr = np.concatenate([D.scalar_series(run, n).value for n in names])
    _layout(fig, 320, updatemenus=[_log_toggle(decade_ticks=_spans_decades(all_lr, 1.5))], shapes=shapes,
            annotations=anns)
    fig.update_layout(margin=dict(t=60), legend=dict(x=0.2))
    fig.update_xaxes(title_text="step (optimizer steps)")
    fig.update_yaxes(title_text="learning rate", exponentformat="e", rangemode="tozero")
    return Section("lr", "Learning rate", "Learning rate of each optimizer param group at every recorded "
                   "step: a warmup or one-cycle schedule shows its shape here.", figure=fig, marks=marks)


def _step_marks(marks: list[D.Mark], extent: tuple[float, float], xref: str = "x") -> tuple[list[dict], list[dict]]:
    shapes = [_vrect(*m.step_range, SEVERITY_COLORS[m.severity.value], xref)
              for m in marks if _worth_shading(m.step_range, extent)]
    sh, anns = _vlines([(st, m) for m in marks for st in m.steps], xref)
    return shapes + sh, anns


# ----------------------------------------------------------------------------- gradients


def grad_norm_section(run: Run, marks: list[D.Mark]) -> Section | None:
    if schema.GRAD_NORM not in set(run.scalar_names()):
        return None
    s = D.scalar_series(run, schema.GRAD_NORM)
    fig = go.Figure()
    tr, ds = _line(s.step, s.value, MAX_LINE_POINTS, name="global grad norm",
                   line=dict(color=TRAIN_COLOR, width=1.5),
                   hovertemplate="step %{x}<br>‖g‖₂ %{y:.3g}<extra></extra>")
    fig.add_trace(tr)
    if len(ds.bad_x):
        fig.add_trace(_bad_markers(ds.bad_x, _bad_y(ds.x, ds.y, ds.bad_x), ds.bad_kind, "grad norm", "step"))
    shapes, anns = _step_marks(marks, run_extent(run))
    log = _spans_decades(ds.y)
    _layout(fig, 300, updatemenus=[_log_toggle(default_log=log, decade_ticks=_spans_decades(ds.y, 1.5))],
            shapes=shapes, annotations=anns)
    fig.update_layout(margin=dict(t=60), showlegend=len(fig.data) > 1, legend=dict(x=0.2))
    fig.update_xaxes(title_text="step (optimizer steps)")
    fig.update_yaxes(title_text="‖gradient‖₂ (all parameters)", **(LOG_AXIS if log else {}))
    return Section("grad-norm", "Global gradient norm", "L2 norm of all gradients before each optimizer "
                   "step (after unscaling). Spikes of orders of magnitude mean unstable training.",
                   figure=fig, marks=marks)


def _highlight_rows(names: list[str], marks: list[D.Mark], xref: str, yref: str) -> list[dict]:
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


def _heatmap_height(n_layers: int) -> int:
    per = 18 if n_layers <= 30 else 12 if n_layers <= 80 else 9
    return int(min(2000, max(280, 150 + per * n_layers)))


def _layer_labels(m: D.LayerMatrix) -> list[str]:
    return [pe(f"{n} ({t})" if t else n) for n, t in zip(m.layers, m.module_types)]


def _heatmap(fig: go.Figure, cols: Any, z: np.ndarray, labels: list[str], row: int, col: int, *,
             colorscale: Any, zmin: float, zmax: float, cbar_title: str, hover: str) -> None:
    fig.add_trace(go.Heatmap(
        x=cols.step_lo, y=labels, z=z, colorscale=colorscale, zmin=zmin, zmax=zmax,
        hovertemplate=hover, hoverongaps=False, ygap=1 if len(labels) <= 40 else 0,
        colorbar=dict(title=dict(text=pe(cbar_title), side="right"), thickness=12, len=0.9),
    ), row=row, col=col)
    if cols.bad.any():
        r, c = np.nonzero(cols.bad)
        if len(r) > 3000:  # enough markers to see the pattern
            keep = np.linspace(0, len(r) - 1, 3000).astype(int)
            r, c = r[keep], c[keep]
        fig.add_trace(go.Scatter(
            x=cols.step_lo[c], y=[labels[i] for i in r], mode="markers", name="NaN/Inf", showlegend=True,
            marker=dict(symbol="x-thin", size=6, color=BAD_COLOR, line=dict(width=1.5, color=BAD_COLOR)),
            hovertemplate="%{y}<br>step %{x}: <b>NaN/Inf</b><extra></extra>",
        ), row=row, col=col)


def _layer_yaxis(fig: go.Figure, labels: list[str], row: int = 1, col: int = 1,
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
                     tickfont=dict(size=12 if len(labels) <= 30 else 10 if len(labels) <= 80 else 8),
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
    labels = _layer_labels(m)
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, column_widths=[0.76, 0.24], horizontal_spacing=0.02)
    _heatmap(fig, cols, z, labels, 1, 1, colorscale="Viridis", zmin=zmin, zmax=zmax,
             cbar_title="log10 ‖grad‖₂",
             hover="%{y}<br>step %{x}<br>log10 ‖grad‖₂ = %{z:.2f}<extra></extra>")
    fig.data[0].colorbar.update(x=1.01, len=min(1.0, 300 / _heatmap_height(len(labels)) + 0.2))
    latest = m.latest()
    flagged = {layer: SEVERITY_COLORS[mk.severity.value] for mk in marks for layer in mk.layers}
    colors = [flagged.get(n, "#64748b") for n in m.layers]
    floor = 10 ** (zmin - 0.5)  # exactly-zero gradients: a stub at the axis start, labelled 0
    pos = np.where(latest > 0, latest, np.where(latest == 0, floor, np.nan))
    fig.add_trace(go.Bar(x=pos, y=labels, orientation="h", marker=dict(color=colors),
                         name="latest", showlegend=False, text=np.where(latest == 0, "0", ""),
                         textposition="outside", cliponaxis=False,
                         hovertemplate="%{y}<br>latest ‖grad‖₂ %{x:.3g}<extra></extra>"), row=1, col=2)
    _layer_yaxis(fig, labels, 1, 1, m.layers, marks)
    _layer_yaxis(fig, labels, 1, 2)
    fig.update_xaxes(title_text="latest ‖grad‖₂", row=1, col=2, tickangle=0, **log_axis(pos, max_ticks=3))
    fig.update_xaxes(title_text="step (optimizer steps)", row=1, col=1)
    shapes, anns = _step_marks(marks, run_extent(run), "x")
    shapes += _highlight_rows(m.layers, marks, "x", "y")
    h = _heatmap_height(len(labels))
    _layout(fig, h, shapes=shapes, annotations=anns)
    fig.update_layout(margin=dict(t=40, b=60), legend=dict(y=1.0, yanchor="bottom", x=1, xanchor="right"))
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
                      cbar: str, marks: list[D.Mark]) -> Section | None:
    m = D.layer_matrix(run, "activation", stat)
    if m.empty:
        return None
    cols = reduce_columns(m.values, m.steps, MAX_HEATMAP_COLS, "max", bad_cells=m.bad)
    labels = _layer_labels(m)
    fig = make_subplots(rows=1, cols=1)
    _heatmap(fig, cols, cols.values.astype(np.float32), labels, 1, 1, colorscale=scale, zmin=0, zmax=1, cbar_title=cbar,
             hover="%{y}<br>step %{x}<br>" + pe(cbar) + " %{z:.0%}<extra></extra>")
    _layer_yaxis(fig, labels, layers=m.layers, marks=marks)
    shapes, anns = _step_marks(marks, run_extent(run))
    shapes += _highlight_rows(m.layers, marks, "x", "y")
    _layout(fig, _heatmap_height(len(labels)), shapes=shapes, annotations=anns)
    fig.update_xaxes(title_text="step (optimizer steps)")
    fig.update_traces(colorbar=dict(tickformat=".0%"), selector=dict(type="heatmap"))
    return Section(sec_id, title, caption, figure=fig, marks=marks)


def dead_section(run: Run, marks: list[D.Mark]) -> Section | None:
    for stat, what in (("frac_dead", "dead units"), ("frac_zero", "zero activations")):
        sec = _fraction_heatmap(
            run, stat, "act-dead", f"Activations: {what}",
            f"Fraction of {what} per layer over training (a dead unit outputs <= 0 for the whole batch). "
            "70% or more in a ReLU layer means it has stopped learning.",
            DEAD_SCALE, f"fraction {what}", marks)
        if sec is not None:
            return sec
    return None


def saturation_section(run: Run, marks: list[D.Mark]) -> Section | None:
    return _fraction_heatmap(
        run, "frac_saturated", "act-sat", "Activations: saturation",
        "Fraction of saturated outputs of bounded nonlinearities (sigmoid, tanh, softmax) per layer: "
        "a saturated unit passes almost no gradient.", SAT_SCALE, "fraction saturated", marks)


def act_stats_section(run: Run, marks: list[D.Mark]) -> Section | None:
    mean = D.layer_matrix(run, "activation", "mean")
    std = D.layer_matrix(run, "activation", "std")
    if mean.empty or std.empty or mean.layers != std.layers:
        return None
    labels = _layer_labels(mean)
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
    for (mu, sd), name, color, off in (((firsts[0], firsts[1]), f"first (step {s0})", "#94a3b8", -0.12),
                                       ((lasts[0], lasts[1]), f"last (step {s1})", TRAIN_COLOR, 0.12)):
        fig.add_trace(go.Scatter(x=np.array(x) + off, y=mu, error_y=dict(type="data", array=sd, thickness=1.5,
                                 width=3, color=color), mode="markers", marker=dict(color=color, size=7),
                                 name=pe(name), legendgroup=name, text=labels,
                                 hovertemplate="%{text}<br>mean %{y:.3g}<extra>" + pe(name) + "</extra>"),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=x, y=np.where(sd > 0, sd, np.nan), mode="lines+markers",
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
    fig.update_yaxes(title_text="std", row=2, col=1, **log_axis(np.concatenate([firsts[1], lasts[1]])))
    fig.update_yaxes(title_text="mean", row=1, col=1)
    _layout(fig, 600 + (6 * max(len(max(labels, key=len)), 10) if show else 0), shapes=shapes)
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
    labels = _layer_labels(m)
    fig = make_subplots(rows=1, cols=1)
    _heatmap(fig, cols, np.clip(cols.values, -6, 0).astype(np.float32), labels, 1, 1,
             colorscale=UPDATE_SCALE, zmin=-6, zmax=0,
             cbar_title="‖ΔW‖/‖W‖", hover="%{y}<br>step %{x}<br>log10 ‖ΔW‖/‖W‖ = %{z:.2f}<extra></extra>")
    fig.update_traces(colorbar=dict(tickvals=[-6, -5, -4, -3, -2, -1, 0],
                                    ticktext=["1e-6", "1e-5", "1e-4", "1e-3", "1e-2", "1e-1", "1"]),
                      selector=dict(type="heatmap"))
    _layer_yaxis(fig, labels, layers=m.layers, marks=marks)
    shapes, anns = _step_marks(marks, extent)
    shapes += _highlight_rows(m.layers, marks, "x", "y")
    _layout(fig, _heatmap_height(len(labels)), shapes=shapes, annotations=anns)
    fig.update_xaxes(title_text="step (optimizer steps)")
    return fig


def update_section(run: Run, marks: list[D.Mark]) -> Section | None:
    m = D.layer_matrix(run, "update", "ratio")
    if m.empty:
        return None
    labels = _layer_labels(m)
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
            by = _bad_y(ds.x, ds.y, ds.bad_x) if len(ds.x) else np.ones(len(ds.bad_x))
            fig.add_trace(_bad_markers(ds.bad_x, by, ds.bad_kind, name, "step", showlegend=not any_bad))
            any_bad = True
    shapes = [dict(type="rect", xref="paper", yref="y", x0=0, x1=1, y0=lo, y1=hi, fillcolor="#22c55e",
                   opacity=0.08, line=dict(width=0), layer="below"),
              dict(type="line", xref="paper", yref="y", x0=0, x1=1, y0=1e-3, y1=1e-3,
                   line=dict(color="#16a34a", width=1, dash="dot"), layer="below")]
    anns = [dict(xref="paper", yref="y", x=0.995, y=np.log10(hi), xanchor="right", yanchor="top",
                 text=f"healthy band {lo:.0e} – {hi:.0e}", showarrow=False, font=dict(color="#15803d", size=11)),
            dict(xref="paper", yref="y", x=0.995, y=np.log10(1e-3), xanchor="right", yanchor="bottom",
                 text="typical 1e-3", showarrow=False, font=dict(color="#15803d", size=11))]
    s2, a2 = _step_marks(marks, run_extent(run))
    _layout(fig, 420, shapes=shapes + s2, annotations=anns + a2)
    fig.update_xaxes(title_text="step (optimizer steps)")
    fig.update_yaxes(title_text="update / weight norm ‖ΔW‖/‖W‖", **LOG_AXIS)
    if n > 12:
        fig.update_layout(legend=dict(orientation="v", y=1, yanchor="top", x=1.01))
    notes = [f"Frozen (update ratio 0): {', '.join(frozen)}"] if frozen else []
    if n > 12:
        notes.append(f"{n} layers, colored by depth (dark = input side); hover a line for its name.")
    return Section("update", "Update-to-weight ratio", caption, figure=fig, notes=notes, marks=marks)


# ----------------------------------------------------------------------------- multi-rank


def ranks_section(run: Run) -> Section | None:
    names = D.differing_rank_scalars(run)
    if not names:
        return None
    names.sort(key=lambda n: (not D.is_loss(n), n))
    shown = names[:4]
    ranks = D.ranks_of(run.scalars)
    fig = make_subplots(rows=len(shown), cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=[pe(n) for n in shown])
    colors = sample_colorscale("Turbo", [0.1 + 0.8 * i / max(len(ranks) - 1, 1) for i in range(len(ranks))])
    for r, name in enumerate(shown, start=1):
        for k, rank in enumerate(ranks[:16]):
            s = D.scalar_series(run, name, rank=rank)
            if not len(s.step):
                continue
            ds = envelope(s.step, s.value, MAX_LINE_POINTS // 2)
            fig.add_trace(go.Scatter(x=ds.x, y=ds.y, mode="lines", name=f"rank {rank}", legendgroup=f"r{rank}",
                                     showlegend=r == 1, line=dict(color=colors[k], width=1.5),
                                     hovertemplate=f"{pe(name)} rank {rank}<br>step %{{x}}<br>%{{y:.4g}}<extra></extra>"),
                          row=r, col=1)
    _layout(fig, 160 + 190 * len(shown))
    fig.update_xaxes(title_text="step (optimizer steps)", row=len(shown), col=1)
    notes = [f"{len(ranks)} ranks; only the first 16 are drawn."] if len(ranks) > 16 else []
    return Section("ranks", "Per-rank curves", f"Metrics that differ between the {len(ranks)} ranks "
                   "(the other figures show rank 0).", figure=fig, notes=notes)


# ----------------------------------------------------------------------------- initialization table


def _fmt(v: Any) -> str:
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
        ratio_cell = f"<td class=\"num ratio{' bad' if off else ''}\">{_fmt(r)}</td>"
        target = f"{html.escape(str(rec.get('target_scheme') or ''))} {_fmt(rec.get('target_var'))}".strip()
        flag = ""
        if mk is not None:
            flag = (f" <a class=\"sev sev-{mk.severity.value}\" href=\"#{mk.anchor}\">"
                    f"{html.escape(mk.rule)}</a>")
        rows.append(
            f"<tr{cls}><td class=\"name\">{html.escape(str(rec.get('layer', '')))}{flag}</td>"
            f"<td>{html.escape(str(rec.get('param', '')))}</td><td>{html.escape(str(rec.get('module_type', '')))}</td>"
            f"<td class=\"num\">{_fmt(rec.get('fan_in'))}</td><td class=\"num\">{_fmt(rec.get('fan_out'))}</td>"
            f"<td>{html.escape(str(rec.get('nonlinearity') or ''))}</td>"
            f"<td class=\"num\">{_fmt(rec.get('var'))}</td><td class=\"num\">{target}</td>{ratio_cell}"
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


# ----------------------------------------------------------------------------- all sections


SectionBuilder = Callable[[Run, list[D.Mark]], "Section | None"]
BUILDERS: tuple[tuple[str, SectionBuilder], ...] = (
    ("loss", loss_section),
    ("metrics", lambda run, marks: metrics_section(run)),
    ("lr", lr_section),
    ("grad", grad_section),
    ("grad-norm", grad_norm_section),
    ("act-dead", dead_section),
    ("act-sat", saturation_section),
    ("act-stats", act_stats_section),
    ("update", update_section),
    ("init", init_section),
    ("ranks", lambda run, marks: ranks_section(run)),
)
SECTION_IDS = tuple(sid for sid, _ in BUILDERS)
