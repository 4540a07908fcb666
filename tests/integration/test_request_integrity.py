"""Crafted lines cannot slip past the rules: codes are ASCII, department codes have one
canonical form, a line without a department is caught where a department is stopped,
service days and field sizes are bounded. Real loader, real Redis, real gateway over gRPC."""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from gateway.config import Settings
from gateway.days import CST
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc
from gateway.server import GatewayApp
from tests.conftest import Loader
from tests.exports import (
    DOCTOR,
    HOSPITAL,
    at_cst,
    department_row,
    institution_row,
    line,
    request,
    staff_row,
)

FULL_WIDTH_DOCTOR = "D３３０９０２００１２３４"
OTHER_DOCTOR = "D330902005678"


@pytest.fixture
def loaded(load: Loader) -> None:
    assert load("institution", [institution_row()]).outcome == 0
    assert load("department", [department_row("A05", start="2026-03-01", end="2026-06-30")]).outcome == 0
    assert load("staff", [staff_row(), staff_row(code=OTHER_DOCTOR)]).outcome == 0


def reasons(reply: pb.ValidateResponse) -> list[tuple[str, str]]:
    return [(pb.Verdict.Name(v.verdict), pb.Reason.Name(v.reason)) for v in reply.verdicts]


# -- codes are ASCII ------------------------------------------------------------------------


async def test_a_full_width_staff_code_is_malformed(
    loaded: None, stub: pb_grpc.SettlementGatewayStub
) -> None:
    reply = await stub.Validate(request(line("1", FULL_WIDTH_DOCTOR), line("2", "D٣٣٠٩٠٢٠٠١٢٣٤")))
    assert reasons(reply) == [("REJECT", "STAFF_CODE_MALFORMED")] * 2


def read_rejects(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def test_the_loader_rejects_full_width_codes_with_their_reason(load: Loader, tmp_path: Path) -> None:
    # Eleven rows, one bad: under the 10 % bad-row guard, so the file publishes (exit 3).
    institutions = [institution_row(f"H330902{n:05d}") for n in range(10)]
    result = load("institution", [*institutions, institution_row("H３３０９０２０００１８")])
    assert result.outcome == 3 and result.rejected == 1, result.message
    result = load(
        "staff", [*(staff_row(code=f"D330902{n:06d}") for n in range(10)), staff_row(code=FULL_WIDTH_DOCTOR)]
    )
    assert result.outcome == 3 and result.rejected == 1, result.message
    rejects = sorted(tmp_path.glob("*.rejects.csv"))
    rows = [row for path in rejects for row in read_rejects(path)]
    joined = [" ".join(row.values()) for row in rows]
    assert any("人员代码不符合国家编码规则" in text and FULL_WIDTH_DOCTOR in text for text in joined), joined
    assert any("定点机构代码不符合国家编码规则" in text for text in joined), joined


# -- department codes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "spelling", ["A05", "a05", "Ａ05", "Ａ０５", "A05\u200b", " A05 ", "\ufeffa05\u3000"]
)
async def test_a_stopped_department_is_stopped_however_it_is_spelled(
    loaded: None, stub: pb_grpc.SettlementGatewayStub, spelling: str
) -> None:
    reply = await stub.Validate(request(line("1", department_code=spelling)))
    assert reasons(reply) == [("REJECT", "DEPARTMENT_SUSPENDED")]
    assert "A05" in reply.verdicts[0].detail


async def test_the_loader_stores_department_codes_canonically(
    load: Loader, stub: pb_grpc.SettlementGatewayStub
) -> None:
    assert load("institution", [institution_row()]).outcome == 0
    assert load("department", [department_row("ａ０７\u200b", start="2026-03-01")]).outcome == 0
    assert load("staff", [staff_row()]).outcome == 0
    reply = await stub.Validate(request(line("1", department_code="A07"), line("2", department_code="a07")))
    assert reasons(reply) == [("REJECT", "DEPARTMENT_SUSPENDED")] * 2


async def test_a_line_without_a_department_where_one_is_stopped(
    loaded: None, stub: pb_grpc.SettlementGatewayStub
) -> None:
    reply = await stub.Validate(
        request(
            line("1", department_code=""),
            line("2", department_code="\u200b"),  # nothing visible: no department
            line("3", department_code="", when=at_cst(2026, 2, 28)),  # before the stop
            line("4", department_code="", when=at_cst(2026, 7, 1)),  # after it
            line("5", department_code="", emergency=True),
            line("6", department_code="A03"),
        )
    )
    assert reasons(reply) == [
        ("REJECT", "DEPARTMENT_CODE_MISSING"),
        ("REJECT", "DEPARTMENT_CODE_MISSING"),
        ("ACCEPT", "OK"),
        ("ACCEPT", "OK"),
        ("ACCEPT_EMERGENCY", "DEPARTMENT_CODE_MISSING"),
        ("ACCEPT", "OK"),
    ]
    assert reply.verdicts[0].rule == "佛医保〔2021〕93号 第二十条"
    assert "未传科室编码" in reply.verdicts[0].detail


