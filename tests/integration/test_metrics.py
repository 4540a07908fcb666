"""The real /metrics endpoint of a real gateway, after real gRPC calls on real Redis data."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.config import Settings
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc
from gateway.server import GatewayApp
from tests.conftest import Loader, RedisProcess, free_port
from tests.exports import (
    DOCTOR,
    HOSPITAL,
    OTHER_HOSPITAL,
    institution_row,
    line,
    load_into,
    request,
    staff_row,
)
from tests.polling import until_lease_lapsed
from tests.scrape import Scrape, scrape

SERVICE = "settlement.v1.SettlementGateway"
SUSPENDED = "D330902000002"
NURSE = "N330902000008"


@pytest.fixture
def loaded(load: Loader) -> None:
    assert load("institution", [institution_row(), institution_row(OTHER_HOSPITAL)]).outcome == 0
    rows = [
        staff_row(),
        staff_row(code=NURSE, category="护士"),
        staff_row(code=SUSPENDED, status="中止", start="2026-01-01", end="2026-12-31"),
    ]
    assert load("staff", rows).outcome == 0


def handled(s: Scrape, method: str, code: str, kind: str = "unary") -> float:
    return s.total(
        "grpc_server_handled_total", grpc_service=SERVICE, grpc_method=method, grpc_type=kind, grpc_code=code
    )


async def test_every_call_is_counted_with_its_real_status_code(gateway: GatewayApp, load: Loader) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.SettlementGatewayStub(channel)
        before = scrape(gateway.metrics_port)
        # Every method's series exist at zero before the first call.
        assert handled(before, "Validate", "OK") == 0
        assert handled(before, "ValidateStream", "InvalidArgument", "bidi_stream") == 0

        with pytest.raises(grpc.aio.AioRpcError) as err:  # nothing loaded yet
            await stub.Validate(request(line()))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE

        assert load("institution", [institution_row()]).outcome == 0
        assert load("staff", [staff_row()]).outcome == 0
        for _ in range(3):
            await stub.Validate(request(line()))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Validate(request(line(), institution_code=""))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # A stream that answers twice, then is aborted by a request without lines.
        call = stub.ValidateStream(iter([request(line()), request(line()), request()]))
        replies = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for reply in call:
                replies.append(reply)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and len(replies) == 2
        status = await stub.GetStatus(pb.GetStatusRequest())
        assert status.data_version
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())

    s = scrape(gateway.metrics_port)
    assert handled(s, "Validate", "OK") == 3
    assert handled(s, "Validate", "InvalidArgument") == 1
    assert handled(s, "Validate", "Unavailable") == 1
    assert handled(s, "Validate", "Unknown") == 0
    assert (
        s.value("grpc_server_started_total", grpc_type="unary", grpc_service=SERVICE, grpc_method="Validate")
        == 5
    )
    assert handled(s, "ValidateStream", "InvalidArgument", "bidi_stream") == 1
    stream = {"grpc_type": "bidi_stream", "grpc_service": SERVICE, "grpc_method": "ValidateStream"}
    assert s.value("grpc_server_msg_received_total", **stream) == 3
    assert s.value("grpc_server_msg_sent_total", **stream) == 2
    assert handled(s, "GetStatus", "OK") == 1
    assert s.total("grpc_server_handled_total", grpc_service="grpc.health.v1.Health", grpc_code="OK") == 1

    validate = {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": "Validate"}
    assert s.value("grpc_server_handling_seconds_count", **validate) == 5
    buckets = sorted(
        (float(labels["le"]), s.value("grpc_server_handling_seconds_bucket", **labels) or 0.0)
        for labels in s.series("grpc_server_handling_seconds_bucket")
        if labels["grpc_method"] == "Validate"
    )
    assert buckets[0][0] == 0.0001 and buckets[-1] == (float("inf"), 5)
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(buckets))
    assert 0 < (s.value("grpc_server_handling_seconds_sum", **validate) or 0) < 5


@pytest.fixture
async def one_call_gateway(settings: Settings) -> AsyncIterator[GatewayApp]:
    """A gateway that runs at most one call at once (SGW_MAX_CONCURRENT_RPCS=1)."""
    app = GatewayApp(dataclasses.replace(settings, max_concurrent_rpcs=1), settings.redis_url or "")
    await app.start()
    yield app
    await app.stop(0.5)


async def held_stream(stub: pb_grpc.SettlementGatewayStub) -> Any:
    """A ValidateStream call that has answered one request and stays open: in flight."""
    call = stub.ValidateStream()
    await call.write(request(line()))
    assert (await call.read()).data_version
    return call


async def refused_code(call: Any) -> grpc.StatusCode:
    """The status a call that must fail ends with; its details must name the limit."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert "SGW_MAX_CONCURRENT_RPCS" in (err.value.details() or "")
    return err.value.code()


