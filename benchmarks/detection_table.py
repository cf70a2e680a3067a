"""Detection table on held-out seeds: are the thresholds tuned on the labelled runs robust?

    python benchmarks/detection_table.py [--seeds 1 2 3]

The labelled scenarios of tests/helpers_training.py (LABELS: what is truly wrong in each run, checked
by hand) were tuned with model seed 0. This re-trains every scenario with other model seeds (a new
initialization of the same architecture on the same task) and counts, per rule of the gradient,
activation, init, LR and loop families: detected / missed / false alarms. Also prints the slowest
diagnose. The seed-0 table is `helpers_training.confusion_table()`.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import helpers_training as h  # noqa: E402

from trainscope.rules.engine import diagnose_report  # noqa: E402

FAMILIES = ["TS2", "TS3", "TS4", "TS5", "TS6"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = ap.parse_args()
    tp, fn, fp = Counter(), Counter(), Counter()
    slowest, runs = (0.0, ""), 0
    with tempfile.TemporaryDirectory() as root:
        for seed in args.seeds:
            for name, truth in sorted(h.LABELS.items()):
                torch.manual_seed(seed)  # the scenario builds its model from the global generator
                run = h.SCENARIOS[name](Path(root) / f"{name}-s{seed}")
                t = time.perf_counter()
                found = {f.name for f in diagnose_report(run, select=FAMILIES).findings}
                slowest = max(slowest, (time.perf_counter() - t, name))
                runs += 1
                for r in truth & found:
                    tp[r] += 1
                for r in truth - found:
                    fn[r] += 1
                for r in found - truth:
                    fp[r] += 1
                if found != truth:
                    print(f"seed {seed} {name}: missed {sorted(truth - found)}, false alarms {sorted(found - truth)}",
                          flush=True)
    print(f"\n{runs} runs ({len(h.LABELS)} labelled scenarios x seeds {args.seeds})")
    print(f"{'rule':30s} {'detected':>9s} {'missed':>7s} {'false alarms':>13s}")
    for r in sorted(set(tp) | set(fn) | set(fp)):
        print(f"{r:30s} {tp[r]:9d} {fn[r]:7d} {fp[r]:13d}")
    print(f"{'total':30s} {sum(tp.values()):9d} {sum(fn.values()):7d} {sum(fp.values()):13d}")
    print(f"slowest diagnose: {slowest[0] * 1e3:.0f} ms ({slowest[1]})")


if __name__ == "__main__":
    main()
