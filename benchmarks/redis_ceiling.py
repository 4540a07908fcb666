"""The data ceiling: the gateway's Redis round trip alone, from one Python process.

The same read script with the same keys and arguments a request of the benchmark sends (the
institution and the request's distinct staff codes), through the same client
(``gateway.redis_client``, redis-py asyncio with hiredis) and the same event loop, on the
core the gateway gets, at the same concurrency. No gRPC, no parsing, no rules: what is left
when everything but the data is taken away. Prints one JSON line.

    python -m benchmarks.redis_ceiling REDIS_URL REQUEST.bin --concurrency 8 --duration 4
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import orjson

from gateway.config import Settings
from gateway.keys import Keys
from gateway.loops import install_event_loop
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.redis_client import async_client
from gateway.rules import staff_codes_to_fetch
from gateway.settlement import parse_request
from gateway.store import Store


async def measure(
    url: str, request: pb.ValidateRequest, concurrency: int, duration: float, warmup: float
) -> dict[str, object]:
    settings = Settings()
    parsed = parse_request(request, settings.rules, settings.max_lines)
    codes = staff_codes_to_fetch(parsed.lines, settings.rules)
    client = async_client(url, settings.redis_timeout_seconds)
    store = Store(client, Keys(settings.namespace))
    meta = await store.refresh()
    if meta is None:
        raise SystemExit("redis_ceiling: no data version is live")
    latencies: list[int] = []
    measuring = False
    stop_at = time.perf_counter() + warmup + duration

    async def worker() -> None:
        while (started := time.perf_counter()) < stop_at:
            await store.fetch_raw(meta, parsed.institution_code, codes)
            if measuring:
                latencies.append(int((time.perf_counter() - started) * 1e6))

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.sleep(warmup)
    measuring = True
    began = time.perf_counter()
    await asyncio.gather(*tasks)
    seconds = time.perf_counter() - began
    await client.aclose()
    return {"requests": len(latencies), "seconds": seconds, "latencies_us": latencies, "codes": len(codes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("redis_url")
    parser.add_argument("request", type=Path, help="a serialized ValidateRequest")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--event-loop", default=None)
    args = parser.parse_args()
    install_event_loop(args.event_loop)
    request = pb.ValidateRequest.FromString(args.request.read_bytes())
    result = asyncio.run(measure(args.redis_url, request, args.concurrency, args.duration, args.warmup))
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")


if __name__ == "__main__":
    main()