async def test_an_item_code_of_invisible_characters_is_missing(
    loaded: None, stub: pb_grpc.SettlementGatewayStub
) -> None:
    reply = await stub.Validate(request(line("1", item_code="\u200b\u200b"), line("2", item_code="\x00")))
    assert reasons(reply) == [("REJECT", "ITEM_CODE_MISSING")] * 2


# -- service days and field sizes -----------------------------------------------------------


def today_cst() -> dt.date:
    return dt.datetime.now(CST).date()


async def invalid(stub: pb_grpc.SettlementGatewayStub, req: pb.ValidateRequest) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Validate(req)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return err.value.details() or ""


async def test_a_line_dated_after_today_is_refused(loaded: None, stub: pb_grpc.SettlementGatewayStub) -> None:
    today = today_cst()
    late_tonight = dt.datetime.combine(today, dt.time(23, 59), CST)
    tomorrow = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(0, 1), CST)
    ok = await stub.Validate(request(line("1", when=late_tonight)))
    assert reasons(ok) == [("ACCEPT", "OK")]
    details = await invalid(stub, request(line("a"), line("b", when=tomorrow)))
    assert "lines[1] (line_id='b')" in details and (today + dt.timedelta(days=1)).isoformat() in details
    assert "SGW_MAX_FUTURE_DAYS" in details
    far = dt.datetime(9999, 12, 31, 12, tzinfo=dt.UTC)
    details = await invalid(stub, request(line("a", OTHER_DOCTOR, when=far)))
    assert "lines[0] (line_id='a')" in details and "9999-12-31" in details


@pytest.fixture
async def lenient_stub(settings: Settings) -> AsyncIterator[pb_grpc.SettlementGatewayStub]:
    app = GatewayApp(replace(settings, max_future_days=2), settings.redis_url or "")
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            yield pb_grpc.SettlementGatewayStub(channel)
    finally:
        await app.stop(0.5)


async def test_max_future_days_moves_the_limit(
    loaded: None, lenient_stub: pb_grpc.SettlementGatewayStub
) -> None:
    today = today_cst()
    in_two_days = dt.datetime.combine(today + dt.timedelta(days=2), dt.time(12), CST)
    in_three_days = dt.datetime.combine(today + dt.timedelta(days=3), dt.time(0, 1), CST)
    assert reasons(await lenient_stub.Validate(request(line("1", when=in_two_days)))) == [("ACCEPT", "OK")]
    details = await invalid(lenient_stub, request(line("1", when=in_three_days)))
    assert "lines[0] (line_id='1')" in details


LONG = "X" * 65


def with_request_field(name: str) -> pb.ValidateRequest:
    req = request(line("1"))
    setattr(req, name, LONG)
    return req


def with_line_field(name: str) -> pb.ValidateRequest:
    req = request(line("a"), line("b"))
    setattr(req.lines[1], name, LONG)
    return req


@pytest.mark.parametrize(
    ("build", "named"),
    [
        *[
            pytest.param(lambda n=n: with_request_field(n), n, id=n)
            for n in ("request_id", "settlement_id", "institution_code", "med_type")
        ],
        pytest.param(lambda: with_line_field("line_id"), "lines[1].line_id", id="line_id"),
        *[
            pytest.param(lambda n=n: with_line_field(n), f"lines[1] (line_id='b').{n}", id=n)
            for n in ("staff_code", "department_code", "item_code", "prescribing_institution_code")
        ],
    ],
)
async def test_an_oversized_field_is_refused_by_name(
    loaded: None, stub: pb_grpc.SettlementGatewayStub, build: object, named: str
) -> None:
    details = await invalid(stub, build())  # type: ignore[operator]
    assert f"{named} has 65 characters; at most 64" in details, details


async def test_sixty_four_characters_are_fine(loaded: None, stub: pb_grpc.SettlementGatewayStub) -> None:
    req = request(line("L" * 64, item_code="I" * 64), request_id="R" * 64)
    req.settlement_id = "S" * 64
    reply = await stub.Validate(req)
    assert reasons(reply) == [("ACCEPT", "OK")] and reply.request_id == "R" * 64
    assert HOSPITAL and DOCTOR  # the loaded data answered
