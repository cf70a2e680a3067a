"""Probe overhead: watched / plain step time, median of interleaved repeats.

    python benchmarks/probe_overhead.py                               # CPU: mlp, cnn, transformer
    python benchmarks/probe_overhead.py --quick                       # fewer blocks
    python benchmarks/probe_overhead.py --device cuda --model gpt100m            # GPT ~100M, bf16 autocast
    python benchmarks/probe_overhead.py --device cuda --model gpt100m --compile  # the same under torch.compile
    python benchmarks/probe_overhead.py --model mlp --watch grad_norm_every=1    # extra settings to compare
    python benchmarks/probe_overhead.py --model mlp --floor                      # + no-op hooks: the floor

CPU runs are timed by the process's CPU time (all its threads, so the probe's writer thread counts and
other processes on a shared machine do not; `--wall-clock` for the wall clock), CUDA runs by the wall
clock after a synchronize.
Prints one row per (model, device, setting): plain ms/step, watched ms/step, the steady-state ratio
(median over interleaved 100-step blocks) and the ratio over the first 300 steps (start-up, as issue 11 defines it: dense
gradient norms and the early recorded steps). "default" is `trainscope.watch` with its defaults
(every=100); "every=1" records every per-layer statistic at every step; each `--watch K=V[,K=V]`
adds a setting. The GPT (12 layers, d=768, 12 heads, vocabulary 16384, tied embedding: 98.0M
parameters) runs its forward and loss under bf16 autocast on CUDA (`--no-bf16` to turn it off,
`--bf16` to use it on CPU too); `--compile` compiles the model (the probe watches the compiled
module, as a user would write it). Without CUDA, `--device cuda` stops with a message.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
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


class GPTBlock(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.act = nn.GELU()
        self.out = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).transpose(1, 3).unbind(2)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.out(self.act(self.fc(self.ln2(x))))


class GPT(nn.Module):
    """A GPT-2-small-like decoder; returns logits flattened to (batch * tokens, vocabulary)."""

    def __init__(self, vocab: int = 16384, d: int = 768, layers: int = 12, heads: int = 12, ctx: int = 512) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(GPTBlock(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight  # tied, as in GPT-2: one parameter shared by two modules

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x)).flatten(0, 1)


GPT_BATCH, GPT_SEQ = 16, 512  # 8192 tokens a step on CUDA; --gpt-batch / --gpt-seq change it
GPT_LAYERS, GPT_WIDTH = 12, 768  # --gpt-layers / --gpt-width shrink it for a quick check of the code path


def gpt100m() -> tuple[nn.Module, torch.Tensor, torch.Tensor, nn.Module]:
    vocab = 16384
    model = GPT(vocab=vocab, d=GPT_WIDTH, layers=GPT_LAYERS, heads=max(1, GPT_WIDTH // 64), ctx=max(GPT_SEQ, 1))
    idx = torch.randint(0, vocab, (GPT_BATCH, GPT_SEQ + 1))
    return model, idx[:, :-1].contiguous(), idx[:, 1:].reshape(-1).contiguous(), nn.CrossEntropyLoss()


MODELS = {"mlp": (mlp, 15), "cnn": (cnn, 9), "transformer": (transformer, 5), "gpt100m": (gpt100m, 5)}


FLOOR: dict = {}  # the --floor setting (compared by identity)


class NoOpHooks:
    """The floor under any Python probe: the hooks trainscope registers (the model's forward pre-hook, the
    optimizer's pre/post step hooks, one parameter's gradient hook), doing nothing, and a logged loss kept
    in a list."""

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        self.kept: list = []
        self.handles = [model.register_forward_pre_hook(lambda m, a, k: None, with_kwargs=True),
                        opt.register_step_pre_hook(lambda o, a, k: None),
                        opt.register_step_post_hook(lambda o, a, k: None),
                        min(model.parameters(), key=lambda p: p.numel()).register_hook(lambda g: None)]

    def log(self, **values) -> None:
        self.kept.append(values)
        if len(self.kept) > 1000:
            self.kept.clear()

    def close(self) -> None:
        for h in self.handles:
            h.remove()


class Loop:
    """A model, its optimizer and (optionally) a probe, stepping the same batch."""

    def __init__(self, factory, device: str, watch_kwargs: dict | None, *, bf16: bool = False,
                 compile: bool = False) -> None:
        torch.manual_seed(0)
        model, x, y, self.crit = factory()
        self.model, self.x, self.y = model.to(device), x.to(device), y.to(device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        if compile:
            self.model = torch.compile(self.model)
        self.device = device
        self.autocast = ((lambda: torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16))
                         if bf16 else contextlib.nullcontext)
        self.tmp = tempfile.TemporaryDirectory()
        self.probe = None
        if watch_kwargs is FLOOR:
            self.probe = NoOpHooks(self.model, self.opt)
        elif watch_kwargs is not None:
            self.probe = trainscope.watch(self.model, self.tmp.name, optimizer=self.opt, criterion=self.crit,
                                          **watch_kwargs)

    def run(self, steps: int) -> float:
        """Seconds per step over `steps` steps."""
        cuda = self.device.startswith("cuda")
        if cuda:
            torch.cuda.synchronize()
        clock = time.perf_counter if cuda or WALL_CLOCK else time.process_time
        t = clock()
        for _ in range(steps):
            self.opt.zero_grad(set_to_none=True)
            with self.autocast():
                loss = self.crit(self.model(self.x), self.y)
            loss.backward()
            self.opt.step()
            if self.probe is not None:
                self.probe.log(train_loss=loss)
        if cuda:
            torch.cuda.synchronize()
        return (clock() - t) / steps

    def close(self) -> None:
        if self.probe is not None:
            self.probe.close()
        self.tmp.cleanup()


def startup_ratio(factory, device: str, watch_kwargs: dict, startup: int, repeats: int, first: tuple,
                  **loop_kw) -> float:
    """Median over `repeats` fresh (plain, watched) pairs of the time ratio of their first `startup` steps
    (after 3 warm-up steps each); `first` is the pair the steady state goes on with. One pair alone swings
    by 5-10% on a shared machine (a flush, the writer thread's first chunk)."""
    ratios = []
    for r in range(repeats):
        plain, watched = first if r == 0 else (Loop(factory, device, None, **loop_kw),
                                                Loop(factory, device, watch_kwargs, **loop_kw))
        plain.run(3)
        watched.run(3)  # both warm (allocator, first-forward tracing)
        if r % 2:  # alternate which loop goes first
            w = watched.run(startup)
            p = plain.run(startup)
        else:
            p = plain.run(startup)
            w = watched.run(startup)
        ratios.append(w / p)
        if r:
            plain.close()
            watched.close()
    return statistics.median(ratios)


def measure(factory, device: str, watch_kwargs: dict, blocks: int, block: int = 100,
            startup: int = 300, startup_repeats: int = 3, **loop_kw) -> tuple[float, float, float, float]:
    """(plain s/step, watched s/step, median block ratio, start-up ratio).

    The first `startup` steps (dense grad norms, the early recorded steps 0, 1, 2, 4, ...) are timed on
    their own, on `startup_repeats` fresh pairs of loops (startup_ratio); then blocks of `block` steps (one
    recorded step each at the default every=100) alternate between the plain and the watched loop, and the
    ratio is the median over block pairs."""
    plain, watched = Loop(factory, device, None, **loop_kw), Loop(factory, device, watch_kwargs, **loop_kw)
    start_ratio = (startup_ratio(factory, device, watch_kwargs, startup, startup_repeats, (plain, watched), **loop_kw)
                   if startup > 0 else float("nan"))
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


# CPU runs are timed with the process's CPU time (all its threads, the probe's writer thread included), so
# other processes on a shared machine do not count; --wall-clock times them by the wall clock instead.
WALL_CLOCK = False


def parse_setting(text: str) -> tuple[str, dict]:
    """'every=1,activations=False' -> ('every=1,activations=False', {'every': 1, 'activations': False})."""
    kw = {}
    for part in filter(None, text.split(",")):
        k, _, v = part.partition("=")
        try:
            kw[k.strip()] = {"true": True, "false": False, "none": None}[v.strip().lower()]
        except KeyError:
            try:
                kw[k.strip()] = int(v)
            except ValueError:
                kw[k.strip()] = float(v)
    return text, kw


def main(argv: list[str] | None = None) -> int:
    global GPT_BATCH, GPT_SEQ, GPT_LAYERS, GPT_WIDTH, WALL_CLOCK
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 blocks, 50 start-up steps")
    ap.add_argument("--wall-clock", action="store_true",
                    help="time CPU runs by the wall clock (default: the process's CPU time, all its threads)")
    ap.add_argument("--blocks", type=int, default=None, help="interleaved 100-step blocks (default per model)")
    ap.add_argument("--block", type=int, default=100, help="steps per block")
    ap.add_argument("--startup", type=int, default=None, help="start-up steps (default 300, --quick 50)")
    ap.add_argument("--startup-repeats", type=int, default=None,
                    help="fresh loop pairs the start-up ratio is the median of (default 3, --quick 1)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cpu, and cuda when present)")
    ap.add_argument("--model", default=None,
                    help=f"comma-separated, of {', '.join(MODELS)} (default: mlp,cnn,transformer on CPU, "
                         "gpt100m on CUDA)")
    ap.add_argument("--watch", action="append", default=[], metavar="K=V[,K=V]",
                    help="an extra watch() setting to time (repeatable)")
    ap.add_argument("--no-default-settings", action="store_true", help="only the --watch settings")
    ap.add_argument("--floor", action="store_true",
                    help="also time the same hooks doing nothing (the floor under any Python probe)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (plain and watched)")
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                    help="bf16 autocast for forward and loss (default: on for gpt100m on CUDA)")
    ap.add_argument("--gpt-batch", type=int, default=None, help=f"GPT batch (default {GPT_BATCH} on CUDA, 2 on CPU)")
    ap.add_argument("--gpt-seq", type=int, default=None, help=f"GPT tokens per row (default {GPT_SEQ} on CUDA, 64 on CPU)")
    ap.add_argument("--gpt-layers", type=int, default=GPT_LAYERS, help="GPT blocks (default 12)")
    ap.add_argument("--gpt-width", type=int, default=GPT_WIDTH, help="GPT width d (default 768; heads = d / 64)")
    args = ap.parse_args(argv)
    GPT_LAYERS, GPT_WIDTH, WALL_CLOCK = args.gpt_layers, args.gpt_width, args.wall_clock
    if args.device:
        devices = [args.device]
    else:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if any(d.startswith("cuda") for d in devices) and not torch.cuda.is_available():
        print("CUDA is not available here (torch.cuda.is_available() is False); run this on a machine with a GPU.")
        return 2
    startup = args.startup if args.startup is not None else 50 if args.quick else 300
    startup_repeats = args.startup_repeats or (1 if args.quick else 3)
    settings = {} if args.no_default_settings else {"default (every=100)": {}, "every=1": {"every": 1}}
    settings.update(parse_setting(w) for w in args.watch)
    if args.floor:
        settings["no-op hooks (floor)"] = FLOOR
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; steady state: median over interleaved "
          f"{args.block}-step blocks; start-up: the first {startup} steps (median of {startup_repeats} fresh pairs); "
          f"CPU timed by "
          f"{'the wall clock' if WALL_CLOCK else 'process CPU time'}"
          + (f"; GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() and "cuda" in devices else ""))
    print(f"{'model':12s} {'device':6s} {'setting':28s} {'plain ms':>9s} {'watched ms':>11s} {'ratio':>7s} "
          f"{'start-up ratio':>15s}")
    for device in devices:
        cuda = device.startswith("cuda")
        names = (args.model or ("gpt100m" if cuda else "mlp,cnn,transformer")).split(",")
        for mname in names:
            if mname not in MODELS:
                ap.error(f"unknown model {mname!r} (one of {', '.join(MODELS)})")
            factory, blocks = MODELS[mname]
            if mname == "gpt100m":
                GPT_BATCH = args.gpt_batch or (16 if cuda else 2)
                GPT_SEQ = args.gpt_seq or (512 if cuda else 64)
            if args.blocks or args.quick:
                blocks = args.blocks or 3
            bf16 = args.bf16 if args.bf16 is not None else (cuda and mname == "gpt100m")
            tag = mname + (" bf16" if bf16 else "") + (" compiled" if args.compile else "")
            for sname, kw in settings.items():
                try:
                    p, w, ratio, start = measure(factory, device, kw, blocks, block=args.block,
                                                 startup=startup, startup_repeats=startup_repeats, bf16=bf16,
                                                 compile=args.compile)
                except Exception as e:  # noqa: BLE001 - one failing setting must not hide the others
                    print(f"{tag:12s} {device:6s} {sname:28s} failed: {type(e).__name__}: {e}", flush=True)
                    continue
                print(f"{tag:12s} {device:6s} {sname:28s} {p * 1e3:9.3f} {w * 1e3:11.3f} {ratio:7.3f} {start:15.3f}",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
