"""How long does `diagnose` take on a big run store (default: 10M layer rows)?

    python benchmarks/diagnose_big.py                         # build a 10M-row store in a temp dir, time it
    python benchmarks/diagnose_big.py --out /tmp/big --keep   # keep the store (reuse it with --store DIR)
    python benchmarks/diagnose_big.py --store /tmp/big/run --profile   # + cProfile's top functions
    python benchmarks/diagnose_big.py --per-rule              # + the time of each rule on its own

The store is written with the run store's own writer (`trainscope.store.writer.RunWriter`, chunked
Parquet with a manifest, as the probe writes it): `--steps` optimizer steps of a `--layers`-layer
MLP-like run with per-layer statistics every `--every` steps (grad, weight and update rows per
Linear, activation rows per Linear and per ReLU: 5 rows per layer and recorded step, so the
defaults 100,000 x 100 x every 5 give 10,000,000 layer rows) and train loss, global gradient norm
and learning rate at every step (300,000 scalar rows), a validation loss per epoch. The values
are a plausible healthy-ish run with a late divergence, so the rules have something to find.

Prints the time to load the store (`trainscope.load_run`), to run every rule (`trainscope.diagnose`
on the loaded run) and both together, the way `trainscope diagnose RUN --no-html` does (the issue's
target: <= 5 s): the median of `--repeat` runs in one process, and the first of them on its own
(later repeats reuse memory the first one faulted in; on some VMs fresh memory costs ~1-3 s per GB
of system time, so the first varies most). Not in the wheel: a benchmark only.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import trainscope
from trainscope.store import schema
from trainscope.store.writer import RunWriter, new_meta


def build_store(root: Path, steps: int, n_layers: int, every: int, epochs: int = 50, seed: int = 0,
                chunk_steps: int = 1000) -> tuple[Path, int, int]:
    """Write the run; returns (run dir, scalar rows, layer rows)."""
    rng = np.random.default_rng(seed)
    run_dir = root / "run"
    w = RunWriter(run_dir)
    names = np.array([f"blocks.{i}.fc" for i in range(n_layers)], dtype=object)
    relu = np.array([f"blocks.{i}.fc.relu" for i in range(n_layers)], dtype=object)
    per_epoch = max(1, steps // epochs)
    diverge = int(steps * 0.97)
    module_meta = []
    for i in range(n_layers):
        module_meta.append({"name": str(names[i]), "type": "Linear", "order": 2 * i, "n_params": 256 * 257,
                            "training": True})
        module_meta.append({"name": str(relu[i]), "type": "ReLU", "order": 2 * i + 1, "n_params": 0,
                            "training": True})
    meta = new_meta(
        name="big-run", every=every, world_size=1, steps=None,
        model={"class": "DeepMLP", "n_params": n_layers * 256 * 257, "n_trainable": n_layers * 256 * 257,
               "modules": module_meta},
        optimizer={"class": "AdamW", "defaults": {"lr": 1e-3, "weight_decay": 1e-2, "betas": [0.9, 0.999]},
                   "param_groups": [{"lr": 1e-3, "weight_decay": 1e-2, "n_params": 2 * n_layers}]},
        criterion={"class": "CrossEntropyLoss", "params": {}}, num_classes=10,
    )
    w.write_meta(meta)
    n_scalar = n_layer = 0
    depth = np.arange(n_layers)[:, None] / max(n_layers - 1, 1)
    for lo in range(0, steps, chunk_steps):
        hi = min(steps, lo + chunk_steps)
        step = np.arange(lo, hi, dtype=np.int64)
        t = step / max(steps - 1, 1)
        epoch = (step // per_epoch).astype(np.float64)
        loss = np.abs(2.3 * np.exp(-4 * t) + 0.05 + 0.08 * rng.standard_normal(len(step)) * np.exp(-2 * t))
        gnorm = 1.0 + 0.3 * rng.standard_normal(len(step)) ** 2
        late = step >= diverge
        loss[late] = np.inf if late.any() else loss[late]
        gnorm[late] = np.nan
        lr = 1e-3 * 0.5 * (1 + np.cos(np.pi * t))
        sc_step = np.concatenate([step, step, step])
        sc_name = np.repeat(np.array(["train_loss", schema.GRAD_NORM, "lr/0"], dtype=object), len(step))
        sc_value = np.concatenate([loss, gnorm, lr])
        sc_epoch = np.concatenate([epoch, epoch, epoch])
        ends = step[(step + 1) % per_epoch == 0]
        if len(ends):
            e = (ends // per_epoch).astype(np.float64)
            val = 2.0 * np.exp(-e / 3) + 0.25 + 0.002 * np.clip(e - 0.4 * epochs, 0, None) ** 1.5
            sc_step = np.concatenate([sc_step, ends])
            sc_name = np.concatenate([sc_name, np.array(["val_loss"] * len(ends), dtype=object)])
            sc_value = np.concatenate([sc_value, val])
            sc_epoch = np.concatenate([sc_epoch, e])
        w.append(schema.SCALARS, {"step": sc_step, "name": sc_name, "value": sc_value, "epoch": sc_epoch,
                                  "time": sc_step * 0.01})
        n_scalar += len(sc_step)
        rec = step[step % every == 0]
        if len(rec):
            S, L = len(rec), n_layers
            tt = rec[None, :] / max(steps - 1, 1)
            grad = 10 ** (-2 * (1 - depth) - 0.5 * tt) * (1 + 0.2 * rng.standard_normal((L, S)) ** 2)
            bad = rec >= diverge
            grad[:, bad] = np.nan
            nonfinite = np.zeros((L, S))
            nonfinite[:, bad] = 4096
            dead = np.clip(0.1 + 0.05 * rng.standard_normal((L, S)), 0, 1)
            ratio = 10 ** (-3 + 0.3 * rng.standard_normal((L, S)) - 0.6 * tt)
            std = (0.8 - 0.3 * depth) * np.ones((L, S))
            mean = 0.3 + 0.05 * rng.standard_normal((L, S))
            cols: dict[str, list] = {c: [] for c in schema.LAYER_COLUMNS if c not in ("rank", "attempt")}

            def add(kind: str, layer: np.ndarray, mtype: str, offset: int, **stats: np.ndarray) -> None:
                n = L * S
                cols["step"].append(np.tile(rec, L))
                cols["layer"].append(np.repeat(layer, S))
                cols["kind"].append(np.full(n, kind, dtype=object))
                cols["module_type"].append(np.full(n, mtype, dtype=object))
                cols["order"].append(np.repeat(2 * np.arange(L, dtype=np.int32) + offset, S))
                for s in schema.LAYER_STATS:
                    cols[s].append(stats[s].ravel() if s in stats else np.full(n, np.nan))

            add("grad", names, "Linear", 0, norm=grad, nonfinite=nonfinite, numel=np.full((L, S), 65792.0),
                mean=grad * 1e-3, std=grad / 256, max_abs=grad / 16, frac_zero=np.zeros((L, S)))
            add("weight", names, "Linear", 0, norm=np.full((L, S), 12.0), std=np.full((L, S), 0.05),
                mean=np.zeros((L, S)), max_abs=np.full((L, S), 0.2), nonfinite=np.zeros((L, S)))
            add("update", names, "Linear", 0, ratio=ratio)
            add("activation", names, "Linear", 0, mean=mean - 0.3, std=std * 1.4, frac_zero=np.zeros((L, S)),
                nonfinite=nonfinite, max_abs=std * 5)
            add("activation", relu, "ReLU", 1, mean=mean, std=std, frac_zero=dead * 0.98, frac_dead=dead,
                nonfinite=nonfinite, max_abs=std * 5)
            table = {c: np.concatenate(v) for c, v in cols.items()}
            w.append(schema.LAYERS, table)
            n_layer += len(table["step"])
        w.next_chunk()
    w.append(schema.EVENTS, {"step": np.array([diverge], dtype=np.int64), "kind": np.array(["nonfinite"], dtype=object),
                             "layer": np.array([""], dtype=object), "value": np.array([1.0]),
                             "detail": np.array(['{"tensor": "loss"}'], dtype=object)})
    if hasattr(w, "compact"):  # merge the chunks as the probe's close does
        w.compact(final=True)
    meta.update(status="finished", steps=steps, finished=time.time())
    w.write_meta(meta)
    if hasattr(w, "release"):
        w.release()
    return run_dir, n_scalar, n_layer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--layers", type=int, default=100)
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="where to build the store (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the store built in --out")
    ap.add_argument("--store", type=Path, default=None, help="time this existing store instead of building one")
    ap.add_argument("--repeat", type=int, default=3, help="timed repeats (the median is printed)")
    ap.add_argument("--profile", action="store_true", help="cProfile one load+diagnose, print the top 30")
    ap.add_argument("--per-rule", action="store_true", help="also time each rule on its own")
    args = ap.parse_args(argv)

    tmp = None
    if args.store is not None:
        run_dir = args.store
    else:
        if args.out is None:
            tmp = tempfile.TemporaryDirectory(prefix="trainscope-big-")
            root = Path(tmp.name)
        else:
            root = args.out
            root.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        run_dir, ns, nl = build_store(root, args.steps, args.layers, args.every)
        size = sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file())
        print(f"store: {run_dir} ({size / 1e6:.0f} MB): {ns:,} scalar rows, {nl:,} layer rows "
              f"(built in {time.perf_counter() - t0:.1f} s)")
    load_s, diag_s, load_c, diag_c = [], [], [], []
    findings = []
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        run = trainscope.load_run(run_dir)
        t1, c1 = time.perf_counter(), time.process_time()
        findings = trainscope.diagnose(run)
        t2, c2 = time.perf_counter(), time.process_time()
        load_s.append(t1 - t0)
        diag_s.append(t2 - t1)
        load_c.append(c1 - c0)
        diag_c.append(c2 - c1)
        del run
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    print(f"load_run: {med(load_s):.2f} s ({med(load_c):.2f} s CPU), diagnose (all rules): {med(diag_s):.2f} s "
          f"({med(diag_c):.2f} s CPU), together {med([a + b for a, b in zip(load_s, diag_s)]):.2f} s "
          f"({med([a + b for a, b in zip(load_c, diag_c)]):.2f} s CPU) (median of {args.repeat}; "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs)")
    print(f"first repeat (a fresh process, as `trainscope diagnose` runs; its memory is the fresh kind that "
          f"costs page faults): load_run {load_s[0]:.2f} s + diagnose {diag_s[0]:.2f} s = "
          f"{load_s[0] + diag_s[0]:.2f} s")
    found = ", ".join(f"{f.name} ({getattr(f.severity, 'value', f.severity)})" for f in findings)
    print(f"findings: {found or 'none'}")
    if args.per_rule:
        from trainscope.rules.engine import diagnose_report

        run = trainscope.load_run(run_dir)
        times = []
        from trainscope.rules.catalogue import load_catalogue

        for name in sorted(load_catalogue()):
            t0 = time.perf_counter()
            diagnose_report(run, select=[name])
            times.append((time.perf_counter() - t0, name))
        print("slowest rules: " + ", ".join(f"{n} {s:.2f} s" for s, n in sorted(times, reverse=True)[:10]))
    if args.profile:
        import cProfile
        import pstats

        pr = cProfile.Profile()
        pr.enable()
        trainscope.diagnose(trainscope.load_run(run_dir))
        pr.disable()
        pstats.Stats(pr).sort_stats("cumulative").print_stats(30)
    if tmp is not None and not args.keep:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
