"""The audit trail: rejected, exempted and outage-paid lines land in the Redis Stream, off the
hot path, and ``settlement-gateway audit`` finds them by settlement, staff or time.

While Redis is away the queue holds the audited lines, not the requests they came from; a
frozen Redis (SIGSTOP) holds up neither a batch write nor the writer's shutdown for long."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import logging
import os
import signal
import subprocess
import sys
import types
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import grpc
import orjson
import pytest
import redis
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry

from gateway.audit import AuditLog
from gateway.audit.record import Chain
from gateway.config import Settings
from gateway.embedded import find_redis_server
from gateway.keys import Keys
from gateway.metrics import GatewayMetrics
from gateway.outage import OutagePolicy
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc
from gateway.policy import OUTAGE_ARTICLE, Reason, Verdict
from gateway.redis_client import AsyncRedis, async_client
from gateway.rules import ACCEPTED, Decision
from gateway.server import GatewayApp
from tests.conftest import Loader, RedisProcess, free_port
from tests.exports import DOCTOR, HOSPITAL, institution_row, line, load_into, request, staff_row
from tests.polling import until, until_lease_lapsed

BIN = Path(sys.executable).parent
SUSPENDED = "D330902000002"
FIELDS = {
    "time", "request_id", "settlement_id", "institution", "line_id", "staff_code", "department_code",
    "item_code", "service_day", "amount_fen", "med_type", "encounter", "emergency_basis", "caller",
    "verdict", "reason", "rule", "detail", "data_version", "degraded", "outage_policy", "periods",
    "instance", "seq", "prev", "hash", "stream_id",
}  # fmt: skip


async def run_audit(redis_url: str, *args: str) -> list[dict[str, object]]:
    """The command as an operator runs it (without blocking the gateway's event loop)."""
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "settlement-gateway"), "audit", "--json", "--redis-url", redis_url, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return [orjson.loads(text) for text in out.splitlines()]


async def test_rejections_and_exemptions_are_recorded_and_found(
    load: Loader, gateway: GatewayApp, stub: pb_grpc.SettlementGatewayStub, redis_url: str
) -> None:
    load("institution", [institution_row()])
    load("staff", [staff_row(), staff_row(SUSPENDED, status="中止", start="2026-01-01")])
    bill = request(
        line("1", DOCTOR),
        line("2", SUSPENDED),
        line("3", SUSPENDED, emergency=True),
        line("4", DOCTOR, item_code=""),
        request_id="rq-77",
    )
    bill.settlement_id = "MDTRT-2026-0001"
    reply = await stub.Validate(bill)
    other = request(line("1", SUSPENDED), request_id="rq-78")
    other.settlement_id = "MDTRT-2026-0002"
    await stub.Validate(other)
    assert gateway.audit is not None
    await until(lambda: gateway.audit.written == 4)  # type: ignore[union-attr]

    found = await run_audit(redis_url, "--settlement", "MDTRT-2026-0001")
    assert [(r["line_id"], r["verdict"], r["reason"]) for r in found] == [
        ("2", "REJECT", "STAFF_SUSPENDED"),
        ("3", "ACCEPT_EMERGENCY", "STAFF_SUSPENDED"),
        ("4", "REJECT", "ITEM_CODE_MISSING"),
    ]  # the plain ACCEPT of line 1 is not audited
    first = found[0]
    assert set(first) == FIELDS  # nothing else: no patient identifiers
    assert first["request_id"] == "rq-77" and first["institution"] == HOSPITAL
    assert first["staff_code"] == SUSPENDED and first["data_version"] == reply.data_version
    assert first["rule"] == reply.verdicts[1].rule and first["degraded"] is False
    assert first["detail"] == reply.verdicts[1].detail
    assert str(first["time"]).endswith("Z")
    assert (first["department_code"], first["item_code"], first["amount_fen"]) == ("A03", "XA01AAA001", 1000)
    assert first["service_day"] == "2026-04-01" and first["med_type"] == "11"
    assert first["emergency_basis"] == [] and found[1]["emergency_basis"] == ["line"]
    assert str(first["caller"]).startswith("ipv4:127.0.0.1:")  # no mTLS here: the peer address
    assert first["periods"] == {
        "institution": ["NORMAL 2020-01-01..长期"],
        "staff": ["SUSPENDED 2026-01-01..长期"],
    }  # what the rejection rested on
    # One chain per gateway instance, numbered from 1, each record naming its predecessor.
    assert [r["seq"] for r in found] == [1, 2, 3] and found[0]["prev"] == ""
    assert found[1]["prev"] == first["hash"] and found[2]["prev"] == found[1]["hash"]

    by_staff = await run_audit(redis_url, "--staff", SUSPENDED)
    assert [(r["settlement_id"], r["line_id"]) for r in by_staff] == [
        ("MDTRT-2026-0001", "2"), ("MDTRT-2026-0001", "3"), ("MDTRT-2026-0002", "1"),
    ]  # fmt: skip
    assert len(await run_audit(redis_url, "--since", "2000-01-01", "--until", "2099-12-31")) == 4
    assert await run_audit(redis_url, "--until", "2001-01-01") == []
    assert len(await run_audit(redis_url, "--staff", SUSPENDED, "--limit", "1")) == 1


