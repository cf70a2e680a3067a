"""Probe overhead: watched / plain step time, median of interleaved repeats.

    python benchmarks/probe_overhead.py            # CPU (and CUDA when present)
    python benchmarks/probe_overhead.py --quick    # fewer repeats

Prints one row per (model, device, setting): plain ms/step, watched ms/step, ratio.
"every=50" is the default; "every=1" records every per-layer statistic at every step.
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


def time_steps(factory, device: str, watch_kwargs: dict | None, steps: int, warmup: int = 5) -> float:
    torch.manual_seed(0)
    model, x, y, crit = factory()
    model, x, y = model.to(device), x.to(device), y.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    probe = None
    tmp = tempfile.TemporaryDirectory()
    if watch_kwargs is not None:
        probe = trainscope.watch(model, tmp.name, optimizer=opt, criterion=crit, **watch_kwargs)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
        if probe is not None:
            probe.log(train_loss=loss)

    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = (time.perf_counter() - t) / steps
    if probe is not None:
        probe.close()
    tmp.cleanup()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args()
    repeats = args.repeats or (3 if args.quick else 7)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    settings = {"default (every=50)": {}, "every=1": {"every": 1}}
    models = {"mlp": (mlp, 200), "cnn": (cnn, 30), "transformer": (transformer, 30)}
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, repeats {repeats} (interleaved, median)")
    print(f"{'model':12s} {'device':6s} {'setting':20s} {'plain ms':>9s} {'watched ms':>11s} {'ratio':>7s}")
    for device in devices:
        for mname, (factory, steps) in models.items():
            if device == "cuda":
                steps *= 5
            for sname, kw in settings.items():
                plain, watched = [], []
                for _ in range(repeats):  # interleave so drift hits both equally
                    plain.append(time_steps(factory, device, None, steps))
                    watched.append(time_steps(factory, device, kw, steps))
                p, w = statistics.median(plain), statistics.median(watched)
                print(f"{mname:12s} {device:6s} {sname:20s} {p * 1e3:9.3f} {w * 1e3:11.3f} {w / p:7.3f}", flush=True)


if __name__ == "__main__":
    main()
