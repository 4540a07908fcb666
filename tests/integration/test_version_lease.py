"""Version leases: cached records answer without a round trip, and never after a publish.

A real redis-server counts the read scripts the gateway runs (``INFO commandstats``), so the
tests see whether a request went to Redis; the loader publishes for real, in a thread, while
the gateway in this process answers over a real gRPC channel.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
import redis

from gateway.keys import SWITCH_WAIT_SECONDS, VERSION_LEASE_RENEW_SECONDS, VERSION_LEASE_SECONDS, Keys
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc
from gateway.server import GatewayApp
from gateway.versions import Source
from loader.publish import PublishConflict, Publisher
from tests.conftest import Loader
from tests.exports import DOCTOR, institution_row, line, request, staff_row

NURSE = "N330902000008"
SOURCE = Source(kind="staff", path="x.csv", sha256="0" * 64, mode="full", rows=1, rejected=0, loaded_at=0.0)


def read_scripts_run(client: redis.Redis) -> int:
    """How many read scripts Redis has run, for any client."""
    stats = client.info("commandstats")
    return sum(int(stats.get(name, {}).get("calls", 0)) for name in ("cmdstat_evalsha_ro", "cmdstat_evalsha"))


@pytest.fixture
def loaded(load: Loader) -> None:
    assert load("institution", [institution_row()]).outcome == 0
    assert load("staff", [staff_row(), staff_row(code=NURSE, category="护士")]).outcome == 0


async def test_cached_records_under_a_lease_answer_without_a_round_trip(
    loaded: None, gateway: GatewayApp, stub: pb_grpc.SettlementGatewayStub, sync_redis: redis.Redis
) -> None:
    store = gateway.store
    assert store is not None
    # No publish happens here: a long lease keeps a slow machine from turning this into a
    # timing test.
    store.lease_seconds = 60.0
    first = await stub.Validate(request(line("1", DOCTOR)))
    assert await store.renew_lease() is not None

    before = read_scripts_run(sync_redis)
    replies = [await stub.Validate(request(line("1", DOCTOR), line("2", DOCTOR))) for _ in range(10)]
    assert read_scripts_run(sync_redis) == before
    for reply in replies:
        assert [v.verdict for v in reply.verdicts] == [pb.ACCEPT, pb.ACCEPT]
        assert reply.data_version == first.data_version and not reply.degraded
        assert reply.data_as_of == first.data_as_of

    # A code the cache has not seen still goes to Redis, once.
    await stub.Validate(request(line("1", NURSE)))
    assert read_scripts_run(sync_redis) == before + 1
    await stub.Validate(request(line("1", NURSE), line("2", DOCTOR)))
    assert read_scripts_run(sync_redis) == before + 1


async def test_every_answer_after_sync_returns_is_from_the_new_version(
    loaded: None, gateway: GatewayApp, stub: pb_grpc.SettlementGatewayStub, load: Loader
) -> None:
    """The loader moves ``live`` only after every lease on the old version ran out, so the
    first request after ``sync`` returns is judged on the new data, even though the gateway
    answered the same request from its cache a moment before."""
    store = gateway.store
    assert store is not None
    old = await stub.Validate(request(line("1", DOCTOR)))
    assert old.verdicts[0].verdict == pb.ACCEPT
    assert await store.renew_lease() is not None

    answers: list[tuple[str, int]] = []
    published = threading.Event()

    def publish() -> None:
        result = load("staff", [staff_row(status="中止", start="2024-01-01"), staff_row(code=NURSE)])
        assert result.outcome == 0, result.message
        published.set()

    loader = asyncio.create_task(asyncio.to_thread(publish))
    while not published.is_set():
        reply = await stub.Validate(request(line("1", DOCTOR)))
        answers.append((reply.data_version, reply.verdicts[0].verdict))
    await loader

    # Each answer during the publish is one version's truth, never a mix.
    for version, verdict in answers:
        assert verdict == (pb.ACCEPT if version == old.data_version else pb.REJECT)
    after = [await stub.Validate(request(line("1", DOCTOR))) for _ in range(5)]
    for reply in after:
        assert reply.data_version != old.data_version
        assert reply.verdicts[0].verdict == pb.REJECT
        assert reply.verdicts[0].reason == pb.STAFF_SUSPENDED


async def test_a_killed_loaders_switching_mark_sends_reads_to_redis_until_the_next_run(
    loaded: None,
    gateway: GatewayApp,
    stub: pb_grpc.SettlementGatewayStub,
    sync_redis: redis.Redis,
    keys: Keys,
    load: Loader,
) -> None:
    store = gateway.store
    assert store is not None
    await stub.Validate(request(line("1", DOCTOR)))
    # What a loader killed between its mark and its commit leaves behind.
    sync_redis.set(keys.switching, "20260101T000000Z-dead00", ex=30)
    assert await store.renew_lease() is None

    before = read_scripts_run(sync_redis)
    for _ in range(3):
        reply = await stub.Validate(request(line("1", DOCTOR)))
        assert reply.verdicts[0].verdict == pb.ACCEPT and not reply.degraded
    assert read_scripts_run(sync_redis) == before + 3

    assert load("staff", [staff_row(), staff_row(code=NURSE), staff_row(code="D330902009999")]).outcome == 0
    assert sync_redis.exists(keys.switching) == 0
    assert await store.renew_lease() is not None


def test_the_commit_waits_with_the_mark_up_and_puts_it_up_again_if_it_expired(
    sync_redis: redis.Redis, keys: Keys
) -> None:
    waits: list[tuple[float, bytes | None]] = []

    def sleep_losing_the_first_mark(seconds: float) -> None:
        waits.append((seconds, sync_redis.get(keys.switching)))
        if len(waits) == 1:
            sync_redis.delete(keys.switching)  # as if this process stalled past the mark's TTL

    publisher = Publisher(sync_redis, keys, sleep=sleep_losing_the_first_mark)
    meta = publisher.publish_full("staff", [(DOCTOR, b"[]")], SOURCE, None)
    assert [seconds for seconds, _ in waits] == [SWITCH_WAIT_SECONDS, SWITCH_WAIT_SECONDS]
    assert all(mark == meta.version.encode() for _, mark in waits)
    assert sync_redis.get(keys.live) == meta.version.encode()
    assert sync_redis.exists(keys.switching) == 0


def test_a_commit_whose_mark_keeps_vanishing_publishes_nothing(sync_redis: redis.Redis, keys: Keys) -> None:
    publisher = Publisher(sync_redis, keys, sleep=lambda _: sync_redis.delete(keys.switching) and None)
    with pytest.raises(PublishConflict, match="SWITCH mark gone"):
        publisher.publish_full("staff", [(DOCTOR, b"[]")], SOURCE, None)
    assert sync_redis.get(keys.live) is None
    assert sync_redis.exists(keys.switching) == 0


def test_the_wait_outlasts_a_lease_and_a_lease_outlasts_two_renewals() -> None:
    assert SWITCH_WAIT_SECONDS > VERSION_LEASE_SECONDS > 2 * VERSION_LEASE_RENEW_SECONDS
