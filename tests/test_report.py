"""The HTML report: self-contained, safe, machine readable, marks findings, stays small on big runs.

Runs are real tiny trainings recorded with trainscope.watch (tests/helpers_training.py); the big
run for the size bar is synthetic because no CPU test can train 100k steps.
"""
from __future__ import annotations

import json
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import trainscope
from helpers_training import scenario
from trainscope.errors import TrainscopeError
from trainscope.report import available_sections, default_report_path, render_report, write_report
from trainscope.report.data import Mark, marks_for, section_for
from trainscope.report.downsample import envelope, reduce_columns
from trainscope.report.synthetic import synthetic_run
from trainscope.rules.finding import Finding, Severity

XSS_LAYER = "<img src=x onerror=alert(1)>"
XSS_METRIC = "</script><script>alert(2)</script>"
XSS_RUN = "\"><svg onload=alert(3)>"

FIGURE_RE = re.compile(r'<script type="application/json" class="ts-figure-data" data-target="([^"]+)">(.*?)</script>',
                       re.S)
FINDINGS_RE = re.compile(r'<script type="application/json" id="trainscope-findings">(.*?)</script>', re.S)


def strict_json(text: str):
    """Parse like the browser's JSON.parse: NaN/Infinity are not JSON."""
    def reject(name: str):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=reject)


def figures_of(html: str) -> dict[str, dict]:
    return {m.group(1): strict_json(m.group(2)) for m in FIGURE_RE.finditer(html)}


def findings_json(html: str) -> dict:
    m = FINDINGS_RE.search(html)
    assert m, "no embedded findings JSON"
    return strict_json(m.group(1))


def hand_finding(name: str, severity: str = "warning", **kw) -> Finding:
    return Finding(name=name, code="TS999", severity=Severity(severity), title=kw.pop("title", name),
                   message=kw.pop("message", f"{name} measured"), **kw)


# ----------------------------------------------------------------------------- downsampling


def test_envelope_keeps_spikes_nan_and_budget() -> None:
    x = np.arange(200_000, dtype=float)
    y = np.random.default_rng(0).random(200_000)
    y[123_457] = 1e6  # one-step spike
    y[150_000] = np.nan
    y[180_000:] = np.inf  # diverged and stayed there
    ds = envelope(x, y, max_points=2000)
    assert len(ds.x) <= 2100
    assert ds.y.max() == 1e6 and 123_457 in ds.x
    assert ds.bad_x[0] == 150_000 and ds.bad_kind[0] == "NaN"
    assert "+Inf" in set(ds.bad_kind) and len(ds.bad_x) <= 250
    assert np.all(np.diff(ds.x) > 0)


def test_envelope_leaves_short_series_alone() -> None:
    ds = envelope(np.arange(10.0), np.arange(10.0), 2000)
    assert list(ds.x) == list(range(10)) and not ds.reduced


def test_reduce_columns_keeps_max_and_bad_cells() -> None:
    m = np.ones((3, 1000))
    m[1, 517] = 500.0
    bad = np.zeros_like(m, dtype=bool)
    bad[2, 900] = True
    m[2, 900] = np.nan
    cols = reduce_columns(m, np.arange(1000) * 10, max_cols=100, bad_cells=bad)
    assert cols.values.shape == (3, 100)
    assert cols.values[1].max() == 500.0
    assert cols.bad[2].sum() == 1 and not cols.bad[:2].any()
    assert cols.step_lo[0] == 0 and cols.step_hi[-1] == 9990


def test_reduce_columns_puts_buckets_on_a_uniform_step_grid() -> None:
    """Equal spans of steps (so plotly draws the heatmap as one scaled image), whatever the recording."""
    steps = np.concatenate([np.arange(200), np.arange(200, 100_000, 100)])  # dense start, then every 100
    steps = steps[(steps < 40_000) | (steps >= 60_000)]  # and a gap with nothing recorded
    m = np.ones((2, len(steps)))
    spike = int(np.flatnonzero(steps == 77_700)[0])
    m[0, spike] = 1e4
    cols = reduce_columns(m, steps, max_cols=100)
    width = np.diff(cols.step_lo)
    assert len(cols.step_lo) <= 100 and np.all(width == width[0]), "columns must be equally spaced"
    assert cols.step_lo[0] == 0 and cols.step_hi[-1] == steps[-1]
    assert np.nanmax(cols.values[0]) == 1e4  # the one-step spike survives
    gap = (cols.step_lo >= 40_000) & (cols.step_hi < 60_000)
    assert gap.any() and np.isnan(cols.values[:, gap]).all()  # nothing recorded there: empty columns
    assert np.isfinite(cols.values[:, ~gap]).all()


