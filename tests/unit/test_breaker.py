"""The circuit breaker opens after repeated failures, fails fast, and probes to recover."""

from __future__ import annotations

import pytest

from gateway.breaker import BreakerOpen, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_then_one_probe_closes_it() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=3, reset_seconds=1.0, clock=clock)
    for _ in range(2):
        breaker.before_call()
        breaker.failed()
    breaker.before_call()
    breaker.succeeded()  # a success resets the count
    for _ in range(3):
        breaker.before_call()
        breaker.failed()
    assert breaker.is_open and breaker.opened_total == 1
    with pytest.raises(BreakerOpen, match="retrying in at most 1s"):
        breaker.before_call()
    clock.now = 1.0
    breaker.before_call()  # the probe
    with pytest.raises(BreakerOpen):
        breaker.before_call()  # only one probe at a time
    breaker.succeeded()
    assert not breaker.is_open
    breaker.before_call()


def test_a_failed_probe_reopens_and_an_abandoned_probe_frees_the_slot() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=1, reset_seconds=1.0, clock=clock)
    breaker.before_call()
    breaker.failed()
    clock.now = 1.5
    breaker.before_call()
    breaker.failed()
    with pytest.raises(BreakerOpen):
        breaker.before_call()  # reopened at 1.5
    clock.now = 2.6
    breaker.before_call()
    breaker.abandoned()  # e.g. the client cancelled the call
    breaker.before_call()  # another probe may go
