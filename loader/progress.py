"""A progress bar for long interactive loads, on stderr, only when stderr is a terminal.

A million-row export takes several seconds; an operator at a terminal should see it move.
Scripts, cron and ``watch`` get nothing on stderr but the log lines. Redrawn at most ten
times a second, so it costs nothing measurable.
"""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO


class Progress(Protocol):
    def update(self, phase: str, done: int, total: int) -> None:
        """``done`` of ``total`` units of ``phase`` (total 0: unknown)."""

    def close(self) -> None: ...


class NoProgress:
    def update(self, phase: str, done: int, total: int) -> None:
        pass

    def close(self) -> None:
        pass


class TerminalBar:
    WIDTH = 30
    INTERVAL = 0.1

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._last = 0.0
        self._phase = ""
        self._drawn = False

    def update(self, phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if phase == self._phase and now - self._last < self.INTERVAL and done < total:
            return
        self._phase, self._last = phase, now
        if total > 0:
            share = min(done / total, 1.0)
            filled = int(share * self.WIDTH)
            bar = "█" * filled + "·" * (self.WIDTH - filled)
            text = f"\r{phase:<10s} {bar} {share:6.1%}"
        else:
            text = f"\r{phase:<10s} {done:,}"
        self.stream.write(text + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False


def for_stderr(enabled: bool = True) -> Progress:
    """A bar when stderr is a terminal (and the caller wants one), else nothing."""
    if enabled and sys.stderr.isatty():
        return TerminalBar(sys.stderr)
    return NoProgress()
