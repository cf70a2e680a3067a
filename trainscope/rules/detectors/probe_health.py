"""The probe's own health (TS701 probe-degraded): hooks that failed and disabled themselves, and
`probe.log()` values that were dropped. A rule that finds nothing on data the probe never recorded
is not evidence of health, so the diagnosis says what is missing and since when."""
from __future__ import annotations

from typing import Iterator

from trainscope.rules.detectors._common import detail, events
from trainscope.rules.finding import Finding
from trainscope.rules.registry import Context, NotApplicable, detector

# hook name -> (what the probe stops recording, rules that read it)
MISSING: dict[str, tuple[str, tuple[str, ...]]] = {
    "step_pre": ("the per-step scalars (lr, momentum, grad_norm, loop facts) and the gradient/weight statistics",
                 ("exploding-gradients", "vanishing-gradients", "unstable-gradients", "lr-too-high", "lr-too-low",
                  "missing-zero-grad", "eval-mode-during-training", "scheduler-step-cadence")),
    "step_post": ("the step count (later values land on one step) and the update statistics",
                  ("lr-too-high", "lr-too-low", "unstable-gradients", "scheduler-step-cadence")),
    "grad_sentinel": ("the backward count and whether .grad was reset before each step",
                      ("missing-zero-grad",)),
    "backward_end": ("the step count of a run without an optimizer", ("exploding-gradients", "vanishing-gradients")),
    "model_forward_pre": ("the training/eval mode, batch size, input scale and the activation statistics",
                          ("eval-mode-during-training", "unnormalized-inputs", "dead-relu", "saturated-activations",
                           "collapsed-activations", "batchnorm-small-batch")),
    "model_forward": ("the first forward's layer order, the model output facts and the init table",
                      ("poor-initialization", "output-activation-mismatch", "softmax-before-cross-entropy")),
    "activation": ("the activation statistics", ("dead-relu", "saturated-activations", "collapsed-activations")),
    "trace": ("the forward order of the layers", ("vanishing-gradients", "poor-initialization")),
    "criterion": ("what reached the loss", ("softmax-before-cross-entropy", "output-activation-mismatch",
                                            "initial-loss-mismatch")),
    "log": ("the values given to probe.log (losses, metrics)", ("divergence", "overfitting", "loss-not-decreasing")),
    "flush": ("everything buffered at the failed write", ()),
}


@detector("probe-degraded")
def probe_degraded(ctx: Context) -> Iterator[Finding]:
    run = ctx.run
    if run.source != "trainscope":
        raise NotApplicable("an imported log has no probe")
    failed: dict[str, tuple[int | None, str]] = {}
    for _, row in events(run, "hook_error").iterrows():
        d = detail(row)
        hook = str(d.get("hook") or "?")
        if hook not in failed:
            error = (str(d.get("error") or "").strip().splitlines() or [""])[0]
            failed[hook] = (int(row["step"]), error[:200] + ("..." if len(error) > 200 else ""))
    for hook in run.meta.get("disabled_hooks") or []:
        failed.setdefault(str(hook), (None, ""))
    last = int(run.meta.get("steps") or 0)
    for hook, (step, error) in sorted(failed.items(), key=lambda kv: (kv[1][0] is None, kv[1][0] or 0, kv[0])):
        missing, rules = MISSING.get(hook, ("what that hook collects", ()))
        since = f"at step {step}" if step is not None else "(step unknown)"
        why = f" ({error})" if error else ""
        affected = f"; rules that read it saw only the steps before: {', '.join(rules)}" if rules else ""
        yield ctx.finding(
            f"the probe's {hook!r} hook failed {since}{why} and was disabled: no {missing} after that"
            f"{affected}",
            steps=(step, max(step, last - 1)) if step is not None else None,
            evidence={"hook": hook, "since_step": step, "error": error, "missing": missing,
                      "affected_rules": ", ".join(rules)},
        )
    dropped = events(run, "value_dropped")
    if not dropped.empty:
        parts = []
        for _, row in dropped.iterrows():
            d = detail(row)
            parts.append(f"{d.get('name')} ({d.get('reason')}, from step {int(row['step'])})")
        yield ctx.finding(
            f"{len(parts)} probe.log value name(s) were dropped because they are not numbers: {'; '.join(parts)}",
            severity="info",
            evidence={"dropped": len(parts), "names": ", ".join(str(detail(r).get("name")) for _, r in dropped.iterrows())},
        )
