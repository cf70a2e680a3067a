"""Regenerate `sample_runs/`: small runs recorded by the reference trainer, one per playbook pattern
the trainer can produce for real, plus healthy ones.

    python scripts/make_sample_runs.py            # all of them (about a minute on one CPU core)
    python scripts/make_sample_runs.py dead-relu  # only some

Deterministic: the same torch build gives the same recorded values (wall-clock columns aside). Each
run is re-created from scratch, then `sample_runs/README.md` is rewritten with what `trainscope
diagnose` says about each. tests/test_sample_runs.py asserts the expected findings.
"""
from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "sample_runs"


@dataclass(frozen=True)
class Sample:
    name: str  # directory under sample_runs/
    preset: str
    scale: float
    shows: str  # the playbook pattern it demonstrates


SAMPLES = (
    Sample("streamrec-baseline", "streamrec-baseline", 0.5,
           "StreamRec baseline: overfitting, no early stopping, PyTorch default init (pattern 3, 7.2)"),
    Sample("streamrec-he", "streamrec-he", 0.5, "StreamRec step 1, He init: still overfits"),
    Sample("streamrec-bn", "streamrec-bn", 0.5, "StreamRec step 2, + BatchNorm: still overfits"),
    Sample("streamrec-regularized", "streamrec-regularized", 0.5,
           "StreamRec step 3, + dropout and AdamW: the gap closes"),
    Sample("healthy-streamrec-full", "streamrec-full", 0.5,
           "StreamRec step 4, full toolkit (one-cycle, clipping, early stopping): healthy"),
    Sample("diverging-lr", "diverging-lr", 1.0, "learning rate far too high: loss explodes to NaN (pattern 2)"),
    Sample("flat-loss", "flat-loss", 1.0, "learning rate far too low: the loss does not move (pattern 1)"),
    Sample("dead-relu", "dead-relu", 1.0, "ReLU units that never fire (7.8.3)"),
    Sample("vanishing-sigmoid", "vanishing-sigmoid", 1.0, "8 sigmoid layers: gradients vanish toward the input (7.8.3)"),
    Sample("docclf-buggy", "docclf-buggy", 0.5, "the document classifier's interacting bugs (case study 002)"),
    Sample("healthy-docclf-fixed", "docclf-fixed", 0.5, "the document classifier fixed: healthy"),
    Sample("healthy-digits", "digits", 1.0, "sklearn digits with the full recipe: healthy, >= 97% test accuracy"),
)


def make(sample: Sample) -> float:
    from trainscope.train.loop import Trainer
    from trainscope.train.presets import build

    target = OUT / sample.name
    if target.exists():
        shutil.rmtree(target)
    exp = build(sample.preset, scale=sample.scale)
    t0 = time.perf_counter()
    Trainer(exp.model, exp.optimizer, exp.criterion, exp.splits.train, exp.splits.val,
            config=exp.train_config, schedule=exp.schedule, test_data=exp.splits.test,
            run_dir=target, run_name=sample.name, run_config=exp.config).fit()
    return time.perf_counter() - t0


def write_readme(samples: tuple[Sample, ...]) -> None:
    import trainscope

    lines = [
        "# Sample runs",
        "",
        "Small runs recorded by trainscope's reference trainer (`scripts/make_sample_runs.py` regenerates them",
        "deterministically). Try `trainscope diagnose sample_runs/<name>`; `tests/test_sample_runs.py` asserts",
        "the expected findings of each.",
        "",
        "| run | preset (scale) | shows | findings at generation (warning and above) |",
        "| --- | --- | --- | --- |",
    ]
    for s in samples:
        if not (OUT / s.name).is_dir():
            continue
        findings = trainscope.diagnose(OUT / s.name)
        shown = ", ".join(f"`{f.name}`" for f in findings if f.severity.value in ("error", "warning")) or "none"
        lines.append(f"| `{s.name}` | `{s.preset}` ({s.scale:g}) | {s.shows} | {shown} |")
    lines += ["", "Re-create one: `trainscope train --preset PRESET --scale SCALE --out DIR`.", ""]
    (OUT / "README.md").write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)  # small models: one thread is fastest and keeps runs reproducible
    wanted = set(argv)
    unknown = wanted - {s.name for s in SAMPLES}
    if unknown:
        print(f"unknown sample(s): {', '.join(sorted(unknown))}; valid: {', '.join(s.name for s in SAMPLES)}",
              file=sys.stderr)
        return 2
    OUT.mkdir(exist_ok=True)
    for s in SAMPLES:
        if wanted and s.name not in wanted:
            continue
        secs = make(s)
        size = sum(p.stat().st_size for p in (OUT / s.name).rglob("*") if p.is_file())
        print(f"{s.name:24s} {secs:6.1f}s {size / 1024:7.0f} KiB")
    write_readme(SAMPLES)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
