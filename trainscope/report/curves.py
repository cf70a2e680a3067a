"""Figures of scalar series: loss curves, other metrics, learning rate, global grad norm, ranks.

Long series are downsampled (`downsample.py`): first/min/max/last per bucket, NaN/Inf as markers.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from trainscope.report import data as D
from trainscope.report.downsample import envelope
from trainscope.report.plotting import (
    LOG_AXIS, MAX_LINE_POINTS, PALETTE, SEVERITY_COLORS, TRAIN_COLOR, VAL_COLOR, EpochMap, Section,
    bad_markers, bad_y, buttons, layout, line, log_toggle, pe, run_extent, spans_decades, step_marks,
    vlines, vrect, worth_shading,
)
from trainscope.store import schema
from trainscope.store.run import Run

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
            tr, ds = line(s.step, s.value, MAX_LINE_POINTS, name=f"{label} (raw)", legendgroup=label,
                           line=dict(color=color, width=1), opacity=0.35,
                           hovertemplate=f"{label}<br>step %{{x}}<br>%{{y:.4g}}<extra>raw</extra>")
            fig.add_trace(tr)
            step_traces.append(len(fig.data) - 1)
            sm = D.smooth(s.value)
            tr2, _ = line(s.step, sm, MAX_LINE_POINTS, name=f"{label} (smoothed)", legendgroup=label,
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
            fig.add_trace(bad_markers(ds.bad_x, bad_y(ds.x, ds.y, ds.bad_x), ds.bad_kind, s.name, "step"))
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
                fig.add_trace(bad_markers(ex[~ok], bad_y(ex[ok], ey[ok], ex[~ok]),
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
        if worth_shading(m.step_range, extent):
            step_shapes.append(vrect(*m.step_range, color))
            e0, e1 = emap.epoch_of(m.step_range[0]), emap.epoch_of(m.step_range[1])
            if e0 is not None and e1 is not None:
                epoch_shapes.append(vrect(e0, e1, color))
    sh, step_anns = vlines(step_items)
    step_shapes += sh
    sh, epoch_anns = vlines(epoch_items)
    epoch_shapes += sh

    n = len(fig.data)
    vis_step = [i in step_traces for i in range(n)]
    vis_epoch = [i in epoch_traces for i in range(n)]
    use_epoch = default_epoch
    for i, tr in enumerate(fig.data):
        tr.visible = vis_epoch[i] if use_epoch else vis_step[i]
    xtitle_step, xtitle_epoch = "step (optimizer steps)", "epoch"
    all_y = np.concatenate([s.value for s in series])
    use_log = spans_decades(all_y)  # a divergence would squash the rest of the curve flat
    menus = [log_toggle(x=0.2 if per_epoch and epoch_traces else 0.0, default_log=use_log,
                         decade_ticks=spans_decades(all_y, 1.5))]
    if per_epoch and epoch_traces:
        menus.append(buttons(0.0, 1 if use_epoch else 0, [
                dict(label="by step", method="update",
                     args=[{"visible": vis_step}, {"shapes": step_shapes, "annotations": step_anns,
                                                   "xaxis.title.text": xtitle_step}]),
                dict(label="by epoch", method="update",
                     args=[{"visible": vis_epoch}, {"shapes": epoch_shapes, "annotations": epoch_anns,
                                                    "xaxis.title.text": xtitle_epoch}]),
            ]))
    layout(fig, 440, updatemenus=menus,
            shapes=epoch_shapes if use_epoch else step_shapes,
            annotations=epoch_anns if use_epoch else step_anns)
    fig.update_layout(margin=dict(t=60), legend=dict(y=1.0, yanchor="top", x=1.01, orientation="v"))
    fig.update_xaxes(title_text=xtitle_epoch if use_epoch else xtitle_step)
    fig.update_yaxes(title_text="loss", **(LOG_AXIS if use_log else {}))
    caption = ("Training and validation loss. Thin lines are raw values, thick lines an exponential "
               "moving average over about 2% of the run (at least 5 points). Toggle log scale to see late progress.")
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
            fig.add_trace(bad_markers(ds.bad_x, bad_y(ds.x, ds.y, ds.bad_x), ds.bad_kind, name, "step",
                                       showlegend=False), row=i, col=1)
    layout(fig, 170 + 150 * len(shown))
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
        tr, ds = line(s.step, s.value, MAX_LINE_POINTS, name=pe(f"param group {group}"),
                       line=dict(color=PALETTE[i % len(PALETTE)], width=2.5, shape="hv"),
                       hovertemplate=f"group {pe(group)}<br>step %{{x}}<br>lr %{{y:.3g}}<extra></extra>")
        fig.add_trace(tr)
    shapes, anns = step_marks(marks, run_extent(run))
    all_lr = np.concatenate([D.scalar_series(run, n).value for n in names])
    layout(fig, 320, updatemenus=[log_toggle(decade_ticks=spans_decades(all_lr, 1.5))], shapes=shapes,
            annotations=anns)
    fig.update_layout(margin=dict(t=60), legend=dict(x=0.2))
    fig.update_xaxes(title_text="step (optimizer steps)")
    fig.update_yaxes(title_text="learning rate", exponentformat="e", rangemode="tozero")
    return Section("lr", "Learning rate", "Learning rate of each optimizer param group at every recorded "
                   "step: a warmup or one-cycle schedule shows its shape here.", figure=fig, marks=marks)


# ----------------------------------------------------------------------------- gradients


def grad_norm_section(run: Run, marks: list[D.Mark]) -> Section | None:
    if schema.GRAD_NORM not in set(run.scalar_names()):
        return None
    s = D.scalar_series(run, schema.GRAD_NORM)
    fig = go.Figure()
    tr, ds = line(s.step, s.value, MAX_LINE_POINTS, name="global grad norm",
                   line=dict(color=TRAIN_COLOR, width=1.5),
                   hovertemplate="step %{x}<br>‖g‖₂ %{y:.3g}<extra></extra>")
    fig.add_trace(tr)
    if len(ds.bad_x):
        fig.add_trace(bad_markers(ds.bad_x, bad_y(ds.x, ds.y, ds.bad_x), ds.bad_kind, "grad norm", "step"))
    shapes, anns = step_marks(marks, run_extent(run))
    log = spans_decades(ds.y)
    layout(fig, 300, updatemenus=[log_toggle(default_log=log, decade_ticks=spans_decades(ds.y, 1.5))],
            shapes=shapes, annotations=anns)
    fig.update_layout(margin=dict(t=60), showlegend=len(fig.data) > 1, legend=dict(x=0.2))
    fig.update_xaxes(title_text="step (optimizer steps)")
    fig.update_yaxes(title_text="‖gradient‖₂ (all parameters)", **(LOG_AXIS if log else {}))
    return Section("grad-norm", "Global gradient norm", "L2 norm of all gradients before each optimizer "
                   "step (after unscaling). Spikes of orders of magnitude mean unstable training.",
                   figure=fig, marks=marks)


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
    layout(fig, 160 + 190 * len(shown))
    fig.update_xaxes(title_text="step (optimizer steps)", row=len(shown), col=1)
    notes = [f"{len(ranks)} ranks; only the first 16 are drawn."] if len(ranks) > 16 else []
    return Section("ranks", "Per-rank curves", f"Metrics that differ between the {len(ranks)} ranks "
                   "(the other figures show rank 0).", figure=fig, notes=notes)