# ----------------------------------------------------------------------------- a real healthy run


@pytest.fixture(scope="module")
def healthy_html() -> str:
    run = scenario("healthy-mlp")
    return render_report(run, trainscope.diagnose(run))


def test_self_contained_offline(healthy_html: str) -> None:
    html = healthy_html
    assert len(re.findall(r"\* plotly\.js (\([^)]*\) )?v\d", html)) == 1, "plotly.js must be embedded exactly once"
    assert not re.search(r'<script[^>]+src=', html), "no external scripts"
    # the plotly.js bundle mentions URLs (map tiles, topojson) it never fetches for these figures;
    # the browser test checks that opening the page makes no request at all
    own = re.sub(r"<script>[^<]*plotly\.js (\([^)]*\) )?v.*?</script>", "", html, flags=re.S)
    assert "cdn.plot.ly" not in own and not re.search(r'(src|href)="(https?:)?//', own)
    assert "Content-Security-Policy" in html and "default-src 'none'" in html


def test_partial_plotly_bundle_only_when_it_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    """The small cartesian bundle when it is the installed plotly's version and covers every trace."""
    from trainscope.report import html as H

    run = synthetic_run(300, 3, every=10, epochs=3)
    text = render_report(run, [])
    partial = H._partial_js()
    assert partial is not None, "the vendored plotly-cartesian.min.js is missing"
    if partial[1] == H._plotly_js_version():
        assert "plotly.js (cartesian - minified) v" in text and "(cartesian bundle) embedded" in text
        assert len(text.encode()) < 2_500_000  # the full bundle alone is 4.8 MB
    monkeypatch.setattr(H, "_plotly_js_version", lambda: "0.0.0-other")
    other = render_report(run, [])
    assert "(cartesian - minified)" not in other and H._plotly_js() in other
    monkeypatch.undo()
    assert H.plotly_bundle({"scatter", "scattergl"})[0] == H._plotly_js()  # a trace type it lacks: full


def test_figure_containers_have_their_height_before_drawing(healthy_html: str) -> None:
    """Figures draw lazily: an empty container of the wrong height would make the page jump."""
    figs = figures_of(healthy_html)
    for target, spec in figs.items():
        m = re.search(rf'<div class="ts-figure" id="{target}" style="height:(\d+)px">', healthy_html)
        assert m and int(m.group(1)) == spec["layout"]["height"], target


def test_healthy_run_has_every_recorded_section(healthy_html: str) -> None:
    figs = figures_of(healthy_html)
    for sid in ("loss", "lr", "grad", "grad-norm", "act-dead", "act-stats", "update"):
        assert f"plot-{sid}" in figs, sid
    assert 'id="fig-init"' in healthy_html and "<table class=\"init\">" in healthy_html
    dead = next(t for t in figures_of(healthy_html)["plot-act-dead"]["data"] if t["type"] == "heatmap")
    assert dead["y"] and all(label.endswith("(ReLU)") for label in dead["y"])  # only ReLU units can die
    loss = figs["plot-loss"]
    names = {t.get("name") for t in loss["data"]}
    assert {"train_loss (raw)", "train_loss (smoothed)", "val_loss"} <= names
    assert loss["layout"]["xaxis"]["title"]["text"].startswith("step")
    assert [b["label"] for b in loss["layout"]["updatemenus"][0]["buttons"]] == ["linear", "log"]


def test_grad_heatmap_orders_layers_input_to_output(healthy_html: str) -> None:
    heat = next(t for t in figures_of(healthy_html)["plot-grad"]["data"] if t["type"] == "heatmap")
    names = [label.split(" ")[0] for label in heat["y"]]
    assert names == sorted(names, key=int), names  # nn.Sequential: 0, 2, 4, 6 in forward order


