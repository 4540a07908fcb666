"""Large bills judged in slices that yield to the event loop between them.

Every call of a process shares one event loop. A 10,000-line bill took about 150 ms of it in
one go (measured: parsing ~45 %, building the reply ~20 %, the rules ~10-15 %, the metrics
~10 %), so a one-line bill that arrived meanwhile waited for all of it: p50 went from 1.8 ms
to 1,585 ms under six loops of such bills. Judged ``SLICE_LINES`` lines at a time, with the
loop free to serve other calls between slices, a small bill waits at most a slice or two.

Each step gives exactly what the one-go function gives (``tests/property`` compares them):
the rules share one memo across slices (``decide_all(..., memo)``), the reply is the one-go
reply assembled from each slice's, and the metrics count the settlement once. A bill of at
most ``SLICE_LINES`` lines takes the one-go path: the everyday bill pays one comparison.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence

from gateway.metrics import GatewayMetrics
from gateway.outage import decide_with_gaps
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.rules import Decision, Evidence, Line, RulesConfig, decide_all
from gateway.settlement import (
    INT64_MAX,
    INT64_MIN,
    ParsedRequest,
    RequestError,
    build_response,
    parse_request,
)

# ~1-2 ms of work per slice on the reference machine (benchmarks/fair_share.py): small
# enough that a waiting call is not held up, large enough that yielding costs nothing.
SLICE_LINES = 256


def _bounds(count: int) -> range:
    return range(0, count, SLICE_LINES)


async def parse(request: pb.ValidateRequest, config: RulesConfig, max_lines: int) -> ParsedRequest:
    """``parse_request``, a slice at a time for a large bill."""
    count = len(request.lines)
    if count <= SLICE_LINES or count > max_lines:
        return parse_request(request, config, max_lines)
    lines: list[Line] = []
    parsed = None
    for start in _bounds(count):
        parsed = parse_request(request, config, max_lines, start, start + SLICE_LINES)
        lines.extend(parsed.lines)
        await asyncio.sleep(0)
    assert parsed is not None
    return ParsedRequest(parsed.institution_code, lines, parsed.request_emergency)


async def decide(lines: Sequence[Line], evidence: Evidence, config: RulesConfig) -> list[Decision]:
    """``decide_all``, a slice at a time (one memo for the whole bill)."""
    if len(lines) <= SLICE_LINES:
        return decide_all(lines, evidence, config)
    memo: dict[tuple[str, str, bool, bool], tuple[int, int, Decision]] = {}
    out: list[Decision] = []
    for start in _bounds(len(lines)):
        out.extend(decide_all(lines[start : start + SLICE_LINES], evidence, config, memo))
        await asyncio.sleep(0)
    return out


async def decide_gaps(
    lines: Sequence[Line],
    evidence: Evidence,
    config: RulesConfig,
    institution_known: bool,
    missing_staff: Collection[str],
) -> list[Decision]:
    """``decide_with_gaps`` (a line at a time by nature), a slice at a time."""
    if len(lines) <= SLICE_LINES:
        return decide_with_gaps(lines, evidence, config, institution_known, missing_staff)
    out: list[Decision] = []
    for start in _bounds(len(lines)):
        part = lines[start : start + SLICE_LINES]
        out.extend(decide_with_gaps(part, evidence, config, institution_known, missing_staff))
        await asyncio.sleep(0)
    return out


async def build(
    request_id: str,
    lines: Sequence[Line],
    decisions: Sequence[Decision],
    data_version: str,
    data_as_of: float,
    degraded: bool,
) -> pb.ValidateResponse:
    """``build_response``, a slice at a time: each slice's reply is built as usual and its
    verdicts appended; totals and outcome follow from the slices'.

    One difference, at the edge of int64: a slice whose own totals overflow makes the bill
    overflow, even if refunds in other slices would have brought the sum back in range."""
    if len(lines) <= SLICE_LINES:
        return build_response(request_id, lines, decisions, data_version, data_as_of, degraded)
    response: pb.ValidateResponse | None = None
    accepted = rejected = 0
    outcomes: set[pb.Outcome.ValueType] = set()
    for start in _bounds(len(lines)):
        stop = start + SLICE_LINES
        part = build_response(
            request_id, lines[start:stop], decisions[start:stop], data_version, data_as_of, degraded
        )
        accepted += part.accepted_fen
        rejected += part.rejected_fen
        outcomes.add(part.outcome)
        if response is None:
            response = part
        else:
            response.verdicts.extend(part.verdicts)
        await asyncio.sleep(0)
    assert response is not None
    if not (INT64_MIN <= accepted <= INT64_MAX and INT64_MIN <= rejected <= INT64_MAX):
        raise RequestError("the settlement's totals overflow int64 (amount_fen)")
    response.accepted_fen = accepted
    response.rejected_fen = rejected
    response.outcome = outcomes.pop() if len(outcomes) == 1 else pb.PARTIALLY_REJECTED
    return response


async def observe(
    metrics: GatewayMetrics,
    institution: str,
    lines: Sequence[Line],
    decisions: Sequence[Decision],
    degraded: bool,
) -> None:
    """``observe_settlement``, a slice at a time; the settlement counts as degraded once."""
    if len(lines) <= SLICE_LINES:
        metrics.observe_settlement(institution, lines, decisions, degraded)
        return
    starts = _bounds(len(lines))
    last = starts[-1]
    for start in starts:
        stop = start + SLICE_LINES
        metrics.observe_settlement(
            institution, lines[start:stop], decisions[start:stop], degraded and start == last
        )
        await asyncio.sleep(0)
