"""The loader writes exports into a real Redis; the real server answers over a real channel."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc
from gateway.server import GatewayApp
from tests.conftest import Loader
from tests.exports import (
    DOCTOR,
    OTHER_HOSPITAL,
    at_cst,
    department_row,
    institution_row,
    line,
    request,
    staff_row,
)

NURSE = "N330902000008"
SUSPENDED_DOCTOR = "D330902000002"


@pytest.fixture
def loaded(load: Loader) -> None:
    assert load("institution", [institution_row(), institution_row(OTHER_HOSPITAL)]).outcome == 0
    assert load("department", [department_row("A05", start="2026-03-01", end="2026-06-30")]).outcome == 0
    result = load(
        "staff",
        [
            staff_row(),
            staff_row(code=NURSE, category="护士"),
            staff_row(code=SUSPENDED_DOCTOR),
            staff_row(code=SUSPENDED_DOCTOR, status="中止", start="2026-03-01", end="2026-05-31"),
            staff_row(code="D330903000007", institution=OTHER_HOSPITAL),
        ],
    )
    assert result.outcome == 0, result.message


async def test_a_bill_gets_per_line_verdicts_totals_and_outcome(
    loaded: None, stub: pb_grpc.SettlementGatewayStub
) -> None:
    response = await stub.Validate(
        request(
            line("1", DOCTOR, amount_fen=1200),
            line("2", SUSPENDED_DOCTOR, at_cst(2026, 2, 28), amount_fen=300),  # day before
            line("3", SUSPENDED_DOCTOR, at_cst(2026, 3, 1, 0), amount_fen=500),  # first day
            line("4", "D330903000007", amount_fen=700),  # only at the other hospital
            line("5", "D999999999999", amount_fen=11),
            line("6", NURSE, department_code="A05", amount_fen=13),  # department stopped
            line("7", SUSPENDED_DOCTOR, at_cst(2026, 4, 1), amount_fen=17, emergency=True),
            line("8", DOCTOR, item_code="", amount_fen=19, emergency=True),
            request_id="bill-42",
        )
    )
    got = [(v.line_id, pb.Verdict.Name(v.verdict), pb.Reason.Name(v.reason)) for v in response.verdicts]
    assert got == [
        ("1", "ACCEPT", "OK"),
        ("2", "ACCEPT", "OK"),
        ("3", "REJECT", "STAFF_SUSPENDED"),
        ("4", "REJECT", "STAFF_NOT_AT_INSTITUTION"),
        ("5", "REJECT", "STAFF_UNREGISTERED"),
        ("6", "REJECT", "DEPARTMENT_SUSPENDED"),
        ("7", "ACCEPT_EMERGENCY", "STAFF_SUSPENDED"),
        ("8", "REJECT", "ITEM_CODE_MISSING"),
    ]
    assert response.request_id == "bill-42"
    assert response.accepted_fen == 1200 + 300 + 17
    assert response.rejected_fen == 500 + 700 + 11 + 13 + 19
    assert response.outcome == pb.PARTIALLY_REJECTED
    assert response.data_version and response.data_as_of.seconds > 0 and not response.degraded
    suspended = response.verdicts[2]
    assert suspended.rule == "济宁市医疗保障局医保支付资格相关人员管理通知（2024） 五（二）"
    assert "2026-03-01" in suspended.detail and "2026-05-31" in suspended.detail


async def test_institution_suspension_cascades_and_emergency_med_type(
    load: Loader, stub: pb_grpc.SettlementGatewayStub
) -> None:
    load(
        "institution",
        [institution_row(), institution_row(status="中止", start="2026-03-01", end="2026-05-31")],
    )
    load("staff", [staff_row()])
    plain = await stub.Validate(request(line("1"), line("2", when=at_cst(2026, 6, 1))))
    assert [pb.Reason.Name(v.reason) for v in plain.verdicts] == ["INSTITUTION_SUSPENDED", "OK"]
    emergency = await stub.Validate(request(line("1"), med_type="13"))
    assert emergency.verdicts[0].verdict == pb.ACCEPT_EMERGENCY
    assert emergency.outcome == pb.ALL_ACCEPTED


async def test_all_rejected(loaded: None, stub: pb_grpc.SettlementGatewayStub) -> None:
    response = await stub.Validate(
        request(line("1", institution_code := DOCTOR), institution_code="H99999999999")
    )
    assert institution_code == DOCTOR
    assert response.outcome == pb.ALL_REJECTED
    assert response.verdicts[0].reason == pb.INSTITUTION_UNREGISTERED


async def test_stream_answers_each_request_in_order(
    loaded: None, stub: pb_grpc.SettlementGatewayStub
) -> None:
    requests = [request(line("1", code), request_id=f"r{i}") for i, code in enumerate([DOCTOR, "bad", NURSE])]
    call = stub.ValidateStream(iter(requests))
    replies = [reply async for reply in call]
    assert [r.request_id for r in replies] == ["r0", "r1", "r2"]
    assert [r.verdicts[0].reason for r in replies] == [pb.OK, pb.STAFF_CODE_MALFORMED, pb.OK]


async def test_new_data_is_served_without_restart(
    loaded: None, load: Loader, stub: pb_grpc.SettlementGatewayStub
) -> None:
    before = await stub.Validate(request(line("1", DOCTOR)))
    assert before.verdicts[0].reason == pb.OK
    result = load("staff", [staff_row(code=DOCTOR, status="中止", start="2026-01-01")], delta=True)
    assert result.outcome == 0
    after = await stub.Validate(request(line("1", DOCTOR)))
    assert after.verdicts[0].reason == pb.STAFF_SUSPENDED
    assert after.data_version == result.data_version != before.data_version
    status = await stub.GetStatus(pb.GetStatusRequest())
    assert status.data_version == result.data_version and status.store_reachable


async def test_health_and_reflection_are_served(loaded: None, gateway: GatewayApp) -> None:
    await asyncio.sleep(0.7)  # one status refresh after the data landed
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "settlement.v1.SettlementGateway"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name async for r in replies for s in r.list_services_response.service}
        assert "settlement.v1.SettlementGateway" in names and "grpc.health.v1.Health" in names


async def test_no_data_means_unavailable_and_not_serving(gateway: GatewayApp) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.SettlementGatewayStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Validate(request(line()))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "no settlement data" in (err.value.details() or "")
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_hot_records_never_outlive_their_version(
    loaded: None, load: Loader, gateway: GatewayApp, stub: pb_grpc.SettlementGatewayStub
) -> None:
    # Records of the live version are reused from the in-process cache; a publish must end that.
    first = await stub.Validate(request(line("1", DOCTOR)))
    assert first.verdicts[0].reason == pb.OK
    assert gateway.store is not None and len(gateway.store.cache) > 0
    # DOCTOR now comes from the cache, NURSE from Redis: one reply, both of one version.
    mixed = await stub.Validate(request(line("1", DOCTOR), line("2", NURSE)))
    assert [v.reason for v in mixed.verdicts] == [pb.OK, pb.OK]
    assert mixed.data_version == first.data_version
    result = load("staff", [staff_row(code=DOCTOR, status="中止", start="2026-01-01")], delta=True)
    assert result.outcome == 0
    after = await stub.Validate(request(line("1", DOCTOR), line("2", NURSE)))
    assert [v.reason for v in after.verdicts] == [pb.STAFF_SUSPENDED, pb.OK]
    assert after.data_version == result.data_version != first.data_version