async def test_calls_beyond_the_concurrency_limit_are_refused_and_counted(
    loaded: None, one_call_gateway: GatewayApp
) -> None:
    app = one_call_gateway
    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.SettlementGatewayStub(channel)
        held = await held_stream(stub)
        # Two more calls while one is in flight: a unary call and a stream, both refused.
        stream = stub.ValidateStream(iter([request(line())]))
        codes = await asyncio.gather(
            refused_code(stub.Validate(request(line()))), refused_code(stream.read())
        )
        assert codes == [exhausted, exhausted]
        await held.done_writing()
        assert await held.code() == grpc.StatusCode.OK
        await stub.Validate(request(line()))  # the finished stream gave its place back

        cancelled = await held_stream(stub)
        cancelled.cancel()
        await scrape_when(app, lambda s: stream_calls_handled(s) == 3)
        await stub.Validate(request(line()))  # so did the cancelled one

        # Each call gave its place back exactly once: the limit still holds.
        held = await held_stream(stub)
        assert await refused_code(stub.Validate(request(line()))) == exhausted
        await held.done_writing()
        assert await held.code() == grpc.StatusCode.OK

    s = await scrape_when(app, lambda s: handled(s, "Validate", "ResourceExhausted") == 2)
    validate = {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": "Validate"}
    assert s.value("grpc_server_started_total", **validate) == 4
    assert handled(s, "Validate", "OK") == 2
    assert s.value("grpc_server_handling_seconds_count", **validate) == 4
    stream_labels = {"grpc_type": "bidi_stream", "grpc_service": SERVICE, "grpc_method": "ValidateStream"}
    assert s.value("grpc_server_started_total", **stream_labels) == 4
    assert handled(s, "ValidateStream", "ResourceExhausted", "bidi_stream") == 1
    assert stream_calls_handled(s) == 4  # whatever code gRPC reports the cancelled one with


def stream_calls_handled(s: Scrape) -> float:
    return s.total("grpc_server_handled_total", grpc_service=SERVICE, grpc_method="ValidateStream")


async def test_lines_amounts_and_per_institution_counts(
    loaded: None, gateway: GatewayApp, stub: pb_grpc.SettlementGatewayStub
) -> None:
    await stub.Validate(
        request(
            line("1", DOCTOR, amount_fen=1200),
            line("2", DOCTOR, amount_fen=-200),  # a refund line
            line("3", SUSPENDED, amount_fen=500),
            line("4", SUSPENDED, amount_fen=700, emergency=True),
            line("5", "", amount_fen=30),
            line("6", "X123", amount_fen=40),
            line("7", "", item_code="", amount_fen=50),  # uncoded item and no staff code
            line("8", "bad", item_code="", amount_fen=60),
            line("9", NURSE, item_code="", amount_fen=70),
        )
    )
    await stub.Validate(request(line("1", SUSPENDED, amount_fen=900), med_type="13"))

    s = scrape(gateway.metrics_port)
    lines = {
        (labels["verdict"], labels["reason"]): s.value("sgw_lines_total", **labels)
        for labels in s.series("sgw_lines_total")
    }
    assert {k: v for k, v in lines.items() if v} == {
        ("ACCEPT", "OK"): 2,
        ("REJECT", "STAFF_SUSPENDED"): 1,
        ("ACCEPT_EMERGENCY", "STAFF_SUSPENDED"): 2,
        ("REJECT", "STAFF_CODE_MISSING"): 1,
        ("REJECT", "STAFF_CODE_MALFORMED"): 1,
        ("REJECT", "ITEM_CODE_MISSING"): 3,
    }
    assert len(lines) == 4 * 16  # every verdict x reason pair exists, at zero if unused

    def amount(verdict: str, direction: str) -> float | None:
        return s.value("sgw_amount_fen_total", verdict=verdict, direction=direction)

    assert amount("ACCEPT", "charge") == 1200
    assert amount("ACCEPT", "refund") == 200
    assert amount("REJECT", "charge") == 500 + 30 + 40 + 50 + 60 + 70
    assert amount("ACCEPT_EMERGENCY", "charge") == 700 + 900
    assert amount("REJECT", "refund") == 0

    def inst(verdict: str) -> float | None:
        return s.value("sgw_institution_lines_total", institution=HOSPITAL, verdict=verdict)

    assert (inst("ACCEPT"), inst("REJECT"), inst("ACCEPT_EMERGENCY")) == (2, 6, 2)
    invalid = "sgw_institution_staff_code_invalid_lines_total"
    # Lines 5 and 7 have no code, 6 and 8 a malformed one, whatever else was wrong with them.
    assert s.value(invalid, institution=HOSPITAL, reason="STAFF_CODE_MISSING") == 2
    assert s.value(invalid, institution=HOSPITAL, reason="STAFF_CODE_MALFORMED") == 2
    assert s.value("sgw_degraded_answers_total") == 0


async def test_redis_calls_are_timed(
    loaded: None, gateway: GatewayApp, stub: pb_grpc.SettlementGatewayStub
) -> None:
    before = scrape(gateway.metrics_port).value("sgw_redis_call_seconds_count", call="read") or 0
    # Codes the record cache has not seen: each request goes to Redis (a cached one need not).
    for n in range(4):
        await stub.Validate(request(line("1", f"D33090200{n:04d}")))
    s = scrape(gateway.metrics_port)
    assert s.value("sgw_redis_call_seconds_count", call="read") == before + 4
    assert (s.value("sgw_redis_call_seconds_count", call="live") or 0) >= 1
    assert (s.value("sgw_redis_call_seconds_count", call="lease") or 0) >= 1
    assert s.value("sgw_redis_call_seconds_count", call="meta") == 1
    assert s.total("sgw_redis_errors_total") == 0
    assert {labels["error"] for labels in s.series("sgw_redis_errors_total")} == {
        "timeout", "connection", "response", "other", "breaker_open",
    }  # fmt: skip


async def test_redis_errors_are_counted_by_kind(
    redis_server: RedisProcess, settings: Settings, tmp_path: Path
) -> None:
    own = RedisProcess(redis_server.binary, free_port(), tmp_path)
    own.start()
    app = GatewayApp(dataclasses.replace(settings, redis_url=own.url), own.url)
    try:
        await app.start()
        own.kill()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.SettlementGatewayStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Validate(request(line()))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        # An aborted call's status reaches the client before the handler has unwound.
        s = await scrape_when(
            app, lambda s: s.total("grpc_server_handled_total", grpc_code="Unavailable") > 0
        )
        assert s.total("grpc_server_handled_total", grpc_method="Validate", grpc_code="Unavailable") == 1
        # No data was ever loaded: the request path asks for the live pointer, and the lease
        # renewal for it and the switching mark; both fail (the breaker soon refuses the rest).
        assert s.total("sgw_redis_errors_total", call="live") >= 1
        s = await scrape_when(
            app, lambda s: s.value("sgw_redis_errors_total", call="lease", error="connection") > 0
        )
    finally:
        await app.stop(0.5)
        own.stop()


def redis_totals(s: Scrape) -> tuple[float, float, float]:
    """(calls timed, errors of calls that reached Redis, calls the breaker refused)."""
    errors = s.total("sgw_redis_errors_total")
    refused = s.total("sgw_redis_errors_total", error="breaker_open")
    return s.total("sgw_redis_call_seconds_count"), errors - refused, refused


async def test_calls_the_breaker_refused_are_not_counted_as_redis_calls(
    redis_server: RedisProcess, settings: Settings, tmp_path: Path
) -> None:
    own = RedisProcess(redis_server.binary, free_port(), tmp_path)
    own.start()
    app = GatewayApp(dataclasses.replace(settings, redis_url=own.url, breaker_reset_seconds=30.0), own.url)
    try:
        await app.start()
        own.kill()
        # From the first failure on, no call can succeed: a success in flight at the kill (the
        # version lease is renewed every 80 ms) must not enter the comparison below.
        await scrape_when(app, lambda s: redis_totals(s)[1] > 0)
        timed_before, failed_before, refused_before = redis_totals(scrape(app.metrics_port))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.SettlementGatewayStub(channel)
            for _ in range(6):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Validate(request(line()))
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert app.store is not None and app.store.breaker.is_open
        timed, failed, refused = redis_totals(scrape(app.metrics_port))
        assert refused - refused_before >= 3  # the breaker opened after at most 3 failures
        assert failed >= 1  # calls that reached the dead Redis and failed
        # Every call timed since Redis died is one that reached it (and failed): none of
        # the refused ones.
        assert timed - timed_before == failed - failed_before
    finally:
        await app.stop(0.5)
        own.stop()


async def scrape_when(app: GatewayApp, ready: Callable[[Scrape], bool]) -> Scrape:
    deadline = time.monotonic() + 10
    while not ready(found := scrape(app.metrics_port)):
        assert time.monotonic() < deadline, "the expected samples never appeared"
        await asyncio.sleep(0.05)
    return found


@pytest.fixture
async def bounded_gateway(settings: Settings) -> AsyncIterator[GatewayApp]:
    app = GatewayApp(
        dataclasses.replace(
            settings, metrics_institution_limit=1, metrics_code_window=50, metrics_top_codes=2
        ),
        settings.redis_url or "",
    )
    await app.start()
    yield app
    await app.stop(0.5)


async def test_institution_labels_are_bounded(loaded: None, bounded_gateway: GatewayApp) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{bounded_gateway.port}") as channel:
        stub = pb_grpc.SettlementGatewayStub(channel)
        await stub.Validate(request(line(), institution_code=HOSPITAL))
        await stub.Validate(request(line(), institution_code=OTHER_HOSPITAL))
        await stub.Validate(request(line(), institution_code="junk-from-a-client"))
        await stub.Validate(request(line(), institution_code=HOSPITAL))
    s = scrape(bounded_gateway.metrics_port)
    seen = {labels["institution"] for labels in s.series("sgw_institution_lines_total")}
    assert seen == {HOSPITAL, "other"}
    assert s.value("sgw_institution_lines_total", institution=HOSPITAL, verdict="ACCEPT") == 2
    assert s.total("sgw_institution_lines_total", institution="other") == 2


def test_an_allowlist_names_the_institutions_with_their_own_series() -> None:
    settings = Settings.from_env({"SGW_METRICS_INSTITUTIONS": f"{OTHER_HOSPITAL}, H00000000001"})
    labels = GatewayApp(settings, "redis://unused").metrics.institution_label
    assert labels(OTHER_HOSPITAL) == OTHER_HOSPITAL
    assert labels(HOSPITAL) == "other"  # well-formed but not listed


async def test_busiest_staff_code_share_over_a_bounded_window(
    loaded: None, bounded_gateway: GatewayApp
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{bounded_gateway.port}") as channel:
        stub = pb_grpc.SettlementGatewayStub(channel)
        # 40 lines by NURSE, then a window's worth (50) in which DOCTOR carries 30 and NURSE 10.
        await stub.Validate(request(*[line(str(i), NURSE) for i in range(40)]))
        await stub.Validate(request(*[line(str(i), NURSE) for i in range(10)]))
        for _ in range(3):
            await stub.Validate(request(*[line(str(i), DOCTOR) for i in range(10)]))
        await stub.Validate(request(*[line(str(i), "") for i in range(10)]))
    await wait_for_state_refresh(bounded_gateway)
    s = scrape(bounded_gateway.metrics_port)
    assert s.value("sgw_staff_code_window_lines", institution=HOSPITAL) == 50
    assert s.value("sgw_staff_code_window_codes", institution=HOSPITAL) == 2
    assert s.value("sgw_staff_code_top_share", institution=HOSPITAL) == pytest.approx(0.6)
    assert s.value("sgw_staff_code_share", institution=HOSPITAL, staff_code=DOCTOR) == pytest.approx(0.6)
    assert s.value("sgw_staff_code_share", institution=HOSPITAL, staff_code=NURSE) == pytest.approx(0.2)


async def wait_for_state_refresh(app: GatewayApp) -> None:
    """The state gauges follow the status refresh (every 0.5 s): wait for the next one."""
    state = app.state
    deadline = time.monotonic() + 10
    while app.state is state and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert app.state is not state


async def test_data_version_age_and_loader_provenance(
    loaded: None, load: Loader, gateway: GatewayApp
) -> None:
    await wait_for_state_refresh(gateway)
    s = scrape(gateway.metrics_port)
    assert gateway.store is not None and gateway.store.meta is not None
    meta = gateway.store.meta
    assert s.value("sgw_data_loaded") == 1
    assert s.value("sgw_data_as_of_timestamp_seconds") == meta.as_of
    assert s.series("sgw_data_version_info") == [{"version": meta.version}]
    age = s.value("sgw_data_age_seconds")
    assert age is not None and 0 <= age <= time.time() - meta.as_of
    assert s.value("sgw_data_records", kind="staff") == 3
    assert s.value("sgw_loader_rows", kind="staff") == 3
    assert s.value("sgw_loader_rejected_rows", kind="staff") == 0
    assert s.value("sgw_loader_files", kind="institution") == 1
    staff_source = next(src for src in meta.sources if src.kind == "staff")
    assert s.value("sgw_loader_last_load_timestamp_seconds", kind="staff") == staff_source.loaded_at

    # A delta with one bad row: the new version replaces the old in every state gauge.
    result = load(
        "staff", [staff_row(code=NURSE, category="护士"), staff_row(code="bad")], delta=True, force=True
    )
    assert result.outcome == 3
    await wait_for_state_refresh(gateway)
    await wait_for_state_refresh(gateway)
    s = scrape(gateway.metrics_port)
    assert s.series("sgw_data_version_info") == [{"version": result.data_version}]
    assert s.value("sgw_loader_rows", kind="staff") == 2
    assert s.value("sgw_loader_rejected_rows", kind="staff") == 1
    assert s.value("sgw_loader_files", kind="staff") == 2


async def test_no_data_is_visible(gateway: GatewayApp) -> None:
    s = scrape(gateway.metrics_port)
    assert s.value("sgw_data_loaded") == 0
    assert s.value("sgw_data_age_seconds") is None and s.series("sgw_data_version_info") == []


async def test_degraded_answers_and_failing_reads_are_counted(
    redis_server: RedisProcess, settings: Settings, tmp_path: Path
) -> None:
    own = RedisProcess(redis_server.binary, free_port(), tmp_path)
    own.start()
    load_into(own.url, tmp_path, "institution", [institution_row()])
    load_into(own.url, tmp_path, "staff", [staff_row()])
    app = GatewayApp(dataclasses.replace(settings, redis_url=own.url), own.url)
    try:
        await app.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.SettlementGatewayStub(channel)
            assert not (await stub.Validate(request(line()))).degraded  # fills the record cache
            own.kill()
            await until_lease_lapsed(app)
            assert (await stub.Validate(request(line()))).degraded
        s = scrape(app.metrics_port)
        assert s.value("sgw_degraded_answers_total") == 1
        assert s.total("sgw_redis_errors_total", call="read") == 1
        assert s.value("sgw_lines_total", verdict="ACCEPT", reason="OK") == 2
    finally:
        await app.stop(0.5)
        own.stop()
