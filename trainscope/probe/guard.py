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
        self.disabled: set[str] = set()  # the hooks that failed
        self.on_error = on_error
        self._closed = False
        self._names: set[str] = set()  # every name wrapped so far
        # what the guarded hooks look up (one set membership per call): the failed hooks, and once closed
        # every name. Hooks run at every training step, so the check is kept to this one lookup.
        self._off: set[str] = set()

    @property
    def closed(self) -> bool:
        """Set by Probe.close(): every guarded hook becomes a no-op."""
        return self._closed

    @closed.setter
    def closed(self, value: bool) -> None:
        self._closed = bool(value)
        self._off.clear()
        self._off.update(self.disabled | (self._names if self._closed else set()))

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., None]:
        """`fn` guarded under `name`; always returns None, so a hook can never alter what it sees."""
        guard_ref = weakref.ref(self)  # a hook left on the user's model must not keep the probe alive
        off = self._off
        self._names.add(name)
        if self._closed:
            off.add(name)

        def guarded(*args: Any, **kwargs: Any) -> None:
            if name in off:
                return None
            try:
                fn(*args, **kwargs)
            except Exception as e:
                if getattr(e, "stops_run", False):  # on_finding="raise": the user asked for the run to stop
                    raise
                guard = guard_ref()
                if guard is not None:
                    guard.failed(name, e)
            return None

        return guarded

    def failed(self, name: str, e: BaseException) -> None:
        """Disable `name` (first failure only) and say so once."""
        if name in self.disabled:
            return
        self.disabled.add(name)
        self._off.add(name)
        warnings.warn(f"trainscope: the {name!r} hook failed and is now disabled ({type(e).__name__}: {e}); "
                      "training continues unchanged", RuntimeWarning, stacklevel=3)
        if self.on_error is not None:
            self.on_error(name, e)
