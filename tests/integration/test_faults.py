"""Fault tests with real processes: ``kill -9`` of Redis and SIGTERM of the gateway under
steady load, and a hostile client next to well-behaved ones.

They assert correctness only — no crashed or hung call, every answer right or flagged
degraded as the policy says, live again after recovery. The figures (p99 during each fault)
come from ``benchmarks/faults.py`` and are recorded in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path

import grpc
import pytest

from gateway.keys import VERSION_LEASE_SECONDS
from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc
from tests.conftest import RedisProcess, free_port
from tests.exports import line, request
from tests.faultload import (
    GatewayProcess,
    Load,
    bills,
    load_population,
    raw_load,
    staff_codes,
    truth,
    wrong_answers,
)

STAFF = 300
TOTAL = 20_000  # requests the slow-reader test tries to write
OK, UNAVAILABLE = grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE


def start_gateway(tmp_path: Path, redis_url: str, *args: str, **env: str) -> GatewayProcess:
    gateway = GatewayProcess(
        {"SGW_REDIS_URL": redis_url, "SGW_STATE_DIR": str(tmp_path / "state"), **env}, tmp_path, args
    )
    gateway.start(free_port(), free_port())
    return gateway


async def poll(predicate: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("policy", ["refuse", "accept-flagged"])
async def test_kill_9_redis_under_load(policy: str, persistent_redis: RedisProcess, tmp_path: Path) -> None:
    version = load_population(persistent_redis.url, tmp_path, STAFF)
    codes = staff_codes(STAFF)
    warm, cold = codes[: STAFF * 4 // 5], codes[STAFF * 4 // 5 :]
    warm_bills, cold_bills = bills(warm, 6, "warm"), bills(cold, 6, "cold")
    gateway = start_gateway(tmp_path, persistent_redis.url, SGW_OUTAGE_POLICY=policy)
    target = f"127.0.0.1:{gateway.port}"
    try:
        await truth(target, warm_bills)  # every warm bill answered live once: its records are cached
        steady = Load(target, warm_bills, concurrency=6)
        probing = Load(target, cold_bills, concurrency=2)  # codes the cache has never seen
        steady_task = asyncio.create_task(steady.run())
        await asyncio.sleep(1.0)

        killed_at = time.monotonic()
        persistent_redis.kill()
        probing_task = asyncio.create_task(probing.run())
        await asyncio.sleep(2.0)
        restarted_at = time.monotonic()
        persistent_redis.start()
        await poll(
            lambda: any(o.started > restarted_at and o.code == OK and not o.degraded for o in steady.outcomes)
        )
        live_at = time.monotonic()
        await asyncio.sleep(1.0)
        steady.stop.set()
        probing.stop.set()
        await asyncio.gather(steady_task, probing_task)

        reference = await truth(target, [*warm_bills, *cold_bills])
        assert gateway.proc is not None and gateway.proc.poll() is None  # no crash
    finally:
        gateway.stop()
    assert gateway.wait() == 0, gateway.tail()

    outcomes = [*steady.outcomes, *probing.outcomes]
    # Re-index the probing outcomes into the combined reference.
    from dataclasses import replace

    cold_offset = len(warm_bills)
    probing_outcomes = [replace(o, request_index=o.request_index + cold_offset) for o in probing.outcomes]
    everything = [*steady.outcomes, *probing_outcomes]
    requests = [*warm_bills, *cold_bills]

    codes_seen = {o.code for o in outcomes}
    assert codes_seen <= {OK, UNAVAILABLE}, {
        o.code: o.details for o in outcomes if o.code not in (OK, UNAVAILABLE)
    }
    # The cache answered every warm bill through the outage: none refused, none wrong.
    assert all(o.code == OK for o in steady.outcomes)
    flagged_cold = frozenset(cold) if policy == "accept-flagged" else frozenset()
    assert wrong_answers(everything, requests, reference, version, flagged_cold) == []
    # Answers whose version lease was still running are live ones (no publish can move the
    # version meanwhile); every call sent after the lease ran out is answered degraded.
    lease_out = killed_at + VERSION_LEASE_SECONDS
    during = [o for o in steady.outcomes if lease_out < o.started < restarted_at - 0.1]
    assert during and all(o.degraded for o in during)
    cold_during = [o for o in probing_outcomes if killed_at + 0.1 < o.started < restarted_at - 0.1]
    assert cold_during
    if policy == "refuse":
        assert all(o.code == UNAVAILABLE and "outage policy: refuse" in o.details for o in cold_during)
    else:
        assert all(o.code == OK and o.degraded for o in cold_during)
    # Live again after the restart, without restarting the gateway.
    after = [o for o in everything if o.started > live_at + 0.3]
    assert after and all(o.code == OK and not o.degraded for o in after)


async def test_sigterm_under_load_finishes_in_flight_calls(redis_url: str, tmp_path: Path) -> None:
    load_population(redis_url, tmp_path, STAFF)
    work = bills(staff_codes(STAFF), 50, "term")
    gateway = start_gateway(tmp_path, redis_url, "--shutdown-grace", "5")
    target = f"127.0.0.1:{gateway.port}"
    reference = await truth(target, work)
    async with grpc.aio.insecure_channel(target) as channel:
        stream = pb_grpc.SettlementGatewayStub(channel).ValidateStream()
        await stream.write(work[0])
        assert (await stream.read()).request_id == work[0].request_id  # the stream is in flight

        load = Load(target, work, concurrency=6, failover=True)
        load_task = asyncio.create_task(load.run())
        await asyncio.sleep(1.0)
        term_at = time.monotonic()
        gateway.signal(signal.SIGTERM)
        await asyncio.sleep(1.0)
        # The call that was in flight at SIGTERM is still served during the grace period.
        await stream.write(work[1])
        reply = await stream.read()
        assert reply.request_id == work[1].request_id and len(reply.verdicts) == 50
        await stream.done_writing()
        assert await stream.code() == OK
        await load_task  # every worker was refused and failed over
    assert gateway.wait(timeout=30) == 0, gateway.tail()

    codes_seen = {o.code for o in load.outcomes}
    assert codes_seen <= {OK, UNAVAILABLE}, [
        (o.code, o.details, round(o.started - term_at, 3), round(o.seconds, 3))
        for o in load.outcomes
        if o.code not in (OK, UNAVAILABLE)
    ]
    assert wrong_answers(load.outcomes, work, reference, "") == []
    assert any(o.code == OK and o.started < term_at for o in load.outcomes)
    # Every call sent before the signal was answered (none CANCELLED); new calls after the
    # lame-duck moment were refused with UNAVAILABLE, and each client failed over.
    assert all(o.code == OK for o in load.outcomes if o.started < term_at)
    refused = [o for o in load.outcomes if o.code == UNAVAILABLE]
    assert len(refused) == 6  # one per client, then it failed over


async def test_a_hostile_client_does_not_break_the_others(redis_url: str, tmp_path: Path) -> None:
    load_population(redis_url, tmp_path, STAFF)
    work = bills(staff_codes(STAFF), 5, "calm")
    gateway = start_gateway(tmp_path, redis_url)
    target = f"127.0.0.1:{gateway.port}"
    try:
        reference = await truth(target, work)
        huge = request(*[line(str(i), "D330902000001") for i in range(100_000)]).SerializeToString()
        malformed = [b"\xff" * 64, huge[:5000] + b"\xc3\x28", b"\x2a\xff\xff\xff\x7f"]
        calm = Load(target, work, concurrency=4)
        stop = asyncio.Event()
        calm_task = asyncio.create_task(calm.run())
        hostile_task = asyncio.create_task(raw_load(target, [huge, *malformed], 2, stop))
        await asyncio.sleep(3.0)
        calm.stop.set()
        stop.set()
        await calm_task
        hostile = await hostile_task
        assert gateway.proc is not None and gateway.proc.poll() is None
    finally:
        gateway.stop()
    assert calm.outcomes and all(o.code == OK for o in calm.outcomes)
    assert wrong_answers(calm.outcomes, work, reference, "") == []
    assert hostile and {o.code for o in hostile} <= {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }, {o.code: o.details for o in hostile}


async def test_a_stream_reader_that_stops_reading_does_not_make_the_server_buffer(
    redis_url: str, tmp_path: Path
) -> None:
    load_population(redis_url, tmp_path, STAFF)
    work = bills(staff_codes(STAFF), 50, "slow")
    gateway = start_gateway(tmp_path, redis_url)
    target = f"127.0.0.1:{gateway.port}"
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            stream = pb_grpc.SettlementGatewayStub(channel).ValidateStream()
            written = 0

            async def writer() -> None:
                nonlocal written
                for i in range(TOTAL):
                    await stream.write(work[i % len(work)])
                    written += 1

            writing = asyncio.create_task(writer())
            # Wait until the writes stall: the server stopped reading once its replies went
            # unread (HTTP/2 flow control), so nothing piles up without bound on either side.
            stalled_at, steady_since = -1, time.monotonic()
            while time.monotonic() - steady_since < 1.5:
                await asyncio.sleep(0.25)
                if written != stalled_at:
                    stalled_at, steady_since = written, time.monotonic()
                assert not writing.done(), "every request was taken without a reply being read"
            assert written == stalled_at < TOTAL, written
            # Another client is served meanwhile.
            other = await pb_grpc.SettlementGatewayStub(channel).Validate(request(line()), timeout=5)
            assert other.verdicts
            # Reading resumes the stream where it stalled, in order.
            for i in range(50):
                reply = await stream.read()
                assert reply.request_id == work[i % len(work)].request_id
            stream.cancel()
            writing.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await writing
            after = await pb_grpc.SettlementGatewayStub(channel).Validate(request(line()), timeout=5)
            assert after.verdicts
    finally:
        gateway.stop()
