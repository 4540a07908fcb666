"""Whole-request checks and response assembly (no network)."""

from __future__ import annotations

import datetime as dt

import pytest

from gateway import settlement
from gateway.days import CST, day_of_date
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.policy import Reason, Verdict
from gateway.rules import Decision, RulesConfig
from gateway.settlement import INT64_MAX, RequestError, parse_request
from tests.exports import line, request

CONFIG = RulesConfig()
OK = Decision(Verdict.ACCEPT, Reason.OK, "", "")
REJECT = Decision(Verdict.REJECT, Reason.STAFF_SUSPENDED, "x", "y")
EMERG = Decision(Verdict.ACCEPT_EMERGENCY, Reason.STAFF_SUSPENDED, "x", "y")


def test_service_day_is_the_cst_calendar_day() -> None:
    late = dt.datetime(2026, 2, 28, 15, 59, 59, tzinfo=dt.UTC)  # 23:59:59 CST on 02-28
    early = dt.datetime(2026, 2, 28, 16, 0, 0, tzinfo=dt.UTC)  # 00:00:00 CST on 03-01
    parsed = parse_request(request(line("a", when=late), line("b", when=early)), CONFIG, 100)
    assert [ln.service_day for ln in parsed.lines] == [
        day_of_date(dt.date(2026, 2, 28)),
        day_of_date(dt.date(2026, 3, 1)),
    ]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: request(line(), institution_code=""), "institution_code is empty"),
        (lambda: request(line(), institution_code="   "), "institution_code is empty"),
        (lambda: request(), "no lines"),
        (lambda: request(*[line(str(i)) for i in range(11)]), "11 lines; at most 10"),
    ],
)
def test_whole_request_faults(build: object, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        parse_request(build(), CONFIG, 10)  # type: ignore[operator]


def test_a_service_time_at_the_epoch_is_a_time_not_a_missing_one() -> None:
    # The parser's fast path treats seconds == 0 as "maybe unset" and asks HasField.
    req = request(line("a"), line("b"))
    req.lines[0].service_time.FromSeconds(0)
    req.lines[1].service_time.FromSeconds(-1)
    parsed = parse_request(req, CONFIG, 10)
    assert [ln.service_day for ln in parsed.lines] == [0, 0]  # 1970-01-01 08:00 / 07:59:59 CST


def test_line_without_service_time_is_named() -> None:
    req = request(line("a"), line("b"))
    req.lines[1].ClearField("service_time")
    with pytest.raises(RequestError, match=r"lines\[1\] \(line_id='b'\) has no service_time"):
        parse_request(req, CONFIG, 10)


@pytest.mark.parametrize(
    ("seconds", "nanos"), [(253402300800, 0), (-62135596801, 0), (0, -1), (0, 1_000_000_000)]
)
def test_out_of_range_timestamps(seconds: int, nanos: int) -> None:
    req = request(line("a"))
    req.lines[0].service_time.seconds = seconds
    req.lines[0].service_time.nanos = nanos
    with pytest.raises(RequestError, match="invalid service_time"):
        parse_request(req, CONFIG, 10)


def test_emergency_from_encounter_med_type_or_line() -> None:
    assert parse_request(request(line(), encounter=pb.EMERGENCY), CONFIG, 10).lines[0].emergency
    assert parse_request(request(line(), med_type="24"), CONFIG, 10).lines[0].emergency
    parsed = parse_request(request(line("a"), line("b", emergency=True)), CONFIG, 10)
    assert [ln.emergency for ln in parsed.lines] == [False, True]


def test_codes_are_trimmed() -> None:
    parsed = parse_request(request(line(staff_code=" D330902001234 ")), CONFIG, 10)
    assert parsed.lines[0].staff_code == "D330902001234"


def build_response(
    req: pb.ValidateRequest, decisions: list[Decision], version: str, as_of: float, degraded: bool
) -> pb.ValidateResponse:
    lines = parse_request(req, CONFIG, 10).lines
    encoded = settlement.build_response(req.request_id, lines, decisions, version, as_of, degraded)
    return pb.ValidateResponse.FromString(encoded)


def test_totals_and_outcome() -> None:
    req = request(line("a", amount_fen=1000), line("b", amount_fen=250), line("c", amount_fen=-100))
    resp = build_response(req, [OK, REJECT, EMERG], "v1", 1.5, degraded=False)
    assert (resp.accepted_fen, resp.rejected_fen) == (900, 250)
    assert resp.outcome == pb.PARTIALLY_REJECTED
    assert [v.line_id for v in resp.verdicts] == ["a", "b", "c"]
    assert resp.request_id == req.request_id
    assert resp.data_version == "v1" and resp.data_as_of.ToNanoseconds() == 1_500_000_000
    assert build_response(req, [OK, EMERG, OK], "v", 0, False).outcome == pb.ALL_ACCEPTED
    assert build_response(req, [REJECT] * 3, "v", 0, False).outcome == pb.ALL_REJECTED


def test_each_line_gets_its_own_verdict_even_when_decisions_are_shared() -> None:
    req = request(line("a"), line("b"), line("c"), line(""))
    resp = build_response(req, [REJECT, OK, REJECT, EMERG], "v", 0, False)
    assert [(v.line_id, v.verdict, v.reason, v.detail, v.rule) for v in resp.verdicts] == [
        ("a", pb.REJECT, pb.STAFF_SUSPENDED, "x", "y"),
        ("b", pb.ACCEPT, pb.OK, "", ""),
        ("c", pb.REJECT, pb.STAFF_SUSPENDED, "x", "y"),
        ("", pb.ACCEPT_EMERGENCY, pb.STAFF_SUSPENDED, "x", "y"),
    ]


def test_totals_overflowing_int64_are_refused() -> None:
    req = request(line("a", amount_fen=INT64_MAX), line("b", amount_fen=1))
    with pytest.raises(RequestError, match="overflow"):
        build_response(req, [OK, OK], "v", 0, False)


def test_negative_refund_lines_are_fine() -> None:
    req = request(line("a", amount_fen=-(2**63)), line("b", amount_fen=0))
    assert build_response(req, [OK, OK], "v", 0, False).accepted_fen == -(2**63)


def test_cst_constant() -> None:
    assert CST.utcoffset(None) == dt.timedelta(hours=8)
