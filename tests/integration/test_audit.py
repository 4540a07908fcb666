"""The audit trail: rejected, exempted and outage-paid lines land in a capped Redis Stream,
off the hot path, and ``settlement-gateway audit`` finds them by settlement, staff or time."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import redis
from prometheus_client import CollectorRegistry

from gateway.audit import AuditLog
from gateway.keys import Keys
from gateway.metrics import GatewayMetrics
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc
from gateway.policy import Reason, Verdict
from gateway.redis_client import async_client
from gateway.rules import ACCEPTED, Decision
from gateway.server import GatewayApp
from tests.conftest import Loader, RedisProcess
from tests.exports import DOCTOR, HOSPITAL, institution_row, line, request, staff_row

BIN = Path(sys.executable).parent
SUSPENDED = "D330902000002"
FIELDS = {
    "time", "request_id", "institution", "settlement_id", "line_id", "staff_code", "verdict",
    "reason", "rule", "data_version", "degraded", "stream_id",
}  # fmt: skip


async def run_audit(redis_url: str, *args: str) -> list[dict[str, object]]:
    """The command as an operator runs it (without blocking the gateway's event loop)."""
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "settlement-gateway"), "audit", "--redis-url", redis_url, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return [orjson.loads(text) for text in out.splitlines()]


async def until(predicate: object, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


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
    assert str(first["time"]).endswith("Z")

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


async def test_while_redis_is_down_records_wait_in_a_bounded_queue(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    from gateway.embedded import find_redis_server
    from tests.conftest import free_port

    store = RedisProcess(find_redis_server(), free_port(), tmp_path)
    store.start()
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
        store.stop()


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