def test_audit_needs_a_filter(redis_url: str) -> None:
    proc = subprocess.run(
        [str(BIN / "settlement-gateway"), "audit", "--redis-url", redis_url], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "give --settlement" in proc.stderr


def rejected(n: int) -> tuple[pb.ValidateRequest, list[Decision]]:
    req = request(*[line(str(i), "D330902000099") for i in range(n)])
    reject = Decision(Verdict.REJECT, Reason.STAFF_UNREGISTERED, "x", "rule")
    return req, [reject] * n


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server of this test's own, to kill, restart or freeze."""
    server = RedisProcess(find_redis_server(), free_port(), tmp_path)
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        os.kill(server.proc.pid, signal.SIGCONT)  # a frozen server cannot act on SIGTERM
    server.stop()


async def test_while_redis_is_down_records_wait_in_a_bounded_queue(store: RedisProcess) -> None:
    registry = CollectorRegistry()
    client = async_client(store.url, 0.2)
    log = AuditLog(client, Keys(), GatewayMetrics(registry), max_entries=1000, queue_lines=5)
    log.start()
    try:
        store.kill()
        req, decisions = rejected(3)
        log.record(req, decisions, "v1", True)
        log.record(req, decisions, "v1", True)  # 6 > 5: dropped whole, counted, never blocking
        log.record(req, [ACCEPTED] * 3, "v1", False)  # nothing to audit
        assert (log.pending_lines, log.dropped) == (3, 3)
        assert registry.get_sample_value("sgw_audit_records_total", {"result": "dropped"}) == 3
        await asyncio.sleep(0.5)  # a few failed writes
        store.start()
        await until(lambda: log.written == 3)
        sync = redis.Redis.from_url(store.url)
        assert sync.xlen(Keys().audit) == 3
        sync.close()
    finally:
        await log.stop()
        await client.aclose()


async def test_the_stream_is_capped(redis_url: str) -> None:
    client = async_client(redis_url, 1.0)
    log = AuditLog(client, Keys(), GatewayMetrics(CollectorRegistry()), max_entries=100, queue_lines=10_000)
    log.start()
    try:
        for _ in range(10):
            log.record(*rejected(100), "v1", False)
        await until(lambda: log.written == 1000)
        length = await client.xlen(Keys().audit)
        assert 100 <= length < 300  # approximate trimming: whole stream nodes at a time
    finally:
        await log.stop()
        await client.aclose()


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SGW_REDIS_URL", "SGW_NAMESPACE"):
        monkeypatch.delenv(var, raising=False)


# -- the queue holds what the records need, not the requests --------------------------------


def read_stream(url: str) -> list[tuple[str, dict[str, Any]]]:
    """The audit stream as stored: (stream id, decoded record), oldest first. Every entry has
    exactly one field, the encoded record."""
    sync = redis.Redis.from_url(url)
    try:
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], sync.xrange(Keys().audit))
    finally:
        sync.close()
    assert all(set(fields) == {b"r"} for _, fields in entries)
    return [(i.decode(), orjson.loads(fields[b"r"])) for i, fields in entries]


