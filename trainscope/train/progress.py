"""A dependency-free progress bar with loss and learning rate; `quiet=True` prints nothing.

On a terminal it redraws one line; when stderr is a file or pipe (CI logs) it prints one line per
epoch instead of a stream of carriage returns.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total_epochs: int, steps_per_epoch: int, quiet: bool = False, stream: TextIO | None = None,
                 width: int = 24) -> None:
        self.total_epochs = total_epochs
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_draw = 0.0
        self.epoch = 0

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def step(self, step_in_epoch: int, loss: float, lr: float) -> None:
        if self.quiet or not self.tty:
            return
        now = time.monotonic()
        if now - self._last_draw < 0.1 and step_in_epoch < self.steps_per_epoch:
            return  # redraw at most 10 times a second
        self._last_draw = now
        frac = min(1.0, step_in_epoch / self.steps_per_epoch)
        filled = int(frac * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\repoch {self.epoch}/{self.total_epochs} [{bar}] loss {loss:.4f} lr {lr:.2e}")
        self.stream.flush()

    def end_epoch(self, summary: str) -> None:
        if self.quiet:
            return
        prefix = "\r" if self.tty else ""
        self.stream.write(f"{prefix}epoch {self.epoch}/{self.total_epochs} {summary}" + " " * 8 + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        if not self.quiet:
            self.stream.write(text + "\n")
            self.stream.flush()
