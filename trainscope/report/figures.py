"""The report's figures: one `Section` per view of the run, in page order.

Each builder takes the run and the marks of the findings that point at its section, and returns
a Section (a plotly figure or a table) or None when the run has no data for it.
"""
from __future__ import annotations

from typing import Callable

from trainscope.report import data as D
from trainscope.report.curves import grad_norm_section, loss_section, lr_section, metrics_section, ranks_section
from trainscope.report.init_table import fmt, init_section
from trainscope.report.layer_figures import (
    act_stats_section, dead_section, grad_section, saturation_section, update_section,
)
from trainscope.report.plotting import SEVERITY_COLORS, Section, pe
from trainscope.report.timing_figure import time_section
from trainscope.store.run import Run

__all__ = ["BUILDERS", "SECTION_IDS", "SEVERITY_COLORS", "Section", "fmt", "pe"]

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
    ("time", time_section),
)
SECTION_IDS = tuple(sid for sid, _ in BUILDERS)
