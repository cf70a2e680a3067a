"""Probe memory: the peak extra bytes of a recorded step, as a fraction of the parameter bytes.

    python benchmarks/probe_memory.py                    # GPT ~100M (97.7M parameters), CPU
    python benchmarks/probe_memory.py --model mlp100m    # 8 Linear(3584, 3584) layers, 103M parameters
    python benchmarks/probe_memory.py --device cuda      # CUDA: the caching allocator's peak instead

The same model and optimizer take one step after another: first `--plain` steps without the probe,
then under `trainscope.watch(every=8)` so that steps 0, 1, 2, 4, 8 are recorded (full per-layer
statistics and activations) and 3, 5, 6, 7 are not. Each step's peak memory is measured on its own:

- CPU: the process's peak resident set (Linux `VmHWM`, reset before each step through
  `/proc/self/clear_refs`), minus the resident set just before the step. The script re-runs itself
  with glibc told to mmap every block of 16 KB or more and to trim freed heap at once, so the
  resident set follows what is allocated and the peak of a step is what it held at once. The
  plain steps' spread shows the resolution (a few MB).
- CUDA: `torch.cuda.max_memory_allocated()` after `reset_peak_memory_stats()`, minus the allocated
  bytes before the step.

The probe's extra is a watched step's peak minus the median peak of the plain steps, printed for the
worst recorded and the worst unrecorded step, in MB and as a fraction of the parameter bytes (the
issue's bound: <= 2% on a recorded step). Memory the probe keeps between steps (its buffers) shows in
the resident set before the step and is printed too; a tiny model is watched first so that the
libraries `watch()` loads (pyarrow's Parquet writer, ...) are not counted as the probe's. The first watched step (0) also builds the
initialization table and traces the first forward; it is reported on its own line.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

import trainscope

sys.path.insert(0, str(Path(__file__).parent))
import probe_overhead  # noqa: E402


def mlp100m() -> tuple[nn.Module, torch.Tensor, torch.Tensor, nn.Module]:
    d = 3584
    layers: list[nn.Module] = []
    for _ in range(8):
        layers += [nn.Linear(d, d), nn.ReLU()]
    model = nn.Sequential(*layers[:-1])
    return model, torch.randn(64, d), torch.randint(0, d, (64,)), nn.CrossEntropyLoss()


def gpt100m() -> tuple[nn.Module, torch.Tensor, torch.Tensor, nn.Module]:
    return probe_overhead.gpt100m()


MODELS = {"gpt100m": gpt100m, "mlp100m": mlp100m}


def rss_bytes() -> int:
    return _status_kb("VmRSS") * 1024


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


class Meter:
    """Peak memory of one step above the memory held just before it."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        if not self.cuda:
            try:
                with open("/proc/self/clear_refs", "w") as fh:
                    fh.write("5")
            except OSError as e:
                raise SystemExit(f"needs Linux /proc/self/clear_refs to reset the peak RSS: {e}")

    def start(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # VmHWM := VmRSS
            self.before = rss_bytes()
        return self.before

    def stop(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.before
        return _status_kb("VmHWM") * 1024 - self.before


MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "16384", "MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_ARENA_MAX": "1"}


def _reexec_with_malloc_env() -> None:
    """glibc reads these at start-up: every block of 16 KB or more is mmap'ed and unmapped when freed,
    and freed heap is trimmed, so the resident set follows what is allocated (without them a freed
    tensor may stay resident in an arena and a step's peak reads tens of MB off)."""
    if sys.platform.startswith("linux") and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})


