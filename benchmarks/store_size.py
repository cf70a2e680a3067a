"""Run-store size: bytes on disk per recorded step and per step, at the default settings.

    python benchmarks/store_size.py [--steps 1000] [--grad-norm-every N]

"recorded" counts the steps with full per-layer statistics (kind `grad`); the steps where the global
gradient norm is taken also have a `grad_norm` row per layer (every step on an accelerator, every 10th on
CPU after the first 200: the defaults); `--grad-norm-every 1` gives every step on CPU too.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

import trainscope

sys.path.insert(0, str(Path(__file__).parent))
from probe_overhead import cnn, mlp, transformer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--grad-norm-every", type=int, default=None, help="watch(grad_norm_every=...) (default: its default)")
    args = ap.parse_args()
    extra = {} if args.grad_norm_every is None else {"grad_norm_every": args.grad_norm_every}
    print(f"{'model':12s} {'steps':>6s} {'recorded':>9s} {'layers':>7s} {'store KiB':>10s} {'B/recorded step':>16s} "
          f"{'B/step':>8s}")
    for name, factory in {"mlp": mlp, "cnn": cnn, "transformer": transformer}.items():
        torch.manual_seed(0)
        model, x, y, crit = factory()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        with tempfile.TemporaryDirectory() as d:
            steps = args.steps if name == "mlp" else args.steps // 5
            with trainscope.watch(model, d, optimizer=opt, criterion=crit, **extra) as probe:
                for _ in range(steps):
                    opt.zero_grad()
                    loss = crit(model(x), y)
                    loss.backward()
                    opt.step()
                    probe.log(train_loss=loss)
            size = sum(p.stat().st_size for p in Path(d).rglob("*") if p.is_file())
            run = trainscope.load_run(d)
            recorded = run.layers.loc[run.layers["kind"] == "grad", "step"].nunique()
            n_layers = run.layers["layer"].nunique()
            print(f"{name:12s} {steps:6d} {recorded:9d} {n_layers:7d} {size / 1024:10.1f} {size / recorded:16.0f} "
                  f"{size / steps:8.0f}")


if __name__ == "__main__":
    main()
