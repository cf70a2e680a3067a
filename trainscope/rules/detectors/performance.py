"""Performance ("training is slow", production checklist §5 and the troubleshooting map).

These read the probe's step timing (trainscope/probe/timing.py: time/data, time/forward,
time/backward, time/optimizer, time/gpu_caught_up) and the perf_facts event of the first forward.
"""
from __future__ import annotations

from typing import Iterator

import pandas as pd

from trainscope.rules.detectors._common import detail, events, fmt
from trainscope.rules.finding import Finding
from trainscope.rules.registry import Context, NotApplicable, detector

DATA, FORWARD, BACKWARD, OPTIMIZER = "time/data", "time/forward", "time/backward", "time/optimizer"
CAUGHT_UP = "time/gpu_caught_up"


def _timing(ctx: Context) -> pd.DataFrame:
    names = set(ctx.run.scalar_names())
    if DATA not in names or FORWARD not in names:
        raise NotApplicable("no step timing in this run (recorded by trainscope.watch since issue 12)")
    df = pd.DataFrame({n: ctx.run.scalar(n) for n in (DATA, FORWARD, BACKWARD, OPTIMIZER) if n in names})
    df = df.dropna(subset=[DATA, FORWARD]).fillna(0.0)
    df = df[df.index > 0]  # step 0 has no previous step to wait after
    df["total"] = df[[c for c in (DATA, FORWARD, BACKWARD, OPTIMIZER) if c in df]].sum(axis=1)
    return df[df["total"] > 0]


def _ms(x: float) -> str:
    return fmt(round(1000 * float(x), 3))


@detector("input-pipeline-bound")
def input_pipeline_bound(ctx: Context) -> Iterator[Finding]:
    df = _timing(ctx)
    if len(df) < ctx.p("min_steps"):
        raise NotApplicable(f"only {len(df)} timed steps (< {ctx.p('min_steps')})")
    share = df[DATA] / df["total"]
    med_share, med_wait, med_step = float(share.median()), float(df[DATA].median()), float(df["total"].median())
    if med_share < ctx.p("min_share") or 1000 * med_wait < ctx.p("min_wait_ms"):
        return
    parts = {c.split("/")[1]: _ms(df[c].median()) for c in (FORWARD, BACKWARD, OPTIMIZER) if c in df}
    yield ctx.finding(
        f"The loop waits for data {med_share:.0%} of each step: median {_ms(med_wait)} ms of a {_ms(med_step)} ms "
        f"step over {len(df)} timed steps (forward {parts.get('forward')} ms, backward {parts.get('backward')} ms, "
        f"optimizer {parts.get('optimizer')} ms); the model is starved by the input pipeline",
        steps=(int(df.index[0]), int(df.index[-1])),
        evidence={"data_share": round(med_share, 3), "data_ms": _ms(med_wait), "step_ms": _ms(med_step),
                  **{f"{k}_ms": v for k, v in parts.items()}, "timed_steps": len(df)},
    )


@detector("host-sync-bound")
def host_sync_bound(ctx: Context) -> Iterator[Finding]:
    if CAUGHT_UP not in set(ctx.run.scalar_names()):
        raise NotApplicable("not a GPU run (the host-GPU check needs CUDA events)")
    caught = ctx.run.scalar(CAUGHT_UP).dropna()
    caught = caught[caught.index > 0]
    if len(caught) < ctx.p("min_steps"):
        raise NotApplicable(f"only {len(caught)} timed GPU steps (< {ctx.p('min_steps')})")
    df = _timing(ctx)
    share = float((df[DATA] / df["total"]).median()) if len(df) else 0.0
    frac = float(caught.mean())
    if frac < ctx.p("min_caught_up") or share >= ctx.p("max_data_share"):
        return
    yield ctx.finding(
        f"In {frac:.0%} of {len(caught)} timed steps the GPU had already finished the previous step when the host "
        f"began the next forward: the GPU waits for the host (a per-step .item()/.cpu()/print sync, or more Python "
        f"and launch overhead than GPU work; median step {_ms(df['total'].median()) if len(df) else '-'} ms)",
        steps=(int(caught.index[0]), int(caught.index[-1])),
        evidence={"caught_up_share": round(frac, 3), "data_share": round(share, 3), "timed_steps": len(caught)},
    )


@detector("performance-hints")
def performance_hints(ctx: Context) -> Iterator[Finding]:
    ev = events(ctx.run, "perf_facts")
    if ev.empty:
        raise NotApplicable("no perf_facts event (recorded by trainscope.watch since issue 12)")
    f = detail(ev.iloc[0])
    if f.get("device") != "cuda":
        raise NotApplicable("the performance hints are about CUDA runs")
    name = f.get("device_name") or "the GPU"
    step = int(ev.iloc[0]["step"])
    if f.get("bf16_supported") and not f.get("autocast") and f.get("params_dtype") == "float32":
        yield ctx.finding(
            f"No mixed precision on {name}, which supports bf16: the forward ran in float32",
            steps=(step, step), evidence={"device": name, "autocast": False, "bf16_supported": True},
            fix_values={"hint_fix": "Wrap the forward and loss in torch.autocast('cuda', dtype=torch.bfloat16) "
                                    "(bf16 needs no GradScaler)"})
    odd = f.get("dims_not_multiple_of_8") or []
    if f.get("autocast") and odd:
        shown = ", ".join(f"{d.get('layer')} {d.get('dims')}" for d in odd[:6]) + (" ..." if len(odd) > 6 else "")
        yield ctx.finding(
            f"Under autocast ({f.get('autocast_dtype')}), {len(odd)} of {f.get('n_layers_with_dims')} Linear/Conv "
            f"layers have widths that are not multiples of 8: {shown}",
            layers=[str(d.get("layer")) for d in odd], steps=(step, step),
            evidence={"layers": len(odd), "example": shown},
            fix_values={"hint_fix": "Pad hidden widths, vocabulary and channel counts to multiples of 8 so the "
                                    "matrix multiplies use Tensor Cores"})
    batch, mem = f.get("batch_size"), f.get("device_memory_gb")
    if batch and mem and batch < ctx.p("min_batch") and mem >= ctx.p("large_gpu_gb"):
        yield ctx.finding(
            f"Batches of {batch} on {name} ({mem} GiB): most of a large GPU idles per step",
            steps=(step, step), evidence={"batch_size": batch, "device_memory_gb": mem},
            fix_values={"hint_fix": f"Raise the batch size (now {batch}) and scale the learning rate (about "
                                    "sqrt(k) for k times the batch, with warmup), or train several models at once"})
