"""Time spent inside the probe's hooks per training step, as a share of the step (small MLP, CPU).

    python benchmarks/probe_hook_time.py ["{'every': 1}"]

On a shared or noisy machine the watched/plain ratio of benchmarks/probe_overhead.py swings by
several percent between runs; this measures the probe's own code directly (each hook timed from
inside, 2000 steady-state steps after 300 warm-up steps). It does not count PyTorch's cost of
calling the hooks, so it is a lower bound of the overhead.
"""
from __future__ import annotations

import collections
import importlib
import sys
import tempfile
import time

import torch
from torch import nn

W = importlib.import_module("trainscope.probe.probe")
G = importlib.import_module("trainscope.probe.guard")


def main() -> None:
    spent: collections.Counter[str] = collections.Counter()
    guard = G.HookGuard.wrap
    log = W.Probe.log

    def timed_guard(self, name, fn):
        g = guard(self, name, fn)

        def wrapper(*a, **k):
            t = time.perf_counter()
            r = g(*a, **k)
            spent[name] += time.perf_counter() - t
            return r

        return wrapper

    def timed_log(self, *a, **k):
        t = time.perf_counter()
        log(self, *a, **k)
        spent["log"] += time.perf_counter() - t

    G.HookGuard.wrap, W.Probe.log = timed_guard, timed_log
    options = eval(sys.argv[1]) if len(sys.argv) > 1 else {}  # e.g. "{'every': 1}"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x, y, crit = torch.randn(256, 128), torch.randint(0, 10, (256,)), nn.CrossEntropyLoss()
    with tempfile.TemporaryDirectory() as d:
        probe = W.watch(model, d, optimizer=opt, criterion=crit, **options)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss = crit(model(x), y)
            loss.backward()
            opt.step()
            probe.log(train_loss=loss)

        for _ in range(300):
            step()
        spent.clear()
        n = 2000
        t = time.perf_counter()
        for _ in range(n):
            step()
        total = time.perf_counter() - t
        probe.close()
    print(f"options {options}: step {total / n * 1e6:.0f} us")
    for k, v in spent.most_common():
        print(f"  {k:18s} {v / n * 1e6:7.1f} us/step")
    print(f"inside the probe: {sum(spent.values()) / n * 1e6:.1f} us/step = {100 * sum(spent.values()) / total:.2f}% of "
          f"the step")


if __name__ == "__main__":
    main()
