"""Waiting for a condition in tests, bounded: never a fixed sleep that a slow machine outruns."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.server import GatewayApp


async def until(predicate: Callable[[], object], timeout: float = 15.0) -> None:
    """Poll a plain or async predicate until it is true; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def until_lease_lapsed(app: GatewayApp) -> None:
    """After the gateway's Redis died: until its version lease has run out for good.

    Waiting for the lease alone is not enough: a renewal answered just before the death may
    land after the check and grant a fresh lease (rightly: no publish can happen meanwhile).
    Once the circuit breaker is open, renewals have failed since the death, so none is left
    in flight and no new lease can come."""
    await until(lambda: app.store is not None and app.store.breaker.is_open and not app.store.lease_holds())
