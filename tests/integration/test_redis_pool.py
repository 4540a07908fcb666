"""A burst of concurrent checkouts queues for the store's connections instead of failing."""

from __future__ import annotations

import asyncio

import redis

from gateway.redis_client import async_client


async def test_a_burst_larger_than_the_pool_waits_for_connections(redis_url: str) -> None:
    client = async_client(redis_url, timeout=5.0, max_connections=4, client_name="pool-burst")
    try:
        await client.set("k", b"v")
        # BLPOP with a short timeout holds each connection for a moment, so 300 calls need
        # far more than 4 connections at once unless they queue.
        replies = await asyncio.gather(*(client.blpop(["empty"], timeout=0.01) for _ in range(40)),
                                       *(client.get("k") for _ in range(300)))  # fmt: skip
        assert replies[40:] == [b"v"] * 300
        probe = redis.Redis.from_url(redis_url)
        gateway_connections = [c for c in probe.client_list() if c.get("name") == "pool-burst"]
        probe.close()
        assert 1 <= len(gateway_connections) <= 4
    finally:
        await client.aclose()