def main(argv: list[str] | None = None) -> int:
    if argv is None and "--no-reexec" not in sys.argv:
        _reexec_with_malloc_env()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-reexec", action="store_true", help="keep glibc's default malloc settings")
    ap.add_argument("--model", default="gpt100m", choices=list(MODELS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--plain", type=int, default=5, help="unwatched steps to take the median peak of")
    ap.add_argument("--watched", type=int, default=9, help="watched steps (every=8: 0, 1, 2, 4, 8 are recorded)")
    ap.add_argument("--gpt-batch", type=int, default=2)
    ap.add_argument("--gpt-seq", type=int, default=64)
    ap.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"],
                    help="sgd (no state: smaller) or adamw; the probe's extra does not depend on it")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available here; run with --device cpu or on a machine with a GPU.")
        return 2
    probe_overhead.GPT_BATCH, probe_overhead.GPT_SEQ = args.gpt_batch, args.gpt_seq
    torch.manual_seed(0)
    model, x, y, crit = MODELS[args.model]()
    model, x, y = model.to(args.device), x.to(args.device), y.to(args.device)
    params = {id(p): p for p in model.parameters()}  # a tied weight counted once
    param_bytes = sum(p.numel() * p.element_size() for p in params.values())
    opt = (torch.optim.SGD(model.parameters(), lr=1e-4) if args.optimizer == "sgd"
           else torch.optim.AdamW(model.parameters(), lr=1e-4))
    meter = Meter(args.device)

    def step(probe=None) -> tuple[int, int]:
        before = meter.start()
        opt.zero_grad(set_to_none=True)
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
        if probe is not None:
            probe.log(train_loss=loss)
        peak = meter.stop()
        del loss
        return before, peak

    print(f"{args.model}: {sum(p.numel() for p in params.values()) / 1e6:.1f}M parameters, "
          f"{param_bytes / 1e6:.0f} MB of parameters ({next(iter(params.values())).dtype}), {args.optimizer}, "
          f"device {args.device}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as d:  # import and set up everything watch() needs, on a tiny model,
        tiny = nn.Linear(4, 2)                 # so the libraries it loads do not count as the probe's memory
        tiny_opt = torch.optim.SGD(tiny.parameters(), lr=0.1)
        with trainscope.watch(tiny, d, optimizer=tiny_opt, every=1) as p:
            for _ in range(3):
                tiny_opt.zero_grad()
                tiny(torch.randn(3, 4)).sum().backward()
                tiny_opt.step()
                p.log(train_loss=1.0)
        trainscope.load_run(d)
    step()  # warm: optimizer state, allocator pools
    plain = [step() for _ in range(args.plain)]
    base_before = statistics.median(b for b, _ in plain)
    base_peak = statistics.median(p for _, p in plain)
    spread = max(p for _, p in plain) - min(p for _, p in plain)
    print(f"plain step: peak {base_peak / 1e6:.1f} MB above the {base_before / 1e6:.0f} MB held before it "
          f"(median of {args.plain}; they spread over {spread / 1e6:.1f} MB = {spread / param_bytes:.2%}, "
          "the resolution of what follows)")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        probe = trainscope.watch(model, d, optimizer=opt, criterion=crit, every=8)
        try:
            for _ in range(args.watched):
                rows.append(step(probe))
        finally:
            probe.close()
        run = trainscope.load_run(d)
        recorded = set(int(s) for s in run.layers["step"].unique()) if not run.layers.empty else set()

    def line(label: str, idx: list[int]) -> None:
        if not idx:
            print(f"{label}: none")
            return
        worst = max(idx, key=lambda i: rows[i][1])
        before, peak = rows[worst]
        extra = peak - base_peak
        held = before - base_before
        print(f"{label}: worst step {worst}: peak extra {extra / 1e6:8.1f} MB = {extra / param_bytes:7.2%} of the "
              f"parameter bytes; the probe held {held / 1e6:6.1f} MB more before the step "
              f"({held / param_bytes:.2%})")

    later = [i for i in range(1, len(rows))]
    line("first watched step (0: init table, first-forward trace)", [0] if 0 in recorded else [])
    line("recorded steps       ", [i for i in later if i in recorded])
    line("unrecorded steps     ", [i for i in later if i not in recorded])
    print(f"recorded steps in the store: {sorted(recorded)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
