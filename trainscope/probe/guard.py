"""Hook guards: an exception in any probe hook disables that hook, once, with a warning and a
`hook_error` event; the training and the other hooks go on unchanged."""
from __future__ import annotations

import warnings
import weakref
from typing import Any, Callable

# (hook name, error) -> None: how a failure is recorded (the probe writes a `hook_error` event).
ErrorSink = Callable[[str, BaseException], None]


class HookGuard:
    """The registry of disabled hooks and the wrapper every hook body runs inside."""

    def __init__(self, on_error: ErrorSink | None = None) -> None:
        self.disabled: set[str] = set()
        self.closed = False  # set by Probe.close(): every guarded hook becomes a no-op
        self.on_error = on_error

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., None]:
        """`fn` guarded under `name`; always returns None, so a hook can never alter what it sees."""
        guard_ref = weakref.ref(self)

        def guarded(*args: Any, **kwargs: Any) -> None:
            guard = guard_ref()
            if guard is None or guard.closed or name in guard.disabled:
                return None
            try:
                fn(*args, **kwargs)
            except Exception as e:
                if getattr(e, "stops_run", False):  # on_finding="raise": the user asked for the run to stop
                    raise
                guard.failed(name, e)
            return None

        return guarded

    def failed(self, name: str, e: BaseException) -> None:
        """Disable `name` (first failure only) and say so once."""
        if name in self.disabled:
            return
        self.disabled.add(name)
        warnings.warn(f"trainscope: the {name!r} hook failed and is now disabled ({type(e).__name__}: {e}); "
                      "training continues unchanged", RuntimeWarning, stacklevel=3)
        if self.on_error is not None:
            self.on_error(name, e)
