"""Which asyncio event loop the gateway runs on.

``asyncio`` is the standard loop; ``uvloop`` (libuv) is chosen with ``SGW_EVENT_LOOP`` /
``--event-loop``. The benchmarks' no-op server calls the same function, so a comparison
between the two always runs both on the same loop.
"""

from __future__ import annotations

import asyncio

EVENT_LOOPS = ("asyncio", "uvloop")
DEFAULT_EVENT_LOOP = "asyncio"


def parse_event_loop(value: str) -> str:
    name = value.strip().lower()
    if name not in EVENT_LOOPS:
        raise ValueError(f"expected one of {', '.join(EVENT_LOOPS)}")
    return name


def install_event_loop(name: str | None = None) -> str:
    """Make ``asyncio.run`` use the named loop; returns the name installed."""
    name = parse_event_loop(name or DEFAULT_EVENT_LOOP)
    if name == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    else:
        asyncio.set_event_loop_policy(None)
    return name
