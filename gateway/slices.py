"""Large bills judged in slices that yield to the event loop between them.

Every call of a process shares one event loop. A 10,000-line bill took about 150 ms of it in
one go (measured: parsing ~45 %, building the reply ~20 %, the rules ~10-15 %, the metrics
~10 %), so a one-line bill that arrived meanwhile waited for all of it: p50 went from 1.8 ms
to 1,585 ms under six loops of such bills. Judged ``SLICE_LINES`` lines at a time, with the
loop free to serve other calls between slices, a small bill waits at most a slice or two.

Each step gives exactly what the one-go function gives (``tests/property`` compares them):
the rules share one memo across slices (``decide_all(..., memo)``) and the metrics count the
settlement once. The reply is not sliced: ``build_response`` joins its entries in C from one
encoded verdict per distinct decision (``gateway.reply``), about 0.7 µs a line. A bill of at
most ``SLICE_LINES`` lines takes the one-go path: the everyday bill pays one comparison.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence

from gateway.metrics import GatewayMetrics
from gateway.outage import decide_with_gaps
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.rules import Decision, DecisionMemo, Evidence, Line, RulesConfig, decide_all
from gateway.settlement import (
    NO_MAX_DAY,
    ParsedRequest,
    parse_request,
)

# ~1-2 ms of work per slice on the reference machine (benchmarks/fair_share.py): small
# enough that a waiting call is not held up, large enough that yielding costs nothing.
SLICE_LINES = 256


def _bounds(count: int) -> range:
    return range(0, count, SLICE_LINES)


async def parse(
    request: pb.ValidateRequest, config: RulesConfig, max_lines: int, max_day: int = NO_MAX_DAY
) -> ParsedRequest:
    """``parse_request``, a slice at a time for a large bill."""
    count = len(request.lines)
    if count <= SLICE_LINES or count > max_lines:
        return parse_request(request, config, max_lines, max_day)
    lines: list[Line] = []
    parsed = None
    for start in _bounds(count):
        parsed = parse_request(request, config, max_lines, max_day, start, start + SLICE_LINES)
        lines.extend(parsed.lines)
        await asyncio.sleep(0)
    assert parsed is not None
    return ParsedRequest(parsed.institution_code, lines, parsed.request_emergency)


async def decide(lines: Sequence[Line], evidence: Evidence, config: RulesConfig) -> list[Decision]:
    """``decide_all``, a slice at a time (one memo for the whole bill)."""
    if len(lines) <= SLICE_LINES:
        return decide_all(lines, evidence, config)
    memo: DecisionMemo = {}
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
