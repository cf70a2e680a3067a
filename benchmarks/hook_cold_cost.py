"""What a few microseconds of Python cost inside a training step, against the same code in a tight loop.

    OMP_NUM_THREADS=1 python benchmarks/hook_cold_cost.py [--steps 400]

The probe's per-step work is small Python and numpy calls made from hooks. Timed alone, in a loop, such
code is warm (interpreter, numpy and its data in the caches, branches predicted); inside a training step it
runs between BLAS kernels that have pushed all of that out, and costs several times more. This prints, for
a few pieces of the probe's step path, the time in a tight loop and the time of the same call made between
the forward and the backward of the benchmark MLP (1.7 ms steps on CPU, one thread), and their ratio. It
explains why trimming a hook's isolated cost moves the overhead ratio of `probe_overhead.py` less than the
isolated figure promises, and why the floor (four hooks that do nothing) is already ~1% of this step.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch import nn

from trainscope.probe import criterion as crit_mod


def pieces(y: torch.Tensor, grads: list[torch.Tensor]) -> dict[str, callable]:
    a = y.numpy()
    return {
        "no-op function call (the timer's own cost)": lambda: None,
        "tensor attribute checks (dim, dtype, is_floating_point)": lambda: (y.dim() == 1 and not y.is_floating_point()
                                                                            and y.dtype != torch.bool),
        "numpy min + max of 256 ids": lambda: (int(a.min()), int(a.max())),
        "target_stats (the batch's class counts)": lambda: crit_mod.target_stats(y),
        "_foreach_norm of the 6 gradients": lambda: torch._foreach_norm(grads, 2),
    }


def _tight(f, n: int = 2000) -> float:
    """Median time of one call in a loop that does nothing else, timed the same way as in the step."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x, y, loss_fn = torch.randn(256, 128), torch.randint(0, 10, (256,)), nn.CrossEntropyLoss()
    model(x).sum().backward()
    grads = [p.grad for p in model.parameters()]
    tight = {name: _tight(f) for name, f in pieces(y, grads).items()}
    in_step: dict[str, list[float]] = {name: [] for name in tight}
    for i in range(args.steps):
        for name in tight:  # one piece per step, in turn, so each one finds the step's caches as a hook would
            if i % len(tight) != list(tight).index(name):
                continue
            opt.zero_grad(set_to_none=True)
            out = model(x)
            loss = loss_fn(out, y)
            loss.backward()
            grads = [p.grad for p in model.parameters()]
            f = pieces(y, grads)[name]
            t = time.perf_counter()
            f()
            dt = time.perf_counter() - t
            opt.step()
            if i >= 50:
                in_step[name].append(dt)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; median of {args.steps // len(tight)} steps each")
    print(f"{'piece':58s} {'tight loop':>11s} {'in a step':>10s} {'ratio':>6s}")
    for name, t in tight.items():
        s = statistics.median(in_step[name])
        print(f"{name:58s} {t * 1e6:9.2f}us {s * 1e6:8.2f}us {s / t:6.1f}")


if __name__ == "__main__":
    main()