def test_findings_json_round_trips() -> None:
    run = scenario("nan-loss")
    findings = trainscope.diagnose(run)
    assert findings, "nan-loss must give findings"
    data = findings_json(render_report(run, findings))
    order = sorted(findings, key=lambda f: -f.severity.rank)
    assert data["findings"] == [json.loads(json.dumps(f.to_dict())) for f in order]
    assert data["run"] == run.name and data["run_info"]["status"] == run.status
    # the same document `trainscope diagnose --format json` prints
    from trainscope.rules.render import to_json_dict

    assert data["findings"] == json.loads(json.dumps(to_json_dict(run.name, order)))["findings"]


def test_findings_first_most_severe_first_with_links() -> None:
    run = scenario("healthy-mlp")
    fs = [hand_finding("slow-start", "info"), hand_finding("divergence", "error", evidence=(("step", 40),)),
          hand_finding("dead-relu", "warning", layers=("2",))]
    html = render_report(run, fs)
    cards = re.findall(r'<article class="finding (\w+)" id="(finding-\d)" data-rule="([\w-]+)"', html)
    assert [c[0] for c in cards] == ["error", "warning", "info"]
    assert html.index('id="findings"') < html.index('id="fig-loss"')
    assert 'href="#fig-loss"' in html and 'href="#fig-act-dead"' in html
    assert 'class="chip error">1 error<' in html and 'class="chip warning">1 warning<' in html


def test_divergence_step_and_best_epoch_are_marked_on_the_loss_curve() -> None:
    run = scenario("healthy-mlp")
    last_step_of_epoch3 = int(run.scalars[run.scalars["epoch"] == 3]["step"].max())
    fs = [hand_finding("divergence", "error", evidence=(("first_nonfinite_step", 25),)),
          hand_finding("overfitting", "warning", evidence=(("best_epoch", 3), ("gap", 0.2)))]
    layout = figures_of(render_report(run, fs))["plot-loss"]["layout"]
    xs = {round(s["x0"]) for s in layout["shapes"] if s["type"] == "line"}
    assert 25 in xs and last_step_of_epoch3 in xs
    texts = " ".join(a["text"] for a in layout["annotations"])
    assert "best epoch 3" in texts and "first nonfinite step 25" in texts
    # the epoch view carries the same marks in epoch units
    by_epoch = layout["updatemenus"][1]["buttons"][1]["args"][1]
    assert any(s["type"] == "line" and s["x0"] == 3 for s in by_epoch["shapes"])


def test_flagged_layer_is_highlighted_in_its_figure() -> None:
    run = scenario("dead-relu-bias")
    fs = trainscope.diagnose(run)
    dead = next(f for f in fs if f.name == "dead-relu")
    html = render_report(run, fs)
    fig = figures_of(html)["plot-act-dead"]
    heat = next(t for t in fig["data"] if t["type"] == "heatmap")
    rows = [i for i, label in enumerate(heat["y"]) if label.split(" ")[0] in dead.layers]
    boxes = [s for s in fig["layout"]["shapes"] if s["type"] == "rect" and s.get("yref") == "y"]
    assert rows and {round(b["y0"] + 0.5) for b in boxes} >= set(rows)


def test_marks_tolerate_missing_and_odd_evidence() -> None:
    f = hand_finding("some-future-rule", evidence=(("ratio", float("nan")), ("note", "x"), ("stop_epoch", 7),
                                                   ("backwards_per_step", 1)))
    marks = marks_for(f, "finding-1")
    assert [m.epochs for m in marks if m.epochs] == [(7.0,)]
    assert not any(m.steps for m in marks)  # a count per step is not a position
    assert section_for(f, {"loss", "grad"}) == "loss"
    assert section_for(hand_finding("eval-mode-during-training"), {"loss"}) == "run"
    assert section_for(hand_finding("dead-relu"), {"loss"}) == "run"  # its figure is absent
    assert section_for(hand_finding("x", layers=("fc",)), {"grad", "loss"}) == "grad"
    assert all(isinstance(m, Mark) for m in marks_for(hand_finding("bare"), "finding-2"))


# ----------------------------------------------------------------------------- safety


