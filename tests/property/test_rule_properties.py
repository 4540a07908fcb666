"""Properties of the rules that must hold for every input, not only the cases in test_rules.

Hypothesis generates staff, institution and department data with random overlapping periods
and random lines; each property is a sentence of DOMAIN.md.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.outage import OUTAGE_ACCEPTED, decide_with_gaps
from gateway.policy import Reason, Verdict
from gateway.records import (
    DepartmentActions,
    InstitutionPeriod,
    InstitutionRecord,
    Period,
    StaffPeriod,
    StaffRecord,
    Status,
)
from gateway.rules import (
    STAFF_STATUS_REASON,
    Evidence,
    Line,
    RulesConfig,
    decide,
    decide_all,
)

HOSPITAL = "H33090200017"
OTHER = "H33090300021"
CODES = ["D330902000001", "D330902000002", "N330902000003", "HY330902000004"]
CONFIG = RulesConfig()
DAYS = st.integers(min_value=20_000, max_value=20_060)

statuses = st.sampled_from(list(Status))


@st.composite
def periods(draw: st.DrawFn) -> tuple[Status, int, int]:
    start = draw(DAYS)
    end = draw(st.integers(min_value=start, max_value=20_080))
    return draw(statuses), start, end


staff_records = st.lists(
    st.tuples(st.sampled_from([HOSPITAL, OTHER]), periods()), min_size=0, max_size=4
).map(lambda ps: StaffRecord(tuple(StaffPeriod(inst, "A03", s, a, b) for inst, (s, a, b) in ps)))
institutions = st.lists(periods(), max_size=3).map(
    lambda ps: InstitutionRecord(tuple(InstitutionPeriod(s, a, b) for s, a, b in ps))
)
departments = st.dictionaries(
    st.sampled_from(["A03", "A05"]),
    st.lists(periods(), min_size=1, max_size=2).map(lambda ps: tuple(Period(*p) for p in ps)),
    max_size=2,
).map(DepartmentActions)


@st.composite
def evidences(draw: st.DrawFn) -> Evidence:
    return Evidence(
        institution_code=HOSPITAL,
        institution=draw(st.none() | institutions),
        departments=draw(st.none() | departments),
        staff=draw(st.dictionaries(st.sampled_from(CODES), st.none() | staff_records)),
    )


lines = st.builds(
    Line,
    staff_code=st.sampled_from([*CODES, "", "X123", "D33090200000"]),
    department_code=st.sampled_from(["A03", "A05", ""]),
    item_code=st.sampled_from(["XA01AAA001", "", "  ", "\u200b"]),
    service_day=DAYS,
    emergency=st.booleans(),
)


@settings(max_examples=400)
@given(evidences(), lines)
def test_an_emergency_line_is_rejected_only_for_an_uncoded_item(ev: Evidence, line: Line) -> None:
    line = Line(line.staff_code, line.department_code, line.item_code, line.service_day, True)
    decision = decide(line, ev, CONFIG)
    if decision.verdict is Verdict.REJECT:
        assert decision.reason is Reason.ITEM_CODE_MISSING
    else:
        assert decision.verdict in (Verdict.ACCEPT, Verdict.ACCEPT_EMERGENCY)


@settings(max_examples=400)
@given(evidences(), lines, st.sampled_from(CODES))
def test_a_non_emergency_line_from_an_unknown_code_is_never_accepted(
    ev: Evidence, line: Line, code: str
) -> None:
    unknown = Evidence(ev.institution_code, ev.institution, ev.departments, {**ev.staff, code: None})
    line = Line(code, line.department_code, line.item_code, line.service_day, False)
    assert decide(line, unknown, CONFIG).verdict is Verdict.REJECT


@settings(max_examples=400)
@given(st.lists(st.tuples(statuses, DAYS, DAYS), min_size=1, max_size=5), DAYS)
def test_the_stricter_staff_status_wins(spans: list[tuple[Status, int, int]], day: int) -> None:
    record = StaffRecord(tuple(StaffPeriod(HOSPITAL, "A03", s, min(a, b), max(a, b)) for s, a, b in spans))
    ev = Evidence(
        HOSPITAL, InstitutionRecord((InstitutionPeriod(Status.NORMAL, 0, 99_999),)), None, {CODES[0]: record}
    )
    decision = decide(Line(CODES[0], "A03", "XA01AAA001", day, False), ev, CONFIG)
    covering = [s for s, a, b in spans if min(a, b) <= day <= max(a, b)]
    if not covering:
        assert decision.reason is Reason.STAFF_NOT_AT_INSTITUTION
    else:
        strictest = max(covering)
        expected = STAFF_STATUS_REASON[strictest] or Reason.OK
        assert decision.reason is expected
        # Adding a less strict period never changes it.
        looser = StaffRecord((*record.periods, StaffPeriod(HOSPITAL, "A03", Status.NORMAL, day, day)))
        again = decide(
            Line(CODES[0], "A03", "XA01AAA001", day, False),
            Evidence(HOSPITAL, ev.institution, None, {CODES[0]: looser}),
            CONFIG,
        )
        assert again.reason is expected


@settings(max_examples=200)
@given(evidences(), st.lists(lines, min_size=1, max_size=30))
def test_a_bill_is_decided_line_by_line(ev: Evidence, bill: list[Line]) -> None:
    assert decide_all(bill, ev, CONFIG) == [decide(line, ev, CONFIG) for line in bill]


@settings(max_examples=400)
@given(evidences(), st.lists(lines, min_size=1, max_size=20), st.booleans(), st.sets(st.sampled_from(CODES)))
def test_with_data_missing_what_is_known_still_decides(
    ev: Evidence, bill: list[Line], institution_known: bool, missing: set[str]
) -> None:
    gaps = decide_with_gaps(bill, ev, CONFIG, institution_known, missing)
    for line, got in zip(bill, gaps, strict=True):
        full = decide(line, ev, CONFIG)
        staff_known = line.staff_code not in missing
        if institution_known and staff_known:
            assert got == full
            continue
        # An uncoded item or a malformed code needs no data: decided exactly as always.
        if full.reason in (Reason.ITEM_CODE_MISSING, Reason.STAFF_CODE_MISSING, Reason.STAFF_CODE_MALFORMED):
            assert got == full
        # A staff member the data shows banned here stays rejected without the institution.
        record = ev.staff.get(line.staff_code)
        if staff_known and record is not None and not line.emergency:
            staff_only = Evidence(
                HOSPITAL, InstitutionRecord((InstitutionPeriod(Status.NORMAL, 0, 99_999),)), None, ev.staff
            )
            if decide(line, staff_only, CONFIG).verdict is Verdict.REJECT:
                assert got.verdict is Verdict.REJECT
        # An emergency line is still never rejected but for an uncoded item.
        if line.emergency and got.verdict is Verdict.REJECT:
            assert got.reason is Reason.ITEM_CODE_MISSING
        # Whatever is paid for lack of data says so and cites the emergency plan.
        if got.verdict is Verdict.ACCEPT and got.rule:
            assert got is OUTAGE_ACCEPTED


@settings(max_examples=300)
@given(evidences(), st.lists(lines, min_size=1, max_size=80), st.booleans(), st.booleans())
def test_decisions_shared_across_days_equal_line_by_line_ones(
    ev: Evidence, bill: list[Line], national: bool, by_day: bool
) -> None:
    # decide_all reuses a decision over the days in which no consulted period starts or ends.
    config = RulesConfig(national_cancellation=national)
    if by_day:  # an inpatient bill runs through the stay day by day
        bill = sorted(bill, key=lambda line: line.service_day)
    assert decide_all(bill, ev, config) == [decide(line, ev, config) for line in bill]
