"""The report in a real browser: headless Chromium draws every figure, logs no error, fetches nothing.

Needs Debian's `chromium` (apt-get install chromium); skipped with that reason otherwise. The
driver is trainscope.report.browser, a small DevTools-over-pipe client (no browser download).
Screenshots go to $TRAINSCOPE_SCREENSHOTS if set (CI keeps them), else to pytest's tmp dir.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import trainscope
from helpers_training import scenario
from trainscope.report import write_report
from trainscope.report.browser import Browser, find_chromium, open_report

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(find_chromium() is None,
                       reason="headless Chromium not found at /usr/bin/chromium (apt-get install chromium)"),
]

REPO = Path(__file__).resolve().parents[1]
SAMPLE_RUNS = REPO / "sample_runs"


def shot_dir(tmp_path: Path) -> Path:
    env = os.environ.get("TRAINSCOPE_SCREENSHOTS")
    return Path(env) if env else tmp_path


def check_in_browser(run, path: Path, shots: Path, probe_js: str | None = None):
    findings = trainscope.diagnose(run)
    html = write_report(run, findings, path)
    res = open_report(html, shots / f"{path.stem}.png", probe_js=probe_js)
    assert res.ready is True, res.ready
    assert res.console_errors == [], res.console_errors
    assert res.network_requests == [], res.network_requests
    assert res.dialogs == []
    assert res.figures > 0 and res.rendered == res.figures, (res.rendered, res.figures)
    assert res.screenshot is not None and res.screenshot.stat().st_size > 20_000  # a real picture, not blank
    return res, findings


@pytest.mark.parametrize("name", ["healthy-mlp", "dead-relu-bias", "nan-loss"])
def test_recorded_runs_render(name: str, tmp_path: Path) -> None:
    run = scenario(name)
    res, findings = check_in_browser(
        run, tmp_path / f"{name}.html", shot_dir(tmp_path),
        probe_js="{cards: document.querySelectorAll('article.finding').length,"
                 " svgs: document.querySelectorAll('.ts-figure .main-svg').length}")
    assert res.page["cards"] == len(findings)
    assert res.page["svgs"] >= res.figures


def test_imported_csv_renders(tmp_path: Path) -> None:
    log = tmp_path / "metrics.csv"
    lines = ["step,epoch,train_loss,val_loss"]
    lines += [f"{s},{s // 50},{2.0 / (1 + s / 40):.4f},{'' if s % 50 != 49 else f'{1.5 / (1 + s / 80):.4f}'}"
              for s in range(500)]
    log.write_text("\n".join(lines) + "\n")
    res, _ = check_in_browser(trainscope.load_run(log), tmp_path / "imported-csv.html", shot_dir(tmp_path),
                              probe_js="{note: !!document.querySelector('.note.imported')}")
    assert res.page["note"] is True


def test_injected_names_stay_text_in_the_browser(tmp_path: Path) -> None:
    from test_report import XSS_LAYER, record_xss_run, xss_findings  # the hostile run of the unit test

    html = write_report(record_xss_run(tmp_path), xss_findings(), tmp_path / "xss.html")
    res = open_report(html, shot_dir(tmp_path) / "xss.png", probe_js=(
        "{imgs: document.querySelectorAll('img').length,"
        " handlers: document.querySelectorAll('[onload], [onerror], [onclick]').length,"
        " cardText: document.querySelector('article.finding').textContent,"
        " gradText: document.getElementById('plot-grad').textContent}"))
    assert res.dialogs == [], f"script ran: {res.dialogs}"
    assert res.console_errors == [] and res.rendered == res.figures
    assert res.page["imgs"] == 0 and res.page["handlers"] == 0
    assert XSS_LAYER in res.page["cardText"] and XSS_LAYER in res.page["gradText"]


def _sample_runs() -> list[Path]:
    if not SAMPLE_RUNS.is_dir():
        return []
    return sorted(p for p in SAMPLE_RUNS.iterdir()
                  if not p.name.startswith((".", "_")) and p.suffix not in (".html", ".md", ".png"))


@pytest.mark.slow  # about 4 s per sample run on a busy 2-core machine (plotly.js parse + drawing)
@pytest.mark.skipif(not _sample_runs(), reason="no sample_runs/ yet (scripts/make_sample_runs.py)")
def test_every_sample_run_renders(tmp_path: Path) -> None:
    """All sample runs (recorded and imported) in one browser: starting Chromium per run costs seconds."""
    shots = shot_dir(tmp_path)
    problems = []
    with Browser() as browser:
        for path in _sample_runs():
            run = trainscope.load_run(path)
            html = write_report(run, trainscope.diagnose(run), tmp_path / f"sample-{path.name}.html")
            res = browser.open(html, shots / f"sample-{path.name}.png", full_page=False, height=1400)
            if not (res.ready is True and res.figures and res.rendered == res.figures and not res.console_errors
                    and not res.network_requests and not res.dialogs):
                problems.append(f"{path.name}: ready={res.ready} drawn {res.rendered}/{res.figures} "
                                f"errors={res.console_errors} requests={res.network_requests}")
    assert not problems, "\n".join(problems)


def test_figures_below_the_first_screen_draw_when_scrolled_to(tmp_path: Path) -> None:
    """Lazy drawing is real: opening draws the first screen only; scrolling draws the rest, cleanly."""
    from trainscope.report.synthetic import synthetic_run

    run = synthetic_run(3000, 30, every=10, epochs=10, diverge_at=2900, dead_layer=12)
    html = write_report(run, [], tmp_path / "lazy.html")  # no finding cards: the loss curves are on screen one
    with Browser() as browser:
        first = browser.open(html, draw_all=False)
        scrolled = browser.open(html, shot_dir(tmp_path) / "lazy.png", full_page=False)
    assert first.ready is True and first.console_errors == []
    assert 0 < first.rendered < first.figures, (first.rendered, first.figures)
    assert first.first_ms > 0
    assert scrolled.ready is True and scrolled.console_errors == [] and scrolled.network_requests == []
    assert scrolled.rendered == scrolled.figures == first.figures
    assert set(scrolled.timings) == {f"plot-{s}" for s in ("loss", "metrics", "lr", "grad", "grad-norm", "act-dead",
                                                          "act-stats", "update")}


def test_the_checker_sees_errors_requests_and_dialogs(tmp_path: Path) -> None:
    """The browser checks above can fail: a page that errs, fetches and alerts is caught."""
    page = tmp_path / "bad.html"
    page.write_text(
        "<html><body><div class='ts-figure'></div><script>"
        "console.error('boom'); fetch('http://example.invalid/x').catch(() => {}); alert('xss');"
        "window.__trainscopeReady = true;</script></body></html>")
    res = open_report(page)
    assert any("boom" in e for e in res.console_errors)
    assert res.network_requests == ["http://example.invalid/x"]
    assert res.dialogs == ["xss"]
    assert res.figures == 1 and res.rendered == 0  # a div plotly never drew does not count
