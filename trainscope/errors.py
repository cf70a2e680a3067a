"""The one exception type users see: bad input named plainly, never a raw traceback."""


class TrainscopeError(Exception):
    """A problem with the user's input (run directory, log file, rule id, config)."""


class TrainscopeFinding(RuntimeError):
    """`watch(..., on_finding="raise")`: a live finding stopped the run (what was recorded is kept).

    Attributes: rule (e.g. "softmax-before-cross-entropy"), code ("TS601"), step, message, run_dir."""

    stops_run = True  # the probe's hook guards let it through

    def __init__(self, rule: str, code: str, step: int, message: str, run_dir: str = "") -> None:
        super().__init__(f"{code} {rule} (step {step}): {message}" + (f"  [run: {run_dir}]" if run_dir else ""))
        self.rule, self.code, self.step, self.message, self.run_dir = rule, code, step, message, run_dir