def reachable_from(root: object) -> list[object]:
    """Every object reachable from ``root`` through instances and containers (types, modules
    and functions are not followed: they lead to everything)."""
    seen: dict[int, object] = {}
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, type | types.ModuleType | types.FunctionType):
            continue
        seen[id(obj)] = obj
        stack.extend(gc.get_referents(obj))
    return list(seen.values())


def big_bill_with_two_rejections() -> tuple[pb.ValidateRequest, list[Decision]]:
    req = request(*[line(str(i), DOCTOR) for i in range(3000)], request_id="rq-big")
    req.settlement_id = "MDTRT-BIG"
    req.institution_code = f" {HOSPITAL} "
    req.lines[17].staff_code = f" {SUSPENDED} "
    decisions = [ACCEPTED] * len(req.lines)
    decisions[17] = Decision(Verdict.REJECT, Reason.STAFF_SUSPENDED, "suspended since …", "rule-s")
    decisions[2999] = Decision(Verdict.ACCEPT_EMERGENCY, Reason.STAFF_SUSPENDED, "exempt", "rule-e")
    return req, decisions


async def test_a_queued_answer_keeps_its_audited_lines_not_the_request(store: RedisProcess) -> None:
    client = async_client(store.url, 0.2)
    log = AuditLog(client, Keys(), GatewayMetrics(CollectorRegistry()), max_entries=1000, queue_lines=100)
    log.start()
    try:
        store.kill()
        req, decisions = big_bill_with_two_rejections()
        references = sys.getrefcount(req)
        log.record(req, decisions, "v7", True)
        assert sys.getrefcount(req) == references  # nothing queued refers to the request
        queued = reachable_from(log._queue)  # what the queue holds on to
        assert not [obj for obj in queued if isinstance(obj, Message)]  # nor to any of its lines
        assert log.pending_lines == 2
        req.Clear()  # the request is gone once answered; the records must not need it
        del req
        await asyncio.sleep(0.3)  # a failed write or two
        store.start()
        await until(lambda: log.written == 2, timeout=20)
        written = [doc for _, doc in read_stream(store.url)]
    finally:
        await log.stop()
        await client.aclose()
    assert [
        (r["request_id"], r["institution"], r["settlement_id"], r["line_id"], r["staff_code"], r["verdict"],
         r["reason"], r["rule"], r["data_version"], r["degraded"])
        for r in written
    ] == [
        ("rq-big", HOSPITAL, "MDTRT-BIG", "17", SUSPENDED, "REJECT", "STAFF_SUSPENDED", "rule-s", "v7", True),
        ("rq-big", HOSPITAL, "MDTRT-BIG", "2999", DOCTOR, "ACCEPT_EMERGENCY", "STAFF_SUSPENDED", "rule-e",
         "v7", True),
    ]  # fmt: skip
    assert written[0]["time"] == written[1]["time"] and written[0]["time"].endswith("Z")


# -- a frozen Redis: bounded writes, bounded shutdown ---------------------------------------


def freeze(server: RedisProcess) -> None:
    """SIGSTOP: the port still accepts connections and takes commands, but nothing answers."""
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)


def thaw(server: RedisProcess) -> None:
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGCONT)


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "gateway.audit" and r.getMessage() == text]


async def frozen_writer(store: RedisProcess, caplog: pytest.LogCaptureFixture) -> tuple[AuditLog, AsyncRedis]:
    """An audit log on a client whose per-call timeouts alone would hold a write for 30 s,
    with a pooled connection already open to a Redis that is then frozen."""
    caplog.set_level(logging.WARNING, logger="gateway.audit")
    client = async_client(store.url, 30.0)
    await client.ping()
    log = AuditLog(client, Keys(), GatewayMetrics(CollectorRegistry()), queue_lines=100, redis_timeout=0.1)
    log.start()
    freeze(store)
    return log, client


