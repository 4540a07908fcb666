"""Turn a ``ValidateRequest`` into rule inputs and decisions into a ``ValidateResponse``.

Whole-request faults (no institution, no lines, too many lines, a line without a valid
service time or dated after the latest accepted day, an id, code or med_type longer than
``MAX_FIELD_CHARS``, totals beyond int64) raise ``RequestError`` naming the offending line or
field; the servicer maps it to ``INVALID_ARGUMENT``. Nothing here touches Redis, the network
or the clock (the caller passes the latest accepted day).

Field sizes are bounded because every audited line copies its ids and codes into the audit
stream: one call with two 100 KB ids and 500 audited lines would add 115 MB to Redis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from google.protobuf.timestamp_pb2 import Timestamp

from gateway.codes import DEPARTMENT_FORMS, MAX_FIELD_CHARS, canonical_department_cached
from gateway.days import (
    CST_OFFSET_SECONDS,
    SECONDS_PER_DAY,
    TIMESTAMP_MAX_SECONDS,
    TIMESTAMP_MIN_SECONDS,
    date_of_day,
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


REQUEST_FIELDS = ("request_id", "settlement_id", "institution_code", "med_type")
LINE_FIELDS = ("line_id", "staff_code", "department_code", "item_code", "prescribing_institution_code")
# No day limit: the caller did not say which day is today.
NO_MAX_DAY = 2**62


def _check_field_sizes(request: pb.ValidateRequest) -> None:
    if (
        len(request.request_id)
        + len(request.settlement_id)
        + len(request.institution_code)
        + len(request.med_type)
        <= MAX_FIELD_CHARS
    ):
        return  # the usual request: no field can be longer than all of them together
    for name in REQUEST_FIELDS:
        size = len(getattr(request, name))
        if size > MAX_FIELD_CHARS:
            raise RequestError(f"{name} has {size} characters; at most {MAX_FIELD_CHARS} are accepted")


def _oversized_field(index: int, line: pb.SettlementLine) -> RequestError:
    """The error for a line with an oversized field (the hot loop only noticed one)."""
    for name in LINE_FIELDS:
        size = len(getattr(line, name))
        if size > MAX_FIELD_CHARS:
            label = f"lines[{index}]" if name == "line_id" else _line_label(index, line.line_id)
            return RequestError(
                f"{label}.{name} has {size} characters; at most {MAX_FIELD_CHARS} are accepted"
            )
    raise AssertionError("no oversized field")


def _future_line(index: int, line_id: str, day: int, max_day: int) -> RequestError:
    return RequestError(
        f"{_line_label(index, line_id)} has a service_time on {date_of_day(day).isoformat()} (CST), "
        f"after the latest accepted service day {date_of_day(max_day).isoformat()} "
        "(today plus SGW_MAX_FUTURE_DAYS)"
    )


def parse_request(
    request: pb.ValidateRequest, config: RulesConfig, max_lines: int, max_day: int = NO_MAX_DAY
) -> ParsedRequest:
    """The rule inputs of one request. ``max_day``: the latest CST service day accepted
    (today plus ``SGW_MAX_FUTURE_DAYS``); a line dated later is no bill of today's."""
    _check_field_sizes(request)
    institution = request.institution_code.strip()
    if not institution:
        raise RequestError("institution_code is empty")
    count = len(request.lines)
    if count == 0:
        raise RequestError("the settlement has no lines")
    if count > max_lines:
        raise RequestError(f"the settlement has {count} lines; at most {max_lines} are accepted")
    request_emergency = is_emergency_request(int(request.encounter), request.med_type, config)
    # The per-line loop is the hot path of a large bill: one read of each field, the day
    # computed inline, and the exact error left to ``_service_day`` for the rare bad line.
    lines: list[Line] = []
    append = lines.append
    limit = MAX_FIELD_CHARS
    department_form = DEPARTMENT_FORMS.get
    for index, line in enumerate(request.lines):
        staff = line.staff_code
        department = line.department_code
        item = line.item_code
        line_id = line.line_id
        # One comparison for the usual line: no field can be longer than all of them together.
        if (
            len(staff) + len(department) + len(item) + len(line_id) + len(line.prescribing_institution_code)
            > limit
        ) and any(len(getattr(line, name)) > limit for name in LINE_FIELDS):
            raise _oversized_field(index, line)
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
        if day > max_day:
            raise _future_line(index, line_id, day, max_day)
        append(
            Line(
                staff.strip(),
                department_form(department) or canonical_department_cached(department),
                item,
                day,
                request_emergency or line.emergency,
                line_id,
                line.amount_fen,
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
