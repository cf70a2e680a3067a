"""What the probe did not see (principle 3: missing data is not absence of a problem).

When the watched module never ran a training forward, no loss reached the log or the criterion, or
no optimizer step was seen, most rules cannot run. Saying so only in "N rules could not run" hides
it; this rule reports it as a finding with what is missing and the line that records it.
"""
from __future__ import annotations

from typing import Iterator

from trainscope.rules.detectors._common import events, kind_mask
from trainscope.rules.finding import Finding
from trainscope.rules.registry import Context, NotApplicable, detector
from trainscope.rules.signals import TRAIN_LOSS_NAMES, first_series
from trainscope.store import schema


def _has(run, kind: str) -> bool:
    try:
        kind_mask(run, kind)
    except NotApplicable:
        return False
    return True


@detector("incomplete-recording")
def incomplete_recording(ctx: Context) -> Iterator[Finding]:
    run = ctx.run
    if run.source != "trainscope":
        raise NotApplicable("an imported log: it has only what it logged")
    missing: list[tuple[str, str, str]] = []  # (what, line to add, severity)
    saw_forward = _has(run, "activation") or not events(run, "model_output").empty \
        or not events(run, "input_scale").empty
    steps = run.scalar(schema.LOOP_TRAINING)
    saw_steps = not steps.empty or _has(run, "grad") or _has(run, "update") or not run.scalar(schema.GRAD_NORM).empty
    logged_loss = first_series(run, TRAIN_LOSS_NAMES) is not None
    saw_loss = logged_loss or not events(run, "criterion_input").empty
    if not saw_forward:
        missing.append(("no training forward of the watched module",
                        "watch the module you call in the loop: trainscope.watch(model, run_dir, optimizer=opt) "
                        "with the same `model` object (not a copy, not a submodule that never runs)", "warning"))
    if not saw_steps:
        missing.append(("no optimizer step",
                        "pass the optimizer: trainscope.watch(model, run_dir, optimizer=optimizer), or call "
                        "probe.step() after each update", "warning"))
    if not logged_loss:
        missing.append(("no training loss logged" + ("" if saw_loss else " and no loss seen at a criterion"),
                        "log it every step: probe.log(train_loss=loss) (a tensor is fine, no .item() needed)",
                        "info"))  # the run may be fine; the loss rules just cannot judge it
    if not missing:
        return
    sev = "warning" if any(m[2] == "warning" for m in missing) else "info"
    yield ctx.finding(
        "the probe recorded " + "; ".join(m[0] for m in missing) + ", so the rules that need it could not judge this run",
        evidence={"missing": [m[0] for m in missing]},
        severity=sev,
        extra_fixes=[m[1] for m in missing],
    )
