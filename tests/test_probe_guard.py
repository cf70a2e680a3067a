"""HookGuard: a failing hook body disables only that hook, warns once and reports the error."""
from __future__ import annotations

import warnings

from trainscope.probe.guard import HookGuard


def test_failure_disables_only_that_hook_and_reports_once():
    errors = []
    guard = HookGuard(on_error=lambda name, e: errors.append((name, str(e))))
    calls = []

    def bad(x):
        calls.append(("bad", x))
        raise ValueError("boom")

    good = guard.wrap("good", lambda x: calls.append(("good", x)) or "ignored")
    bad_g = guard.wrap("bad", bad)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(3):
            assert bad_g(i) is None and good(i) is None  # a hook never returns a value
    assert calls == [("bad", 0), ("good", 0), ("good", 1), ("good", 2)]
    assert errors == [("bad", "boom")] and guard.disabled == {"bad"}
    assert len([w for w in caught if "'bad'" in str(w.message)]) == 1


def test_closed_guard_runs_nothing():
    guard = HookGuard()
    calls = []
    hook = guard.wrap("h", calls.append)
    hook(1)
    guard.closed = True
    hook(2)
    assert calls == [1]
