"""How big and how slow is the HTML report of a long, deep run?

Builds a synthetic run with the run store's exact columns (default: 100,000 steps, 120 layers,
layer statistics every 50 steps, a divergence to NaN near the end, rare gradient spikes), renders
the report, and prints the file size, the Python render time and, when Chromium is installed,
the time to open it in headless Chromium: each load is a cold start (a fresh browser with an
empty profile, as when a report is double-clicked for the first time), the median and range of
`--loads` of them, next to the same for a page that holds nothing but the same plotly.js.

    python benchmarks/report_size.py [--steps 100000] [--layers 120] [--every 50] [--loads 5] [--out DIR]

Figures near the first screen draw at once; the others draw when they are scrolled near the
viewport. "first screen" is the time until the figures of the first screen are drawn; "all
figures" is the time until every figure is drawn when the page is asked to draw them all at
once right after the first screen (`--scroll` also times scrolling to each one in turn, as a
reader would). "browser CPU" is the CPU time of all browser processes during the load, which a
busy machine disturbs less than the wall times.

With --store, the run is also written as Parquet chunks (per trainscope/store/schema.py) and
read back with trainscope.load_run, so the timing includes the reader.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from trainscope.report import write_report
from trainscope.report.browser import Browser, find_chromium
from trainscope.report.synthetic import synthetic_run
from trainscope.rules.finding import Finding, Severity
from trainscope.store import schema


def _findings(steps: int, layer: str) -> list[Finding]:
    return [
        Finding("divergence", "TS102", Severity.ERROR, "Loss diverged", f"loss is NaN from step {steps - 2000}",
                steps=(steps - 2010, steps - 1980), evidence=(("step", steps - 1990),),
                fixes=("Lower the learning rate 10x",), reference="7.8.1 Pattern 2"),
        Finding("dead-relu", "TS301", Severity.ERROR, "Dead ReLU units", f"92% of units dead in {layer}",
                layers=(layer,), evidence=(("frac_dead", 0.92),), fixes=("Use LeakyReLU(0.01)",)),
        Finding("overfitting", "TS103", Severity.WARNING, "Overfitting", "val loss up 30% from its minimum",
                evidence=(("best_epoch", 40),), fixes=("Stop at epoch 40, patience 5",)),
    ]


def _write_store(run, root: Path) -> Path:
    """The run as a run store directory (one Parquet chunk per table)."""
    import json

    for table, df in ((schema.SCALARS, run.scalars), (schema.LAYERS, run.layers),
                      (schema.INIT, run.init), (schema.EVENTS, run.events)):
        (root / table).mkdir(parents=True, exist_ok=True)
        df.to_parquet(root / table / "r0-000000.parquet", index=False)
    meta = dict(run.meta, schema_version=schema.SCHEMA_VERSION)
    (root / schema.META_FILE).write_text(json.dumps(meta))
    return root


def plotly_only_page(path: Path, js: str) -> Path:
    """A page holding only a plotly.js bundle (the floor under any report's open time)."""
    from trainscope.report.html import CSP

    path.write_text(
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><meta http-equiv="Content-Security-Policy" '
        f'content="{CSP}"></head><body><div class="ts-figure js-plotly-plot"><svg class="main-svg"></svg></div>'
        f"<script>{js}</script><script>window.__trainscopeFirstMs = window.__trainscopeLoadMs = "
        "performance.now(); window.__trainscopeReady = true;</script></body></html>", encoding="utf-8")
    return path


def tree_cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of a process and all its descendants (Linux /proc; 0 elsewhere)."""
    try:
        tick = os.sysconf("SC_CLK_TCK")
        procs = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as fh:
                        f = fh.read().rsplit(")", 1)[1].split()
                    procs[int(d)] = (int(f[1]), (int(f[11]) + int(f[12])) / tick)  # ppid, utime+stime
                except (OSError, IndexError, ValueError):
                    pass
    except (OSError, ValueError, AttributeError):
        return 0.0
    keep, total, grew = {pid}, 0.0, True
    while grew:
        grew = False
        for p, (pp, _) in procs.items():
            if pp in keep and p not in keep:
                keep.add(p)
                grew = True
    for p in keep:
        total += procs.get(p, (0, 0.0))[1]
    return total


def cold_loads(path: Path, loads: int, draw_all: bool | str) -> list:
    """Open `path` `loads` times, each in a fresh Chromium with an empty profile; each check gets
    `.cpu_s`, the CPU seconds all browser processes spent on that load (less sensitive to a busy
    machine than wall time)."""
    checks = []
    for _ in range(loads):
        with Browser() as browser:
            pid = browser._pipe.proc.pid
            time.sleep(0.5)  # let the browser finish starting before counting
            c0 = tree_cpu_seconds(pid)
            check = browser.open(path, None, draw_all=draw_all)
            check.cpu_s = tree_cpu_seconds(pid) - c0
            checks.append(check)
    return checks


def _ms(values: list[float]) -> str:
    return (f"{statistics.median(values) / 1000:.2f} s (range {min(values) / 1000:.2f}-{max(values) / 1000:.2f})"
            if values else "-")


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs"
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--layers", type=int, default=120)
    ap.add_argument("--every", type=int, default=50, help="layer statistics every N steps")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--loads", type=int, default=5, help="cold browser loads to take the median of")
    ap.add_argument("--out", type=Path, default=None, help="directory for report.html (default: a temp dir)")
    ap.add_argument("--store", action="store_true", help="round-trip through Parquet and trainscope.load_run")
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--no-baseline", action="store_true", help="skip the plotly.js-only page")
    ap.add_argument("--scroll", action="store_true",
                    help="also time drawing every figure by scrolling to each in turn (as a reader would)")
    args = ap.parse_args(argv)

    out_dir = args.out or Path(tempfile.mkdtemp(prefix="trainscope-bench-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    run = synthetic_run(args.steps, args.layers, args.every, args.epochs, diverge_at=args.steps - 2000,
                        dead_layer=args.layers // 2, path=out_dir / "big-run")
    print(f"run: {args.steps:,} steps, {args.layers} layers, layer stats every {args.every} steps -> "
          f"{len(run.scalars):,} scalar rows, {len(run.layers):,} layer rows "
          f"(built in {time.perf_counter() - t0:.1f} s)")
    if args.store:
        import trainscope

        _write_store(run, out_dir / "big-run")
        t0 = time.perf_counter()
        run = trainscope.load_run(out_dir / "big-run")
        print(f"load_run: {time.perf_counter() - t0:.2f} s")
    findings = _findings(args.steps, f"blocks.{args.layers // 2}.fc.relu")
    t0, c0 = time.perf_counter(), time.process_time()
    path = write_report(run, findings, out_dir / "report.html")
    render_s, render_cpu = time.perf_counter() - t0, time.process_time() - c0
    size = path.stat().st_size
    print(f"report: {path}")
    print(f"size: {size / 1e6:.2f} MB ({size:,} bytes)")
    print(f"render (python): {render_s:.2f} s wall, {render_cpu:.2f} s CPU")
    if args.no_browser:
        return 0
    if not find_chromium():
        print("browser: skipped (no chromium; apt-get install chromium)")
        return 0
    print(f"browser: {args.loads} cold loads each (fresh headless Chromium, empty profile); "
          f"load average before: {load_average()}")
    checks = cold_loads(path, args.loads, draw_all="now")
    last = checks[-1]
    bad = [c for c in checks if c.ready is not True or c.rendered != c.figures or c.console_errors]
    print(f"  report: first screen drawn after {_ms([c.first_ms for c in checks])}; "
          f"all {last.rendered}/{last.figures} figures drawn (asked for at once) after "
          f"{_ms([c.load_ms for c in checks])}; browser CPU {_ms([c.cpu_s * 1000 for c in checks])}; "
          f"main thread busy {_ms([c.metrics.get('TaskDuration', 0) * 1000 for c in checks])}")
    if args.scroll:
        sc = cold_loads(path, args.loads, draw_all="scroll")
        bad += [c for c in sc if c.ready is not True or c.rendered != c.figures or c.console_errors]
        print(f"  scrolling to each figure in turn: all drawn after {_ms([c.load_ms for c in sc])}")
    per_fig = {k: statistics.median(c.timings.get(k, 0) for c in checks)
               for k in last.timings}
    if per_fig:
        print("  per figure (median ms to draw): " + ", ".join(f"{k.removeprefix('plot-')} {v:.0f}"
                                                               for k, v in per_fig.items()))
    for c in bad[:3]:
        print(f"  PROBLEM: ready={c.ready} drawn {c.rendered}/{c.figures} errors={c.console_errors[:3]}")
    if not args.no_baseline:
        from trainscope.report.html import _plotly_js, plotly_bundle

        embedded, name = plotly_bundle({"scatter", "heatmap", "bar"})
        pages = [(f"plotly.js {name}, as embedded", embedded)]
        if embedded != _plotly_js():
            pages.append(("plotly.js full bundle of the plotly package", _plotly_js()))
        for i, (label, js) in enumerate(pages):
            base = cold_loads(plotly_only_page(out_dir / f"plotly-only-{i}.html", js), args.loads, draw_all=False)
            print(f"  page with only {label} ({len(js) / 1e6:.2f} MB): loaded after {_ms([c.load_ms for c in base])}"
                  f", browser CPU {_ms([c.cpu_s * 1000 for c in base])}")
    print(f"load average after: {load_average()} (wall times include waiting for a CPU on a shared machine)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
