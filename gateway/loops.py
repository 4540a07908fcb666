"""Which asyncio event loop the gateway runs on.

``uvloop`` (libuv) by default: measured side by side with the bare gRPC server, it serves
about 10 % more settlements per core than the standard loop, for both (benchmarks/RESULTS.md).
``SGW_EVENT_LOOP=asyncio`` / ``--event-loop asyncio`` chooses the standard loop. The
benchmarks' no-op server calls the same function, so a comparison runs both on one loop.
"""

from __future__ import annotations

import asyncio

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
