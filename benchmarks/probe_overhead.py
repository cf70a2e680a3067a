"""Probe overhead: watched / plain step time, median of interleaved repeats.

    python benchmarks/probe_overhead.py            # CPU (and CUDA when present)
    python benchmarks/probe_overhead.py --quick    # fewer blocks

Prints one row per (model, device, setting): plain ms/step, watched ms/step, the steady-state ratio
(median over interleaved 100-step blocks) and the ratio over the first 250 steps (start-up: dense
gradient norms and the early recorded steps). "every=100" is the default; "every=1" records every
per-layer statistic at every step.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch import nn

import trainscope


def mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor, nn.Module]:
    model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    return model, torch.randn(256, 128), torch.randint(0, 10, (256,)), nn.CrossEntropyLoss()


def cnn() -> tuple[nn.Module, torch.Tensor, torch.Tensor, nn.Module]:
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(32, 10))
    return model, torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,)), nn.CrossEntropyLoss()


class TinyTransformer(nn.Module):
    def __init__(self, vocab: int = 1000, d: int = 128, layers: int = 2, classes: int = 10) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(self.emb(x)).mean(dim=1))


def transformer() -> tuple[nn.Module, torch.Tensor, torch.Tensor, nn.Module]:
    return TinyTransformer(), torch.randint(0, 1000, (32, 64)), torch.randint(0, 10, (32,)), nn.CrossEntropyLoss()


class Loop:
    """A model, its optimizer and (optionally) a probe, stepping the same batch."""

    def __init__(self, factory, device: str, watch_kwargs: dict | None) -> None:
        torch.manual_seed(0)
        model, x, y, self.crit = factory()
        self.model, self.x, self.y = model.to(device), x.to(device), y.to(device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.device = device
        self.tmp = tempfile.TemporaryDirectory()
        self.probe = None
        if watch_kwargs is not None:
            self.probe = trainscope.watch(self.model, self.tmp.name, optimizer=self.opt, criterion=self.crit,
                                          **watch_kwargs)

    def run(self, steps: int) -> float:
        """Seconds per step over `steps` steps."""
        if self.device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            self.opt.zero_grad(set_to_none=True)
            loss = self.crit(self.model(self.x), self.y)
            loss.backward()
            self.opt.step()
            if self.probe is not None:
                self.probe.log(train_loss=loss)
        if self.device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t) / steps

    def close(self) -> None:
        if self.probe is not None:
            self.probe.close()
        self.tmp.cleanup()


def measure(factory, device: str, watch_kwargs: dict, blocks: int, block: int = 100,
            startup: int = 250) -> tuple[float, float, float, float]:
    """(plain s/step, watched s/step, median block ratio, start-up ratio).

    The first `startup` steps (dense grad norms, the early recorded steps 0, 1, 2, 4, ...) are timed
    once on their own; then blocks of `block` steps (one recorded step each at the default every=100) alternate
    between the plain and the watched loop, and the ratio is the median over block pairs."""
    plain, watched = Loop(factory, device, None), Loop(factory, device, watch_kwargs)
    plain.run(3)
    watched.run(3)  # both warm (allocator, first-forward tracing)
    start_ratio = watched.run(startup) / plain.run(startup)
    p_times, w_times, ratios = [], [], []
    for _ in range(blocks):
        p = plain.run(block)
        w = watched.run(block)
        p_times.append(p)
        w_times.append(w)
        ratios.append(w / p)
    plain.close()
    watched.close()
    return statistics.median(p_times), statistics.median(w_times), statistics.median(ratios), start_ratio


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--blocks", type=int, default=None)
    args = ap.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    settings = {"default (every=100)": {}, "every=1": {"every": 1}}
    models = {"mlp": (mlp, 15), "cnn": (cnn, 9), "transformer": (transformer, 5)}
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; steady state: median over interleaved "
          f"100-step blocks; start-up: the first 250 steps")
    print(f"{'model':12s} {'device':6s} {'setting':20s} {'plain ms':>9s} {'watched ms':>11s} {'ratio':>7s} "
          f"{'start-up ratio':>15s}")
    for device in devices:
        for mname, (factory, blocks) in models.items():
            if args.blocks or args.quick:
                blocks = args.blocks or 3
            for sname, kw in settings.items():
                p, w, ratio, start = measure(factory, device, kw, blocks, startup=50 if args.quick else 250)
                print(f"{mname:12s} {device:6s} {sname:20s} {p * 1e3:9.3f} {w * 1e3:11.3f} {ratio:7.3f} {start:15.3f}",
                      flush=True)


if __name__ == "__main__":
    main()
