"""`trainscope compare RUN...`: the table the StreamRec case study ends with, plus each run's diagnosis.

Columns (all read back from the recorded runs, not from the trainer's memory):
  val AUC / val acc and val loss at the best epoch (lowest validation loss: what early stopping keeps),
  epochs to best, the validation loss at the end of training, the train-val gap of the model the run
  returned (validation loss minus that epoch's mean training loss; the best epoch when the trainer
  restored its weights, else the last epoch), wall time, and the findings.
Beside it, `config_diff.format_diff` lists exactly which recorded settings differ between the runs
(optimizer, schedule, loss, model layers, config, data fingerprint, code commit, environment, seeds, notes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trainscope.errors import TrainscopeError


@dataclass
class RunSummary:
    name: str
    path: str
    val_loss: float = math.nan  # at the best epoch
    val_auc: float = math.nan
    val_acc: float = math.nan
    best_epoch: int | None = None
    epochs: int = 0
    final_val_loss: float = math.nan
    final_gap: float = math.nan  # of the returned model
    returned_epoch: int | None = None
    time_s: float = math.nan
    test_acc: float = math.nan
    findings: list[Any] = field(default_factory=list)
    diagnosis_error: str = ""
    curves: pd.DataFrame | None = None  # epoch, train_loss, val_loss
    meta: dict[str, Any] = field(default_factory=dict)  # the run's meta.json (configuration differences)

    def diagnosis(self) -> str:
        if self.diagnosis_error:
            return f"(not diagnosed: {self.diagnosis_error})"
        shown = [f for f in self.findings if f.severity.value in ("error", "warning")]
        if not shown:
            return "clean" + (f" ({len(self.findings)} info)" if self.findings else "")
        return ", ".join(f"{f.name} ({f.severity.value})" for f in shown)


def _series(run: Any, name: str) -> pd.DataFrame:
    df = run.scalars
    rows = df[df["name"] == name]
    if "rank" in rows and (rows["rank"] == 0).any():
        rows = rows[rows["rank"] == 0]
    return rows.sort_values("step")


def summarize(path: str | Path, diagnose: bool = True) -> RunSummary:
    """Read one run and compute its row of the comparison."""
    import trainscope

    run = trainscope.load_run(path)
    s = RunSummary(name=run.name, path=str(path), meta=dict(run.meta or {}))
    val = _series(run, "val_loss")
    train = _series(run, "train_loss")
    if not val.empty and val["epoch"].notna().all():
        val_e = val.drop_duplicates("epoch", keep="last").set_index("epoch")["value"]
        train_e = train.groupby("epoch")["value"].mean() if not train.empty else pd.Series(dtype=float)
        curves = pd.DataFrame({"val_loss": val_e, "train_loss": train_e.reindex(val_e.index)})
        curves.index.name = "epoch"
        s.curves = curves.reset_index()
        finite = val_e[np.isfinite(val_e.to_numpy(dtype=float))]
        s.epochs = int(len(val_e))
        if not finite.empty:
            best = finite.idxmin()
            s.best_epoch = int(best)
            s.val_loss = float(finite.loc[best])
            for metric in ("val_auc", "val_acc"):
                m = _series(run, metric)
                if not m.empty:
                    m = m.drop_duplicates("epoch", keep="last").set_index("epoch")["value"]
                    if best in m.index:
                        setattr(s, metric, float(m.loc[best]))
            s.final_val_loss = float(val_e.iloc[-1])
            trainer = (run.meta.get("config") or {}).get("trainer") or {}
            restored = bool(trainer.get("early_stopping") and trainer.get("restore_best"))
            ret = best if restored else val_e.index[-1]
            s.returned_epoch = int(ret)
            t_ret = curves["train_loss"].get(ret)
            if t_ret is not None and pd.notna(t_ret):
                s.final_gap = float(val_e.loc[ret] - t_ret)
    elif not train.empty:
        s.epochs = int(train["epoch"].nunique()) if train["epoch"].notna().any() else 0
    for name, attr in (("train_time_s", "time_s"), ("test_acc", "test_acc")):
        m = _series(run, name)
        if not m.empty:
            setattr(s, attr, float(m["value"].iloc[-1]))
    if math.isnan(s.time_s) and not run.scalars.empty and "time" in run.scalars:
        s.time_s = float(run.scalars["time"].max())
    if diagnose:
        try:
            s.findings = list(trainscope.diagnose(run))
        except Exception as e:  # noqa: BLE001 - a broken rule must not hide the table
            s.diagnosis_error = f"{type(e).__name__}: {e}"
    return s


def compare(paths: list[str | Path], diagnose: bool = True) -> tuple[pd.DataFrame, list[RunSummary]]:
    if not paths:
        raise TrainscopeError("compare needs at least one run")
    summaries = [summarize(p, diagnose) for p in paths]
    table = pd.DataFrame([{
        "run": s.name,
        "val_auc": s.val_auc,
        "val_acc": s.val_acc,
        "val_loss": s.val_loss,
        "epochs_to_best": s.best_epoch,
        "epochs": s.epochs,
        "final_val_loss": s.final_val_loss,
        "train_val_gap": s.final_gap,
        "time_s": s.time_s,
        "test_acc": s.test_acc,
        "diagnosis": s.diagnosis(),
    } for s in summaries])
    return table, summaries


HEADERS = {"run": "run", "val_auc": "val AUC", "val_acc": "val acc", "val_loss": "val loss",
           "epochs_to_best": "best ep", "epochs": "epochs", "final_val_loss": "val loss (end)",
           "train_val_gap": "train-val gap", "time_s": "time (s)", "test_acc": "test acc", "diagnosis": "diagnosis"}
LEFT = ("run", "diagnosis")


def _cell(c: str, v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if c in ("epochs_to_best", "epochs"):
        return str(int(v))
    if c == "time_s":
        return f"{v:.1f}"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _rows(table: pd.DataFrame) -> tuple[list[str], list[str], list[list[str]]]:
    """Column keys, header labels and formatted cells; columns empty for every run are dropped."""
    cols = [c for c in table.columns if c in LEFT or table[c].notna().any()]
    return cols, [HEADERS[c] for c in cols], [[_cell(c, r[c]) for c in cols] for _, r in table.iterrows()]


def format_table(table: pd.DataFrame) -> str:
    """A plain-text table."""
    cols, head, body = _rows(table)
    rows = [head] + body
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    lines = []
    for j, row in enumerate(rows):
        parts = [x.ljust(w) if cols[i] in LEFT else x.rjust(w) for i, (x, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(parts).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def to_markdown(table: pd.DataFrame) -> str:
    """The same table as Markdown (for docs)."""
    cols, head, body = _rows(table)
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(":--" if c in LEFT else "--:" for c in cols) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(out)


def write_html(summaries: list[RunSummary], table: pd.DataFrame, path: str | Path) -> Path:
    """Validation (solid) and training (dotted) loss per epoch for every run, and the table."""
    import html

    import plotly.graph_objects as go

    fig = go.Figure()
    for i, s in enumerate(summaries):
        if s.curves is None:
            continue
        color = f"hsl({int(360 * i / max(1, len(summaries)))},65%,45%)"
        fig.add_trace(go.Scatter(x=s.curves["epoch"], y=s.curves["val_loss"], name=f"{s.name} val",
                                 line=dict(color=color)))
        fig.add_trace(go.Scatter(x=s.curves["epoch"], y=s.curves["train_loss"], name=f"{s.name} train",
                                 line=dict(color=color, dash="dot")))
    fig.update_layout(title="Loss per epoch", xaxis_title="epoch", yaxis_title="loss", template="plotly_white",
                      height=480)
    body = fig.to_html(full_html=False, include_plotlyjs=True)
    from trainscope.train.config_diff import config_diff

    differ, values, same = config_diff([s.meta for s in summaries])
    if len(summaries) > 1:
        diff_rows = "".join("<tr><td>" + html.escape(k) + "</td>" + "".join(f"<td>{html.escape(v)}</td>" for v in vs)
                            + "</tr>" for k, vs in values.items())
        diff_head = "<th>setting</th>" + "".join(f"<th>{html.escape(s.name)}</th>" for s in summaries)
        body = (f"<h2>Configuration differences ({len(differ)} differ, {same} the same)</h2>"
                f"<table class='diff'><tr>{diff_head}</tr>{diff_rows}</table>") + body
    _, header, body_rows = _rows(table)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body_rows)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>trainscope compare</title>"
           f"<style>body{{font-family:system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}"
           f"td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child,td:last-child"
           f"{{text-align:left}}</style></head><body><h1>trainscope compare</h1><table><tr>{head}</tr>{rows}"
           f"</table>{body}</body></html>")
    out = Path(path)
    out.write_text(doc, encoding="utf-8")
    return out
