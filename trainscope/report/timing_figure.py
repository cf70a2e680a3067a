"""The report's "Where the time goes" section: the probe's step timing (trainscope/probe/timing.py).

A stacked bar of the median milliseconds per step waiting for data, in the forward, the backward and
the optimizer step, with each part's share; under it the same parts per timed step (stacked areas), so
an epoch boundary's long data wait or a slow stretch shows where it happened.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from trainscope.report import data as D
from trainscope.report.plotting import Section, layout, pe, step_marks
from trainscope.store.run import Run

PARTS = (("time/data", "waiting for data", "#d97706"), ("time/forward", "forward", "#2563eb"),
         ("time/backward", "backward", "#7c3aed"), ("time/optimizer", "optimizer step", "#059669"))
MAX_POINTS = 2000


def time_section(run: Run, marks: list[D.Mark]) -> Section | None:
    names = set(run.scalar_names())
    present = [p for p in PARTS if p[0] in names]
    if "time/data" not in names or "time/forward" not in names:
        return None
    df = pd.DataFrame({n: run.scalar(n) for n, _, _ in present}).fillna(0.0) * 1000.0
    df = df[df.index > 0]
    if df.empty:
        return None
    med = df.median()
    total = float(med.sum()) or 1.0
    fig = make_subplots(rows=2, cols=1, row_heights=[0.28, 0.72], vertical_spacing=0.16)
    for name, label, color in present:
        v = float(med[name])
        fig.add_trace(go.Bar(x=[v], y=["median step"], orientation="h", name=pe(f"{label} {v:.3g} ms ({v / total:.0%})"),
                             marker_color=color, legendgroup=name,
                             hovertemplate=f"{pe(label)}: %{{x:.3g}} ms ({v / total:.0%})<extra></extra>"), 1, 1)
    step = df.index.to_numpy()
    idx = np.linspace(0, len(step) - 1, min(len(step), MAX_POINTS)).astype(int) if len(step) > MAX_POINTS else slice(None)
    for name, label, color in present:
        fig.add_trace(go.Scatter(x=step[idx], y=df[name].to_numpy()[idx], name=pe(label), stackgroup="t",
                                 line=dict(width=0.5, color=color), legendgroup=name, showlegend=False,
                                 hovertemplate=f"step %{{x}}<br>{pe(label)} %{{y:.3g}} ms<extra></extra>"), 2, 1)
    shapes, anns = step_marks(marks, (float(step.min()), float(step.max())), xref="x2")
    layout(fig, 420, barmode="stack", shapes=shapes, annotations=anns)
    fig.update_xaxes(title_text="ms per step (median)", row=1, col=1)
    fig.update_xaxes(title_text="step (optimizer steps)", row=2, col=1)
    fig.update_yaxes(title_text="ms", row=2, col=1, rangemode="tozero")
    device = "GPU timeline (CUDA events)" if "time/gpu_caught_up" in names else "host clock"
    share = float(med.get("time/data", 0.0)) / total
    return Section("time", "Where the time goes",
                   f"Median time per optimizer step ({total:.3g} ms, {device}) split into waiting for data "
                   f"({share:.0%}), forward, backward and the optimizer step; below, the same per timed step. "
                   "A large data share means the input pipeline, not the model, sets the speed.",
                   figure=fig, marks=marks)
