"""decide_all shares a decision across days only while no consulted period changes: that must
hold under every shipped profile's knobs too (sites, restoration, bans, pharmacies)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codes import DEFAULT_SHAPES
from gateway.profiles.loading import SHIPPED, load
from gateway.records import InstitutionPeriod, InstitutionRecord, StaffPeriod, StaffRecord, Status
from gateway.rules import Evidence, Line, decide, decide_all
from tests.property.test_rule_properties import DAYS, HOSPITAL, OTHER, periods

PHARMACY = "P33090200005"
CODES = ["D330902000001", "D330902000002"]
CONFIGS = {name: load(name).rules_config(DEFAULT_SHAPES) for name in SHIPPED}

# A long 正常 agreement at the hospital, and random periods at it, at another hospital and at
# a pharmacy: the lines reach the staff check, where most knobs act.
staff_records = st.lists(st.tuples(st.sampled_from([HOSPITAL, OTHER, PHARMACY]), periods()), max_size=5).map(
    lambda ps: StaffRecord(
        (
            StaffPeriod(HOSPITAL, "A03", Status.NORMAL, 19_990, 20_100),
            *(StaffPeriod(inst, "A03", s, a, b) for inst, (s, a, b) in ps),
        )
    )
)
institutions = st.lists(periods(), max_size=2).map(
    lambda ps: InstitutionRecord(
        (InstitutionPeriod(Status.NORMAL, 19_990, 20_100), *(InstitutionPeriod(s, a, b) for s, a, b in ps))
    )
)
lines = st.builds(
    Line,
    staff_code=st.sampled_from(CODES),
    department_code=st.sampled_from(["A03", ""]),
    item_code=st.just("XA01AAA001"),
    service_day=DAYS,
    emergency=st.booleans(),
    prescribing_institution=st.sampled_from(["", HOSPITAL, OTHER]),
)


@settings(max_examples=300)
@given(
    st.dictionaries(st.sampled_from(CODES), staff_records, min_size=len(CODES)),
    institutions,
    st.lists(lines, min_size=1, max_size=60),
    st.sampled_from(SHIPPED),
    st.sampled_from([HOSPITAL, PHARMACY]),
    st.booleans(),
)
def test_decisions_shared_across_days_equal_line_by_line_ones_under_every_profile(
    staff: dict[str, StaffRecord],
    institution: InstitutionRecord,
    bill: list[Line],
    profile: str,
    site: str,
    by_day: bool,
) -> None:
    config = CONFIGS[profile]
    ev = Evidence(site, institution, None, staff)
    if by_day:
        bill = sorted(bill, key=lambda line: line.service_day)
    assert decide_all(bill, ev, config) == [decide(line, ev, config) for line in bill]
