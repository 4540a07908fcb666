"""Turn a ``ValidateRequest`` into rule inputs and decisions into a ``ValidateResponse``.

Whole-request faults (no institution, no lines, too many lines, a line without a valid
service time, totals beyond int64) raise ``RequestError`` naming the offending line; the
servicer maps it to ``INVALID_ARGUMENT``. Nothing here touches Redis or the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from google.protobuf.timestamp_pb2 import Timestamp

from gateway.days import (
    CST_OFFSET_SECONDS,
    SECONDS_PER_DAY,
    TIMESTAMP_MAX_SECONDS,
    TIMESTAMP_MIN_SECONDS,
    day_of_instant,
)
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.policy import Verdict
from gateway.rules import Decision, Line, RulesConfig, is_emergency_request

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


class RequestError(ValueError):
    """The request as a whole cannot be judged; the message says why and where."""


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    institution_code: str
    lines: list[Line]
    request_emergency: bool


def _line_label(index: int, line_id: str) -> str:
    return f"lines[{index}] (line_id={line_id!r})" if line_id else f"lines[{index}]"


def _service_day(index: int, line: pb.SettlementLine) -> int:
    if not line.HasField("service_time"):
        raise RequestError(f"{_line_label(index, line.line_id)} has no service_time")
    ts: Timestamp = line.service_time
    if not (TIMESTAMP_MIN_SECONDS <= ts.seconds <= TIMESTAMP_MAX_SECONDS) or not (
        0 <= ts.nanos <= 999_999_999
    ):
        raise RequestError(
            f"{_line_label(index, line.line_id)} has an invalid service_time "
            f"(seconds={ts.seconds}, nanos={ts.nanos})"
        )
    return day_of_instant(ts.seconds)


def parse_request(request: pb.ValidateRequest, config: RulesConfig, max_lines: int) -> ParsedRequest:
    institution = request.institution_code.strip()
    if not institution:
        raise RequestError("institution_code is empty")
    count = len(request.lines)
    if count == 0:
        raise RequestError("the settlement has no lines")
    if count > max_lines:
        raise RequestError(f"the settlement has {count} lines; at most {max_lines} are accepted")
    request_emergency = is_emergency_request(int(request.encounter), request.med_type, config)
    # Field 8 only matters where the profile reads external prescriptions (000 §11).
    prescriptions = bool(config.external_prescription_prefix)
    # The per-line loop is the hot path of a large bill: one read of each field, the day
    # computed inline, and the exact error left to ``_service_day`` for the rare bad line.
    lines: list[Line] = []
    append = lines.append
    for index, line in enumerate(request.lines):
        ts = line.service_time
        seconds = ts.seconds
        if (
            seconds == 0  # unset, or exactly the epoch: let HasField tell
            or not TIMESTAMP_MIN_SECONDS <= seconds <= TIMESTAMP_MAX_SECONDS
            or not 0 <= ts.nanos <= 999_999_999
        ):
            day = _service_day(index, line)
        else:
            day = (seconds + CST_OFFSET_SECONDS) // SECONDS_PER_DAY
        append(
            Line(
                line.staff_code.strip(),
                line.department_code.strip(),
                line.item_code,
                day,
                request_emergency or line.emergency,
                line.line_id,
                line.amount_fen,
                line.prescribing_institution_code.strip() if prescriptions else "",
            )
        )
    return ParsedRequest(institution, lines, request_emergency)


def _verdict_template(decision: Decision) -> pb.LineVerdict:
    # Empty strings are the proto3 default: not set, not encoded.
    template = pb.LineVerdict(
        verdict=cast("pb.Verdict.ValueType", decision.verdict.value),
        reason=cast("pb.Reason.ValueType", decision.reason.value),
    )
    if decision.detail:
        template.detail = decision.detail
    if decision.rule:
        template.rule = decision.rule
    return template


def build_response(
    request_id: str,
    lines: Sequence[Line],
    decisions: Sequence[Decision],
    data_version: str,
    data_as_of: float,
    degraded: bool,
) -> pb.ValidateResponse:
    """Assemble the reply; totals that overflow int64 are a ``RequestError``.

    A bill has a handful of distinct decisions however many lines it has: each becomes one
    prepared ``LineVerdict``, copied per line by ``extend`` (in C), so per line only the
    ``line_id`` is set from Python."""
    response = pb.ValidateResponse(request_id=request_id, data_version=data_version, degraded=degraded)
    response.data_as_of.FromNanoseconds(int(data_as_of * 1e9))
    templates: dict[int, pb.LineVerdict] = {}  # by id(): decisions are shared, not copied
    per_line: list[pb.LineVerdict] = []
    append = per_line.append
    accepted = rejected = 0
    rejected_lines = 0
    reject = Verdict.REJECT
    for line, decision in zip(lines, decisions, strict=True):
        template = templates.get(id(decision))
        if template is None:
            template = templates[id(decision)] = _verdict_template(decision)
        append(template)
        if decision.verdict is reject:
            rejected += line.amount_fen
            rejected_lines += 1
        else:
            accepted += line.amount_fen
    if not (INT64_MIN <= accepted <= INT64_MAX and INT64_MIN <= rejected <= INT64_MAX):
        raise RequestError("the settlement's totals overflow int64 (amount_fen)")
    verdicts = response.verdicts
    verdicts.extend(per_line)
    for verdict, line in zip(verdicts, lines, strict=True):
        if line.line_id:
            verdict.line_id = line.line_id
    response.accepted_fen = accepted
    response.rejected_fen = rejected
    if rejected_lines == 0:
        response.outcome = pb.ALL_ACCEPTED
    elif rejected_lines == len(decisions):
        response.outcome = pb.ALL_REJECTED
    else:
        response.outcome = pb.PARTIALLY_REJECTED
    return response