def record_xss_run(root: Path) -> trainscope.store.run.Run:
    """A real run whose layer, metric and run names are HTML/script injection attempts."""
    torch.manual_seed(0)
    run_dir = root / XSS_RUN
    model = nn.Sequential(OrderedDict([(XSS_LAYER, nn.Linear(8, 16)), ("act", nn.ReLU()), ("out", nn.Linear(16, 3))]))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    with trainscope.watch(model, run_dir, optimizer=opt, criterion=nn.CrossEntropyLoss(), every=2) as probe:
        for epoch in range(3):
            for i in range(0, 64, 16):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x[i:i + 16]), y[i:i + 16])
                loss.backward()
                opt.step()
                probe.log(epoch=epoch, train_loss=loss.detach(), **{XSS_METRIC: float(i)})
            probe.log(epoch=epoch, val_loss=float(loss.detach()))
    return trainscope.load_run(run_dir)


@pytest.fixture(scope="module")
def xss_run(tmp_path_factory: pytest.TempPathFactory) -> trainscope.store.run.Run:
    return record_xss_run(tmp_path_factory.mktemp("xss"))


def xss_findings() -> list[Finding]:
    return [hand_finding("dead-relu", "error", layers=(XSS_LAYER,), message=f"dead units in {XSS_LAYER} <b>bold</b>",
                         evidence=(("layer", XSS_LAYER), ("<i>key</i>", "</script>")),
                         fixes=(f"Replace {XSS_LAYER} with <script>alert(4)</script>",), reference="7.8.3 <u>x</u>")]


def test_run_controlled_strings_are_escaped(xss_run) -> None:
    html = render_report(xss_run, xss_findings())
    for raw in ("<img src=x", "<script>alert", "<svg onload", "<b>bold", "<i>key", "<u>x"):
        assert raw not in html, raw
    assert "&lt;img src=x onerror=alert(1)&gt;" in html  # shown as text in the findings and table
    assert html.count("</script>") == html.count("<script")  # nothing closes a script block early
    # plotly labels: HTML-escaped once more, since plotly renders a subset of HTML in labels
    heat = next(t for t in figures_of(html)["plot-grad"]["data"] if t["type"] == "heatmap")
    assert any(label.startswith("&lt;img src=x onerror=alert(1)&gt;") for label in heat["y"])
    data = findings_json(html)
    assert data["findings"][0]["layers"] == [XSS_LAYER] and data["run"] == XSS_RUN
    metrics = figures_of(html)["plot-metrics"]
    assert metrics["layout"]["annotations"][0]["text"] == "&lt;/script&gt;&lt;script&gt;alert(2)&lt;/script&gt;"


# ----------------------------------------------------------------------------- imported and multi-rank runs


def test_imported_csv_shows_only_what_exists(tmp_path: Path) -> None:
    log = tmp_path / "history.csv"
    rows = ["epoch,loss,val_loss,accuracy,val_accuracy"]
    for e in range(30):
        val = 1.0 / (1 + e) + 0.01 * max(0, e - 12) ** 1.3
        rows.append(f"{e},{1.2 / (1 + e):.4f},{val:.4f},{0.5 + e / 70:.3f},{0.5 + e / 80:.3f}")
    rows.append("30,nan,nan,0.1,0.1")
    log.write_text("\n".join(rows) + "\n")
    from trainscope.rules.engine import diagnose_report

    result = diagnose_report(trainscope.load_run(log))
    html = render_report(result.run, result.findings, skipped=result.skipped, crashed=result.crashed)
    figs = figures_of(html)
    assert set(figs) == {"plot-loss", "plot-metrics"}
    assert result.skipped and f"{len(result.skipped)} rules could not run" in html
    assert [s["name"] for s in findings_json(html)["skipped"]] == [s.name for s in result.skipped]
    assert 'class="note imported"' in html and "Not available: gradient flow" in html
    assert any("NaN/Inf" in (t.get("name") or "") for t in figs["plot-loss"]["data"])
    assert default_report_path(log) == tmp_path / "history.report.html"