async def test_a_write_to_a_frozen_redis_gives_up_in_time_and_is_retried(
    store: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    log, client = await frozen_writer(store, caplog)
    try:
        log.record(*rejected(3), "v1", False)
        await until(lambda: messages(caplog, "audit write failed; will retry"), timeout=20)
        assert (log.written, log.pending_lines) == (0, 3)
        thaw(store)
        await until(lambda: log.written == 3, timeout=20)
        # Written at least once: the attempt that timed out may have reached Redis as well.
        stored_lines = {(f["line_id"], f["verdict"], f["reason"]) for _, f in read_stream(store.url)}
        assert stored_lines == {(str(i), "REJECT", "STAFF_UNREGISTERED") for i in range(3)}
    finally:
        thaw(store)
        await log.stop()
        await client.aclose()


async def test_stop_returns_with_a_frozen_redis_and_counts_what_was_not_written(
    store: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    log, client = await frozen_writer(store, caplog)
    try:
        log.record(*rejected(3), "v1", False)
        await asyncio.sleep(0.05)  # the writer is now waiting on the frozen Redis
        log.record(*rejected(2), "v1", False)
        unwritten = await log.stop(flush_seconds=0.3)
        assert unwritten == 5 and log.written == 0
        [report] = messages(caplog, "audit records not written at shutdown")
        assert report.lines == 5  # type: ignore[attr-defined]
        assert await log.stop() == 5  # stopping again: nothing left to wait for
    finally:
        thaw(store)
        await client.aclose()


# -- lines paid under the outage policy --------------------------------------------------------

BANNED = "D330902000003"
UNSEEN = "D330902000009"


@pytest.fixture
async def flagged_gateway(
    settings: Settings, persistent_redis: RedisProcess, tmp_path: Path
) -> AsyncIterator[tuple[GatewayApp, str]]:
    """A gateway under ``accept-flagged`` on a Redis of its own that comes back with its data."""
    load_into(persistent_redis.url, tmp_path, "institution", [institution_row()])
    version = load_into(
        persistent_redis.url,
        tmp_path,
        "staff",
        [staff_row(DOCTOR), staff_row(BANNED), staff_row(BANNED, status="解除", start="2026-01-01"),
         staff_row(UNSEEN)],
    )  # fmt: skip
    url = persistent_redis.url
    app = GatewayApp(replace(settings, redis_url=url, outage_policy=OutagePolicy.ACCEPT_FLAGGED), url)
    await app.start()
    yield app, version
    await app.stop(0.5)


async def test_lines_paid_under_the_outage_policy_are_audited_as_degraded(
    flagged_gateway: tuple[GatewayApp, str], persistent_redis: RedisProcess
) -> None:
    app, version = flagged_gateway
    assert app.audit is not None and app.store is not None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.SettlementGatewayStub(channel)
        await stub.Validate(request(line("1", DOCTOR), line("2", BANNED)))  # caches both, live
        await until(lambda: app.audit.written == 1)  # type: ignore[union-attr]
        persistent_redis.kill()
        await until_lease_lapsed(app)
        bill = request(
            line("1", UNSEEN), line("2", DOCTOR), line("3", BANNED), line("4", BANNED, emergency=True),
            request_id="rq-outage",
        )  # fmt: skip
        bill.settlement_id = "MDTRT-OUTAGE"
        reply = await stub.Validate(bill)
    assert reply.degraded and reply.data_version == version
    assert (reply.verdicts[0].verdict, reply.verdicts[0].rule) == (pb.ACCEPT, OUTAGE_ARTICLE)
    assert app.audit.pending_lines == 3  # waiting for Redis

    persistent_redis.start()
    await until(lambda: app.audit.written == 4, timeout=30)  # type: ignore[union-attr]
    found = await run_audit(persistent_redis.url, "--settlement", "MDTRT-OUTAGE")
    assert [(r["line_id"], r["staff_code"], r["verdict"], r["reason"], r["rule"]) for r in found] == [
        ("1", UNSEEN, "ACCEPT", "OK", OUTAGE_ARTICLE),
        ("3", BANNED, "REJECT", "STAFF_TERMINATED", reply.verdicts[2].rule),
        ("4", BANNED, "ACCEPT_EMERGENCY", "STAFF_TERMINATED", reply.verdicts[3].rule),
    ]  # the plain ACCEPT of line 2, judged on its cached record, is not audited
    assert all(r["degraded"] is True and r["data_version"] == version for r in found)
    assert all(r["request_id"] == "rq-outage" and r["institution"] == HOSPITAL for r in found)
    raw = [doc for _, doc in read_stream(persistent_redis.url)][-3:]
    assert [doc["degraded"] for doc in raw] == [True, True, True]  # as stored in the stream
    assert [doc["outage_policy"] for doc in raw] == ["accept-flagged"] * 3


# -- time ranges -----------------------------------------------------------------------------


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


TIME_CHAIN = Chain("test-instance")


def stored(answered: str, written: str, line_id: str) -> tuple[str, dict[str, bytes]]:
    """A record as the writer stores it: answered at one time, written (stream id) at another."""
    doc = {
        "time": answered, "request_id": "rq", "institution": HOSPITAL, "settlement_id": "MDTRT-T",
        "line_id": line_id, "staff_code": SUSPENDED, "verdict": "REJECT", "reason": "STAFF_SUSPENDED",
        "rule": "r", "data_version": "v", "degraded": False,
    }  # fmt: skip
    return f"{int(at(written).timestamp() * 1000)}-0", {"r": TIME_CHAIN.seal(doc)}


async def test_a_time_range_excludes_records_outside_it(redis_url: str) -> None:
    records = [
        stored("2026-10-01T02:00:00.000Z", "2026-10-01T02:00:00.100Z", "october"),
        # 23:00 CST on the 23rd, written after an outage 90 minutes later (the 24th in CST):
        # read because of its stream id, left out because of its own time.
        stored("2026-11-23T15:00:00.000Z", "2026-11-23T16:30:00.000Z", "late-from-23rd"),
        stored("2026-11-23T15:59:59.999Z", "2026-11-23T16:45:00.000Z", "last-ms-of-23rd"),
        stored("2026-11-23T16:00:00.000Z", "2026-11-23T16:50:00.000Z", "first-ms-of-24th"),
        stored("2026-11-24T03:00:00.000Z", "2026-11-24T03:00:00.050Z", "11h-24th"),
        stored("2026-11-24T15:30:00.000Z", "2026-11-24T16:20:00.000Z", "late-from-24th"),
        stored("2026-11-24T15:59:59.999Z", "2026-11-24T16:25:00.000Z", "last-ms-of-24th"),
        stored("2026-11-24T16:00:00.000Z", "2026-11-24T16:30:00.000Z", "first-ms-of-25th"),
        stored("2026-12-01T02:00:00.000Z", "2026-12-01T02:00:00.100Z", "december"),
    ]
    sync = redis.Redis.from_url(redis_url)
    for stream_id, fields in sorted(records, key=lambda r: int(r[0].split("-")[0])):
        sync.xadd(Keys().audit, fields, id=stream_id)  # type: ignore[arg-type]
    sync.close()

    def line_ids(found: list[dict[str, object]]) -> list[object]:
        return [r["line_id"] for r in found]

    day = await run_audit(redis_url, "--since", "2026-11-24", "--until", "2026-11-24")  # CST day
    assert line_ids(day) == ["first-ms-of-24th", "11h-24th", "late-from-24th", "last-ms-of-24th"]
    hours = await run_audit(redis_url, "--since", "2026-11-24T11:00", "--until", "2026-11-24T23:30+08:00")
    assert line_ids(hours) == ["11h-24th", "late-from-24th"]
    utc = await run_audit(redis_url, "--since", "2026-11-24T15:59:59.999Z", "--staff", SUSPENDED)
    assert line_ids(utc) == ["last-ms-of-24th", "first-ms-of-25th", "december"]
    assert await run_audit(redis_url, "--since", "2026-11-02", "--until", "2026-11-22") == []


# -- archived or not -----------------------------------------------------------------------


@pytest.mark.parametrize("dsn", [None, "host=db.example dbname=sgw_audit"])
async def test_the_gateway_says_at_start_whether_the_trail_is_archived(
    settings: Settings, dsn: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.server")
    app = GatewayApp(replace(settings, audit_dsn=dsn), settings.redis_url or "")
    await app.start()
    try:
        assert app.audit is not None and app.audit.archived is (dsn is not None)
        said = [
            r.getMessage() for r in caplog.records if r.getMessage().startswith("audit trail not archived")
        ]
        assert len(said) == (0 if dsn else 1)
    finally:
        await app.stop(0.5)
