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
from itertools import compress
from operator import attrgetter

from google.protobuf.timestamp_pb2 import Timestamp

from gateway import reply
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

_amount_fen = attrgetter("amount_fen")


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
    request: pb.ValidateRequest,
    config: RulesConfig,
    max_lines: int,
    max_day: int = NO_MAX_DAY,
    start: int = 0,
    stop: int | None = None,
) -> ParsedRequest:
    """The rule inputs of the request's lines ``start:stop`` (all by default; a slice for
    ``gateway.slices``), after the whole-request checks. ``max_day``: the latest CST service
    day accepted (today plus ``SGW_MAX_FUTURE_DAYS``); a line dated later is no bill of today's."""
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
    # Field 8 only matters where the profile reads external prescriptions (000 §11).
    prescriptions = bool(config.external_prescription_prefix)
    # The per-line loop is the hot path of a large bill: one read of each field, the day
    # computed inline, and the exact error left to ``_service_day`` for the rare bad line.
    lines: list[Line] = []
    append = lines.append
    limit = MAX_FIELD_CHARS
    department_form = DEPARTMENT_FORMS.get
    chosen = request.lines if start == 0 and stop is None else request.lines[start:stop]
    for index, line in enumerate(chosen, start):
        staff = line.staff_code
        department = line.department_code
        item = line.item_code
        line_id = line.line_id
        prescribing = line.prescribing_institution_code
        # One comparison for the usual line: no field can be longer than all of them together.
        if (len(staff) + len(department) + len(item) + len(line_id) + len(prescribing) > limit) and any(
            len(getattr(line, name)) > limit for name in LINE_FIELDS
        ):
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
                prescribing.strip() if prescriptions else "",
            )
        )
    return ParsedRequest(institution, lines, request_emergency)


def build_response(
    request_id: str,
    lines: Sequence[Line],
    decisions: Sequence[Decision],
    data_version: str,
    data_as_of: float,
    degraded: bool,
) -> bytes:
    """The reply as ``ValidateResponse`` wire bytes (``gateway.reply`` says how and why);
    totals that overflow int64 are a ``RequestError``.

    The totals, like the entries, take no Python step per line: which lines are rejected is
    looked up per distinct decision and the amounts summed by ``sum``/``compress`` in C."""
    keys = list(map(id, decisions))  # decisions are shared, not copied: identity groups them
    if len(keys) != len(lines):
        raise ValueError(f"{len(lines)} lines but {len(keys)} decisions")
    distinct = dict(zip(keys, decisions, strict=True))
    amounts = list(map(_amount_fen, lines))
    rejected_keys = {key: decision.verdict is Verdict.REJECT for key, decision in distinct.items()}
    if any(rejected_keys.values()):
        rejected_flags = list(map(rejected_keys.__getitem__, keys))
        rejected = sum(compress(amounts, rejected_flags))
        rejected_lines = sum(rejected_flags)
    else:
        rejected = rejected_lines = 0
    accepted = sum(amounts) - rejected
    if not (INT64_MIN <= accepted <= INT64_MAX and INT64_MIN <= rejected <= INT64_MAX):
        raise RequestError("the settlement's totals overflow int64 (amount_fen)")
    if rejected_lines == 0:
        outcome = pb.ALL_ACCEPTED
    elif rejected_lines == len(keys):
        outcome = pb.ALL_REJECTED
    else:
        outcome = pb.PARTIALLY_REJECTED
    return b"".join(
        (
            reply.string_field(reply.RESPONSE_REQUEST_ID, request_id),
            reply.varint_field(reply.RESPONSE_OUTCOME, outcome),
            reply.verdict_entries(lines, keys, distinct),
            reply.varint_field(reply.RESPONSE_ACCEPTED_FEN, accepted),
            reply.varint_field(reply.RESPONSE_REJECTED_FEN, rejected),
            reply.version_fields(data_version, data_as_of, degraded),
        )
    )
