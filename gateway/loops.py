"""Which asyncio event loop the gateway runs on.

``uvloop`` (libuv) by default: measured side by side with the bare gRPC server, it serves
about 10 % more settlements per core than the standard loop, for both (benchmarks/RESULTS.md).
``SGW_EVENT_LOOP=asyncio`` / ``--event-loop asyncio`` chooses the standard loop. The
benchmarks' no-op server calls the same function, so a comparison runs both on one loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

EVENT_LOOPS = ("asyncio", "uvloop")
DEFAULT_EVENT_LOOP = "uvloop"


def parse_event_loop(value: str) -> str:
    name = value.strip().lower()
    if name not in EVENT_LOOPS:
        raise ValueError(f"expected one of {', '.join(EVENT_LOOPS)}")
    return name


def install_event_loop(name: str | None = None) -> str:
    """Make ``asyncio.run`` use the named loop; returns the name installed."""
    name = parse_event_loop(name or DEFAULT_EVENT_LOOP)
    if name == "uvloop":
        try:
            import uvloop
        except ImportError as exc:
            raise RuntimeError("uvloop is not installed: install it, or set SGW_EVENT_LOOP=asyncio") from exc

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    else:
        asyncio.set_event_loop_policy(None)
    return name


async def every(
    interval: float, step: Callable[[], Awaitable[object]], failed: Callable[[Exception], None]
) -> None:
    """Await ``step()`` now and then every ``interval`` seconds, until cancelled. A failed step
    is handed to ``failed`` and the loop goes on: a background duty (health, the version
    lease) that died on one Redis error would silently never run again."""
    task = asyncio.current_task()
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - handed to ``failed``, which reports it
            failed(exc)
        # The Redis client can turn a cancellation that lands mid-call into a store error,
        # which ``failed`` tolerates; cancelling must still end the loop.
        if task is not None and task.cancelling():
            raise asyncio.CancelledError
        await asyncio.sleep(interval)
