"""``observe_settlement`` counts per group of lines; the counters must equal a count line by line.

The metrics group a bill's lines by decision and sum amounts per verdict in C. For random
bills (shared and equal-but-distinct decisions, charges and refunds, missing and malformed
staff codes, uncoded items) every counter must read what a plain per-line count gives.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from gateway.codes import DEFAULT_SHAPES
from gateway.metrics import JUDGED_VERDICTS, STAFF_CODE_FAULTS, GatewayMetrics, MetricsConfig
from gateway.policy import Reason, Verdict
from gateway.rules import Decision, Line

HOSPITAL = "H33090200017"
CODES = st.sampled_from(["D330902000001", "D330902000002", "N330902000003", "", "not-a-code"])
AMOUNTS = st.one_of(st.integers(min_value=-5_000, max_value=200_000), st.just(0))

decisions = st.builds(
    Decision,
    st.sampled_from(JUDGED_VERDICTS),
    st.sampled_from(list(Reason)),
    st.text(max_size=5),
    st.just(""),
)


@st.composite
def bills(draw: st.DrawFn) -> tuple[list[Line], list[Decision]]:
    pool = draw(st.lists(decisions, min_size=1, max_size=5))
    pool += [Decision(d.verdict, d.reason, d.detail, d.rule) for d in pool[:1]]
    count = draw(st.integers(min_value=1, max_value=50))
    lines = [Line(draw(CODES), "A03", "XA01", 20_000, False, str(i), draw(AMOUNTS)) for i in range(count)]
    return lines, [draw(st.sampled_from(pool)) for _ in range(count)]


def expected_counts(lines: list[Line], line_decisions: list[Decision]) -> dict[str, Counter[tuple[str, ...]]]:
    """Every counter's value, counted line by line."""
    out: dict[str, Counter[tuple[str, ...]]] = {
        "lines": Counter(),
        "amounts": Counter(),
        "institution": Counter(),
        "faults": Counter(),
    }
    for line, decision in zip(lines, line_decisions, strict=True):
        verdict, reason = decision.verdict.name, decision.reason.name
        out["lines"][verdict, reason] += 1
        out["institution"][HOSPITAL, verdict] += 1
        if line.amount_fen > 0:
            out["amounts"][verdict, "charge"] += line.amount_fen
        elif line.amount_fen < 0:
            out["amounts"][verdict, "refund"] -= line.amount_fen
        if decision.reason in STAFF_CODE_FAULTS:
            out["faults"][HOSPITAL, reason] += 1
        elif decision.reason is Reason.ITEM_CODE_MISSING:
            if not line.staff_code:
                out["faults"][HOSPITAL, Reason.STAFF_CODE_MISSING.name] += 1
            elif not DEFAULT_SHAPES.is_staff_code(line.staff_code):
                out["faults"][HOSPITAL, Reason.STAFF_CODE_MALFORMED.name] += 1
    return out


@settings(max_examples=100)
@given(bill=bills(), degraded=st.booleans())
def test_grouped_counts_equal_line_by_line_counts(
    bill: tuple[list[Line], list[Decision]], degraded: bool
) -> None:
    lines, line_decisions = bill
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry, MetricsConfig())
    metrics.observe_settlement(HOSPITAL, lines, line_decisions, degraded)
    want = expected_counts(lines, line_decisions)

    def value(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    for verdict in Verdict:
        for reason in Reason:
            got = value("sgw_lines_total", verdict=verdict.name, reason=reason.name)
            assert got == want["lines"][verdict.name, reason.name]
    for verdict in JUDGED_VERDICTS:
        for direction in ("charge", "refund"):
            got = value("sgw_amount_fen_total", verdict=verdict.name, direction=direction)
            assert got == want["amounts"][verdict.name, direction]
        got = value("sgw_institution_lines_total", institution=HOSPITAL, verdict=verdict.name)
        assert got == want["institution"][HOSPITAL, verdict.name]
    for reason in STAFF_CODE_FAULTS:
        got = value(
            "sgw_institution_staff_code_invalid_lines_total", institution=HOSPITAL, reason=reason.name
        )
        assert got == want["faults"][HOSPITAL, reason.name]
    assert value("sgw_degraded_answers_total") == (1 if degraded else 0)
    window = metrics.code_shares.summaries()[HOSPITAL]
    codes = Counter(line.staff_code for line in lines if line.staff_code)
    assert (window.lines, window.distinct_codes) == (len(lines), len(codes))
