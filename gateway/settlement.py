"""Turn a ``ValidateRequest`` into rule inputs and decisions into a ``ValidateResponse``.

Whole-request faults (no institution, no lines, too many lines, a line without a valid
service time, totals beyond int64) raise ``RequestError`` naming the offending line; the
servicer maps it to ``INVALID_ARGUMENT``. Nothing here touches Redis or the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import compress
from operator import attrgetter

from google.protobuf.timestamp_pb2 import Timestamp

from gateway import reply
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


def parse_request(
    request: pb.ValidateRequest, config: RulesConfig, max_lines: int, start: int = 0, stop: int | None = None
) -> ParsedRequest:
    """The request's lines ``start:stop`` (all by default; a slice for ``gateway.slices``),
    after the whole-request checks."""
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
    chosen = request.lines if start == 0 and stop is None else request.lines[start:stop]
    for index, line in enumerate(chosen, start):
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
                line.prescribing_institution_code.strip(),
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