def test_ranks_that_differ_get_per_rank_curves() -> None:
    a, b = scenario("healthy-mlp"), scenario("healthy-mlp-default-init")
    sa = a.scalars.copy()
    sb = b.scalars[b.scalars["name"].isin(["train_loss", "grad_norm"])].copy()
    sb["rank"] = 1
    run = trainscope.store.run.Run(a.path, dict(a.meta, world_size=2), scalars=pd.concat([sa, sb]),
                                   layers=a.layers, init=a.init, events=a.events)
    figs = figures_of(render_report(run, []))
    ranks = figs["plot-ranks"]
    assert {t["name"] for t in ranks["data"]} == {"rank 0", "rank 1"}
    assert {a["text"] for a in ranks["layout"]["annotations"]} == {"grad_norm", "train_loss"}
    single = figures_of(render_report(a, []))
    assert "plot-ranks" not in single


# ----------------------------------------------------------------------------- size, files, CLI


def test_big_run_stays_small_and_keeps_its_nan() -> None:
    run = synthetic_run(30_000, 100, every=30, epochs=30, diverge_at=29_000, dead_layer=50)
    html = render_report(run, [hand_finding("dead-relu", "error", layers=("blocks.50.fc.relu",))])
    assert len(html.encode()) < 8_000_000
    figs = figures_of(html)
    loss_points = sum(len(t["x"]["bdata"]) if isinstance(t["x"], dict) else len(t["x"])
                      for t in figs["plot-loss"]["data"])
    assert loss_points < 200_000
    assert any("NaN/Inf" in (t.get("name") or "") for t in figs["plot-loss"]["data"])
    assert any(t.get("name") == "NaN/Inf" for t in figs["plot-grad"]["data"])
    assert next(t for t in figs["plot-update"]["data"])["type"] == "heatmap"  # 100 lines would be unreadable


def test_write_report_is_atomic_and_errors_are_clear(tmp_path: Path) -> None:
    run = scenario("healthy-mlp")
    out = write_report(run, [], tmp_path / "sub" / "r.html")
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert [p.name for p in out.parent.iterdir()] == ["r.html"]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(TrainscopeError, match="cannot write the report"):
        write_report(run, [], blocker / "r.html")


def test_cli_report_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from trainscope.cli import app

    src = scenario("healthy-mlp").path
    res = CliRunner().invoke(app, ["report", str(src), "--html", str(tmp_path / "out.html")])
    assert res.exit_code == 0, res.output
    assert "HTML report:" in res.output and (tmp_path / "out.html").stat().st_size > 1_000_000
    bad = CliRunner().invoke(app, ["report", str(tmp_path / "missing")])
    assert bad.exit_code == 2 and "no such file" in bad.output and "Traceback" not in bad.output


def test_sections_follow_the_data() -> None:
    assert available_sections(scenario("nan-loss")) >= {"loss", "grad", "update"}
    assert "act-sat" in available_sections(scenario("saturated-tanh"))
    assert "act-sat" not in available_sections(scenario("healthy-mlp"))  # ReLU: saturation does not apply


# ----------------------------------------------------------------------------- run status and TensorBoard


def test_crashed_run_says_so(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    with pytest.raises(RuntimeError, match="out of memory"):
        with trainscope.watch(model, tmp_path / "run", optimizer=opt, criterion=nn.CrossEntropyLoss(), every=1) as probe:
            for step in range(20):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                probe.log(train_loss=loss.detach())
                if step == 12:
                    raise RuntimeError("CUDA out of memory (simulated)")
    run = trainscope.load_run(tmp_path / "run")
    html = render_report(run, trainscope.diagnose(run))
    assert '<span class="badge status-crashed">crashed</span>' in html
    assert "plot-loss" in figures_of(html)


def test_tensorboard_run_renders_its_scalars(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(tmp_path / "tb") as w:
        for step in range(200):
            w.add_scalar("train/loss", 2.0 / (1 + step / 20), step)
            w.add_scalar("lr", 1e-3 * min(1.0, step / 50), step)
            if step % 20 == 19:
                w.add_scalar("val/loss", 1.5 / (1 + step / 40), step)
    run = trainscope.load_run(tmp_path / "tb")
    assert run.source != "trainscope"
    figs = figures_of(render_report(run, trainscope.diagnose(run)))
    assert "plot-loss" in figs and "plot-grad" not in figs
    assert len([t for t in figs["plot-loss"]["data"] if t.get("visible") is not False]) >= 2
