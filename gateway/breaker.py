"""A small circuit breaker in front of Redis, so a dead store costs microseconds, not timeouts.

Without it every call during an outage would wait for the Redis timeout before falling back
to the cache, and the checkout p99 would be that timeout for as long as the outage lasts.
After ``failures`` consecutive failed calls the breaker opens: calls fail at once for
``reset_seconds``; then one call at a time is let through as a probe, and its success closes
the breaker again (no restart needed). Single event loop: no locking.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class BreakerOpen(ConnectionError):
    """The store failed repeatedly just now; the call was not attempted."""


class CircuitBreaker:
    def __init__(
        self,
        failures: int = 3,
        reset_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures <= 0 or reset_seconds <= 0:
            raise ValueError("failures and reset_seconds must be positive")
        self.threshold = failures
        self.reset_seconds = reset_seconds
        self.clock = clock
        self._consecutive = 0
        self._opened_at: float | None = None
        self._probing = False
        self.opened_total = 0

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def before_call(self) -> None:
        """Raise ``BreakerOpen`` unless the call may go to the store."""
        opened = self._opened_at
        if opened is None:
            return
        if self._probing or self.clock() - opened < self.reset_seconds:
            raise BreakerOpen(
                f"the store failed {self._consecutive} times in a row; "
                f"retrying in at most {self.reset_seconds:g}s"
            )
        self._probing = True  # this call is the probe

    def succeeded(self) -> None:
        self._consecutive = 0
        self._opened_at = None
        self._probing = False

    def abandoned(self) -> None:
        """The call ended without an answer either way (e.g. its client went away)."""
        self._probing = False

    def failed(self) -> None:
        self._consecutive += 1
        if self._probing or (self._opened_at is None and self._consecutive >= self.threshold):
            if self._opened_at is None:
                self.opened_total += 1
            self._opened_at = self.clock()
        self._probing = False
