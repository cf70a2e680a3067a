"""Overhead of each framework integration against the same framework run without it.

    python benchmarks/integration_overhead.py [--repeats 5] [--steps 200]

For each framework (Hugging Face Trainer, Lightning, accelerate loop) the same tiny training run is timed
with and without trainscope, alternating (plain, watched, plain, watched, ...) so machine noise hits both
alike; the figure is the median over repeats of the wall time of `train()`/`fit()`/the loop, and the
ratio watched/plain of those medians. Defaults of `watch` (every=100). CPU, one thread.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings

import torch
from torch import nn

torch.set_num_threads(1)
warnings.filterwarnings("ignore")


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def _data(n: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 64, generator=g)
    return x, (x[:, :10].argmax(1))


def hf(watched: bool, steps: int, out: str) -> float:
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
    from transformers.utils import logging

    from trainscope.integrations.transformers import TrainscopeCallback

    logging.set_verbosity_error()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=128, n_positions=32,
                                       bos_token_id=0, eos_token_id=0))
    tokens = torch.randint(0, 128, (steps * 8, 32), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": t, "labels": t} for t in tokens]
    args = TrainingArguments(out, per_device_train_batch_size=8, num_train_epochs=1, logging_steps=50, report_to=[],
                             use_cpu=True, save_strategy="no", disable_tqdm=True, dataloader_num_workers=0)
    cbs = [TrainscopeCallback(os.path.join(out, "ts"))] if watched else []
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=cbs)
    t0 = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t0


def lightning(watched: bool, steps: int, out: str) -> float:
    import lightning.pytorch as pl

    from trainscope.integrations.lightning import TrainscopeCallback

    class M(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _mlp()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    torch.manual_seed(0)
    x, y = _data(steps * 64)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    cbs = [TrainscopeCallback(os.path.join(out, "ts"))] if watched else []
    trainer = pl.Trainer(max_epochs=1, callbacks=cbs, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)
    t0 = time.perf_counter()
    trainer.fit(M(), loader)
    return time.perf_counter() - t0


def accelerate_loop(watched: bool, steps: int, out: str) -> float:
    from accelerate import Accelerator

    import trainscope

    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = _mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = _data(steps * 64)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    model, opt, loader = accelerator.prepare(model, opt, loader)
    t0 = time.perf_counter()
    probe = trainscope.watch(model, os.path.join(out, "ts"), optimizer=opt) if watched else None
    for xb, yb in loader:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(xb), yb)
        accelerator.backward(loss)
        opt.step()
        if probe is not None:
            probe.log(train_loss=loss)
    if probe is not None:
        probe.close()
    return time.perf_counter() - t0


FRAMEWORKS = {"transformers": hf, "lightning": lightning, "accelerate": accelerate_loop}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--only", choices=sorted(FRAMEWORKS), action="append")
    a = ap.parse_args()
    print(f"{'framework':<13} {'steps':>5} {'plain s':>8} {'watched s':>9} {'ratio':>6}  (median of {a.repeats})")
    for name in a.only or list(FRAMEWORKS):
        fn = FRAMEWORKS[name]
        times: dict[bool, list[float]] = {False: [], True: []}
        fn(False, 20, tempfile.mkdtemp())  # warm-up: imports, first-call costs
        for _ in range(a.repeats):
            for watched in (False, True):
                with tempfile.TemporaryDirectory() as out:
                    times[watched].append(fn(watched, a.steps, out))
        p, w = statistics.median(times[False]), statistics.median(times[True])
        print(f"{name:<13} {a.steps:>5} {p:>8.2f} {w:>9.2f} {w / p:>6.3f}", flush=True)


if __name__ == "__main__":
    main()
