"""How big and how slow is the HTML report of a long, deep run?

Builds a synthetic run with the run store's exact columns (default: 100,000 steps, 120 layers,
layer statistics every 50 steps, a divergence to NaN near the end, rare gradient spikes), renders
the report, and prints the file size, the Python render time and, when Chromium is installed,
the time until every figure is drawn in headless Chromium.

    python benchmarks/report_size.py [--steps 100000] [--layers 120] [--every 50] [--out DIR]

With --store, the run is also written as Parquet chunks (per trainscope/store/schema.py) and
read back with trainscope.load_run, so the timing includes the reader.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from trainscope.report import write_report
from trainscope.report.browser import find_chromium, open_report
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--layers", type=int, default=120)
    ap.add_argument("--every", type=int, default=50, help="layer statistics every N steps")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--out", type=Path, default=None, help="directory for report.html (default: a temp dir)")
    ap.add_argument("--store", action="store_true", help="round-trip through Parquet and trainscope.load_run")
    ap.add_argument("--no-browser", action="store_true")
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
    if not args.no_browser and find_chromium():
        check = open_report(path, out_dir / "report.png", full_page=False)
        print(f"browser: first figure after {check.first_ms / 1000:.2f} s, all {check.rendered}/{check.figures} "
              f"figures drawn after {check.load_ms / 1000:.2f} s (from navigation start), "
              f"console errors: {len(check.console_errors)}")
        m = check.metrics
        print(f"browser main thread busy: {m.get('TaskDuration', 0):.2f} s "
              f"(script {m.get('ScriptDuration', 0):.2f} s, layout {m.get('LayoutDuration', 0):.2f} s); "
              "wall times above include waiting for a CPU on a shared machine")
        for e in check.console_errors[:5]:
            print("  ", e)
    elif not args.no_browser:
        print("browser: skipped (no chromium; apt-get install chromium)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
