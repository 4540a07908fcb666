"""A bill judged in slices (gateway/slices.py) gets exactly the answer, the errors and the
metrics it gets judged in one go, wherever the slices fall."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from gateway import slices
from gateway.metrics import GatewayMetrics
from gateway.outage import decide_with_gaps
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.rules import Evidence, Line, RulesConfig, decide_all
from gateway.settlement import RequestError, build_response, parse_request
from tests.property.test_rule_properties import CODES, evidences, lines

CONFIG = RulesConfig()
slice_sizes = st.integers(min_value=1, max_value=9)


@contextlib.contextmanager
def slices_of(size: int) -> Iterator[None]:
    saved = slices.SLICE_LINES
    slices.SLICE_LINES = size
    try:
        yield
    finally:
        slices.SLICE_LINES = saved


bills = st.lists(
    st.tuples(lines, st.integers(min_value=-(10**9), max_value=10**9)), min_size=1, max_size=60
).map(
    lambda rows: [line._replace(line_id=str(i), amount_fen=amount) for i, (line, amount) in enumerate(rows)]
)


@settings(max_examples=200)
@given(evidences(), bills, slice_sizes, st.booleans())
def test_sliced_rules_and_reply_equal_the_one_go_ones(
    ev: Evidence, bill: list[Line], size: int, by_day: bool
) -> None:
    if by_day:
        bill = sorted(bill, key=lambda line: line.service_day)
    whole = decide_all(bill, ev, CONFIG)
    with slices_of(size):
        assert asyncio.run(slices.decide(bill, ev, CONFIG)) == whole


@settings(max_examples=100)
@given(evidences(), bills, slice_sizes, st.booleans(), st.sets(st.sampled_from(CODES)))
def test_sliced_outage_decisions_equal_the_one_go_ones(
    ev: Evidence, bill: list[Line], size: int, institution_known: bool, missing: set[str]
) -> None:
    whole = decide_with_gaps(bill, ev, CONFIG, institution_known, missing)
    with slices_of(size):
        assert asyncio.run(slices.decide_gaps(bill, ev, CONFIG, institution_known, missing)) == whole


def wire_request(rows: list[tuple[str, int | None]]) -> pb.ValidateRequest:
    req = pb.ValidateRequest(request_id="r", institution_code=" H33090200017 ", med_type="11")
    for i, (code, seconds) in enumerate(rows):
        line = req.lines.add(line_id=f"L{i}", staff_code=code, item_code="XA01AAA001", amount_fen=i)
        if seconds is not None:
            line.service_time.FromSeconds(seconds)
    return req


wire_rows = st.lists(
    st.tuples(
        st.sampled_from([*CODES, " D330902000001 ", ""]),
        st.none() | st.integers(min_value=1_700_000_000, max_value=1_800_000_000),
    ),
    min_size=1,
    max_size=40,
).map(lambda rows: [(c, s) for c, s in rows])


def parsed_or_error(run: object) -> object:
    try:
        parsed = run()  # type: ignore[operator]
    except RequestError as exc:
        return ("error", str(exc))
    return (parsed.institution_code, parsed.lines, parsed.request_emergency)


@settings(max_examples=200)
@given(wire_rows, slice_sizes, st.integers(min_value=1, max_value=50))
def test_sliced_parsing_equals_the_one_go_parsing(
    rows: list[tuple[str, int | None]], size: int, max_lines: int
) -> None:
    req = wire_request(rows)
    whole = parsed_or_error(lambda: parse_request(req, CONFIG, max_lines))
    with slices_of(size):
        sliced = parsed_or_error(lambda: asyncio.run(slices.parse(req, CONFIG, max_lines)))
    assert sliced == whole  # the same lines, or the same error naming the same line


def samples(metrics: GatewayMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


@settings(max_examples=100)
@given(evidences(), bills, slice_sizes, st.booleans())
def test_sliced_metrics_count_the_settlement_once(
    ev: Evidence, bill: list[Line], size: int, degraded: bool
) -> None:
    decisions = decide_all(bill, ev, CONFIG)
    whole, sliced = GatewayMetrics(CollectorRegistry()), GatewayMetrics(CollectorRegistry())
    whole.observe_settlement("H33090200017", bill, decisions, degraded)
    with slices_of(size):
        asyncio.run(slices.observe(sliced, "H33090200017", bill, decisions, degraded))
    assert samples(sliced) == samples(whole)
    assert sliced.code_shares.summaries() == whole.code_shares.summaries()


def test_a_slice_is_where_the_loop_serves_others() -> None:
    """Between two slices of one bill, another task runs: the point of slicing."""
    bill = [Line("D330902000001", "A03", "XA01AAA001", 20_000 + i % 5, False, str(i), 1) for i in range(50)]
    ev = Evidence("H33090200017", None, None, {})
    bill_done_when_other_ran: list[bool] = []

    async def main() -> None:
        with slices_of(10):
            task = asyncio.ensure_future(slices.decide(bill, ev, CONFIG))

            async def other() -> None:
                bill_done_when_other_ran.append(task.done())

            other_task = asyncio.ensure_future(other())
            await task
            await other_task
        assert bill_done_when_other_ran == [False]

    asyncio.run(main())


@pytest.mark.parametrize("count", [1, 256, 257, 1000])
def test_every_line_is_judged_once_whatever_the_bill_size(count: int) -> None:
    bill = [Line("D330902000001", "A03", "XA01AAA001", 20_000, False, str(i), 1) for i in range(count)]
    ev = Evidence("H33090200017", None, None, {})
    decisions = asyncio.run(slices.decide(bill, ev, CONFIG))
    reply = pb.ValidateResponse.FromString(build_response("r", bill, decisions, "v", 1.0, False))
    assert [v.line_id for v in reply.verdicts] == [str(i) for i in range(count)]
