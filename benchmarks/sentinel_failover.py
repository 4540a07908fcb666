"""Sentinel failover figures: what callers see while the Sentinels replace the Redis primary.

A real primary, replica and three Sentinels on loopback ports (the helpers of
tests/integration/test_sentinel.py), a real ``settlement-gateway serve`` on the
``redis+sentinel://`` URL under closed-loop load (every answer checked against live truth),
and one fault per run: ``SENTINEL FAILOVER`` (a planned switch) or ``kill -9`` of the primary
(the Sentinels must first agree it is down: ``down-after-milliseconds`` 1000). Reported per
run: calls, refused (UNAVAILABLE), degraded, wrong; seconds from the fault until the
Sentinels name the new primary and until the gateway's first live answer from it; the p99
latency from the fault to that answer.

    python -m benchmarks.sentinel_failover --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import grpc

from gateway.embedded import find_redis_server
from tests.conftest import RedisProcess, free_port
from tests.faultload import (
    GatewayProcess,
    Load,
    bills,
    load_population,
    percentile,
    staff_codes,
    truth,
    wrong_answers,
)
from tests.integration.test_sentinel import SentinelGroup, SentinelProcess, until

OK = grpc.StatusCode.OK


def start_group(workdir: Path) -> SentinelGroup:
    binary = find_redis_server()
    primary = RedisProcess(binary, free_port(), workdir)
    replica = RedisProcess(binary, free_port(), workdir, ("--replicaof", "127.0.0.1", str(primary.port)))
    group = SentinelGroup({primary.port: primary, replica.port: replica}, [])
    primary.start()
    replica.start()
    for _ in range(3):
        sentinel = SentinelProcess(binary, free_port(), workdir, primary.port)
        group.sentinels.append(sentinel)
        sentinel.start()
    until(lambda: group.replicas_see(replica.port), "the Sentinels never saw the replica in sync")
    return group


def stop_group(group: SentinelGroup) -> None:
    for sentinel in group.sentinels:
        sentinel.stop()
    for server in group.servers.values():
        server.stop()


async def one_run(fault: str, staff: int, concurrency: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="sgw-sentinel-") as tmp:
        workdir = Path(tmp)
        group = start_group(workdir)
        gateway = GatewayProcess(
            {"SGW_REDIS_URL": group.url, "SGW_STATE_DIR": str(workdir / "state")}, workdir
        )
        try:
            version = load_population(group.url, workdir, staff)
            old = group.primary_port()
            assert old is not None
            new = next(p for p in group.servers if p != old)
            gateway.start(free_port(), free_port())
            target = f"127.0.0.1:{gateway.port}"
            requests = bills(staff_codes(staff), 6, "bench")
            reference = await truth(target, requests)
            load = Load(target, requests, concurrency=concurrency)
            running = asyncio.create_task(load.run())
            await asyncio.sleep(2.0)
            fault_at = time.monotonic()
            if fault == "kill-9":
                group.servers[old].kill()
            else:
                await asyncio.to_thread(group.failover)
            await asyncio.to_thread(until, lambda: group.primary_port() == new, "no failover")
            known_at = time.monotonic()

            def first_live() -> float | None:
                live = [
                    o.started
                    for o in load.outcomes
                    if o.started >= known_at and o.code == OK and not o.degraded
                ]
                return min(live) if live else None

            while first_live() is None:
                await asyncio.sleep(0.05)
            await asyncio.sleep(2.0)
            load.stop.set()
            outcomes = await running
        finally:
            gateway.stop()
            stop_group(group)
        live_at = first_live()
        assert live_at is not None
        window = [o for o in outcomes if fault_at <= o.started <= live_at]
        return {
            "calls": len(outcomes),
            "refused": sum(o.code != OK for o in outcomes),
            "degraded": sum(o.degraded for o in outcomes),
            "wrong": len(wrong_answers(outcomes, requests, reference, version)),
            "named_s": known_at - fault_at,
            "live_s": live_at - fault_at,
            "p99_ms": percentile([o.seconds * 1000 for o in window], 0.99),
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.sentinel_failover", description=__doc__.split("\n")[0]
    )
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--staff", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=8)
    args = p.parse_args(argv)
    print(
        "| fault | run | calls | refused | degraded | wrong | Sentinels name new primary (s) | first live answer (s) | p99 fault→live (ms) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for fault in ("sentinel-failover", "kill-9"):
        rows = []
        for run in range(1, args.runs + 1):
            row = asyncio.run(one_run(fault, args.staff, args.concurrency))
            rows.append(row)
            print(f"| {fault} | {run} | {row['calls']:.0f} | {row['refused']:.0f} | {row['degraded']:.0f} | "
                  f"{row['wrong']:.0f} | {row['named_s']:.2f} | {row['live_s']:.2f} | {row['p99_ms']:.1f} |", flush=True)  # fmt: skip
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(f"| {fault} | median | {med['calls']:.0f} | {med['refused']:.0f} | {med['degraded']:.0f} | "
              f"{med['wrong']:.0f} | {med['named_s']:.2f} | {med['live_s']:.2f} | {med['p99_ms']:.1f} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
