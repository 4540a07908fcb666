"""The rules, case by case: each row names the article it checks.

Evidence is built directly (no Redis): staff D330902001234 at hospital H33090200017 has an
open 正常 agreement since 2024-01-01 and a 中止 period 2026-03-01..2026-05-31 (001 §五(一):
3 months); the hospital is designated since 2020.
"""

from __future__ import annotations

import datetime as dt

import pytest

from gateway.codes import CodeShapes
from gateway.days import OPEN_END, day_of_date
from gateway.policy import RULE_BY_REASON, Reason, Verdict
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
    CHECK_ORDER,
    Evidence,
    Line,
    RulesConfig,
    decide,
    decide_all,
    is_emergency_request,
    staff_codes_to_fetch,
)
from tests.exports import DOCTOR, HOSPITAL, OTHER_HOSPITAL

CONFIG = RulesConfig()


def d(text: str) -> int:
    return day_of_date(dt.date.fromisoformat(text))


def staff(*periods: tuple[str, Status, str, str | None]) -> StaffRecord:
    return StaffRecord(
        tuple(
            StaffPeriod(inst, "A03", status, d(start), d(end) if end else OPEN_END)
            for inst, status, start, end in periods
        ),
        "医师",
    )


def institution(*periods: tuple[Status, str, str | None]) -> InstitutionRecord:
    return InstitutionRecord(
        tuple(InstitutionPeriod(s, d(a), d(b) if b else OPEN_END, "330902") for s, a, b in periods)
    )


BASE_STAFF = staff(
    (HOSPITAL, Status.NORMAL, "2024-01-01", None),
    (HOSPITAL, Status.SUSPENDED, "2026-03-01", "2026-05-31"),
)
BASE_INSTITUTION = institution((Status.NORMAL, "2020-01-01", None))


def evidence(
    staff_record: StaffRecord | None = BASE_STAFF,
    inst: InstitutionRecord | None = BASE_INSTITUTION,
    departments: DepartmentActions | None = None,
    institution_code: str = HOSPITAL,
    code: str = DOCTOR,
) -> Evidence:
    return Evidence(institution_code, inst, departments, {code: staff_record})


def mk_line(
    day: str = "2026-02-01",
    code: str = DOCTOR,
    dept: str = "A03",
    item: str = "XA01",
    emergency: bool = False,
) -> Line:
    return Line(code, dept, item, d(day), emergency)


STOP_A05 = DepartmentActions({"A05": (Period(Status.SUSPENDED, d("2026-03-01"), d("2026-06-30")),)})

# (case id, article checked, line, evidence, expected verdict, expected reason)
CASES = [
    # Rule 5: judged on the service day; both sides of every suspension boundary (001 §五(一)).
    ("day-before-suspension", "001 §五(二)", mk_line("2026-02-28"), evidence(), Verdict.ACCEPT, Reason.OK),
    (
        "first-day-of-suspension",
        "001 §五(二)",
        mk_line("2026-03-01"),
        evidence(),
        Verdict.REJECT,
        Reason.STAFF_SUSPENDED,
    ),
    (
        "last-day-of-suspension",
        "001 §五(二)",
        mk_line("2026-05-31"),
        evidence(),
        Verdict.REJECT,
        Reason.STAFF_SUSPENDED,
    ),
    (
        "day-after-suspension",
        "001 §五(二) 期满后自动恢复",
        mk_line("2026-06-01"),
        evidence(),
        Verdict.ACCEPT,
        Reason.OK,
    ),
    # Rule 1: no agreement, no payment.
    (
        "before-agreement-began",
        "000 §11",
        mk_line("2023-12-31"),
        evidence(),
        Verdict.REJECT,
        Reason.STAFF_NOT_AT_INSTITUTION,
    ),
    ("agreement-first-day", "000 §11", mk_line("2024-01-01"), evidence(), Verdict.ACCEPT, Reason.OK),
    (
        "unknown-code",
        "000 §15",
        mk_line(),
        evidence(staff_record=None),
        Verdict.REJECT,
        Reason.STAFF_UNREGISTERED,
    ),
    (
        "record-without-periods",
        "000 §15",
        mk_line(),
        evidence(staff_record=StaffRecord(())),
        Verdict.REJECT,
        Reason.STAFF_UNREGISTERED,
    ),
    (
        "agreement-expired",
        "000 §11",
        mk_line("2026-01-01"),
        evidence(staff((HOSPITAL, Status.NORMAL, "2024-01-01", "2025-12-31"))),
        Verdict.REJECT,
        Reason.STAFF_NOT_AT_INSTITUTION,
    ),
    (
        "agreement-last-day-inclusive",
        "000 §11",
        mk_line("2025-12-31"),
        evidence(staff((HOSPITAL, Status.NORMAL, "2024-01-01", "2025-12-31"))),
        Verdict.ACCEPT,
        Reason.OK,
    ),
    # Multi-site practice: each site signs separately (000 §7, 001 §三(二)).
    (
        "only-at-another-site",
        "000 §7",
        mk_line(),
        evidence(staff((OTHER_HOSPITAL, Status.NORMAL, "2024-01-01", None))),
        Verdict.REJECT,
        Reason.STAFF_NOT_AT_INSTITUTION,
    ),
    (
        "multi-site-here-and-there",
        "000 §7",
        mk_line(),
        evidence(
            staff(
                (OTHER_HOSPITAL, Status.NORMAL, "2024-01-01", None),
                (HOSPITAL, Status.NORMAL, "2025-01-01", None),
            )
        ),
        Verdict.ACCEPT,
        Reason.OK,
    ),
    (
        "suspended-elsewhere-normal-here",
        "000 §7",
        mk_line("2026-04-01"),
        evidence(
            staff(
                (OTHER_HOSPITAL, Status.SUSPENDED, "2026-03-01", "2026-05-31"),
                (HOSPITAL, Status.NORMAL, "2024-01-01", None),
            )
        ),
        Verdict.ACCEPT,
        Reason.OK,
    ),
    # Rule 2 and precedence 注销 > 解除 > 封锁 > 中止 > 正常 for overlapping periods.
    (
        "terminated",
        "001 §五(二)",
        mk_line(),
        evidence(staff((HOSPITAL, Status.TERMINATED, "2026-01-01", None))),
        Verdict.REJECT,
        Reason.STAFF_TERMINATED,
    ),
    (
        "locked",
        "000 §8",
        mk_line(),
        evidence(staff((HOSPITAL, Status.LOCKED, "2026-01-01", None))),
        Verdict.REJECT,
        Reason.STAFF_LOCKED,
    ),
    (
        "cancelled",
        "000 §14",
        mk_line(),
        evidence(staff((HOSPITAL, Status.CANCELLED, "2026-01-01", None))),
        Verdict.REJECT,
        Reason.STAFF_CODE_CANCELLED,
    ),
    (
        "cancelled-beats-terminated",
        "000 §14",
        mk_line(),
        evidence(
            staff(
                (HOSPITAL, Status.TERMINATED, "2025-01-01", None),
                (HOSPITAL, Status.CANCELLED, "2026-01-01", None),
            )
        ),
        Verdict.REJECT,
        Reason.STAFF_CODE_CANCELLED,
    ),
    (
        "terminated-beats-locked",
        "001 §五(二)",
        mk_line(),
        evidence(
            staff(
                (HOSPITAL, Status.LOCKED, "2025-01-01", None),
                (HOSPITAL, Status.TERMINATED, "2026-01-01", None),
            )
        ),
        Verdict.REJECT,
        Reason.STAFF_TERMINATED,
    ),
    (
        "locked-beats-suspended",
        "000 §8",
        mk_line("2026-04-01"),
        evidence(
            staff(
                (HOSPITAL, Status.SUSPENDED, "2026-03-01", "2026-05-31"),
                (HOSPITAL, Status.LOCKED, "2026-04-01", None),
            )
        ),
        Verdict.REJECT,
        Reason.STAFF_LOCKED,
    ),
    (
        "suspended-beats-normal",
        "001 §五(二)",
        mk_line("2026-04-01"),
        evidence(),
        Verdict.REJECT,
        Reason.STAFF_SUSPENDED,
    ),
    (
        "code-cancelled-at-another-site-applies-here",
        "000 §14 注销编码",
        mk_line(),
        evidence(
            staff(
                (OTHER_HOSPITAL, Status.CANCELLED, "2026-01-01", None),
                (HOSPITAL, Status.NORMAL, "2024-01-01", None),
            )
        ),
        Verdict.REJECT,
        Reason.STAFF_CODE_CANCELLED,
    ),
    # Rule 4: the institution carries its staff (000 §15; 002 §17–19).
    (
        "institution-unknown",
        "002 §38",
        mk_line(),
        evidence(inst=None),
        Verdict.REJECT,
        Reason.INSTITUTION_UNREGISTERED,
    ),
    (
        "institution-agreement-over",
        "002 §38",
        mk_line(),
        evidence(inst=institution((Status.NORMAL, "2020-01-01", "2025-12-31"))),
        Verdict.REJECT,
        Reason.INSTITUTION_UNREGISTERED,
    ),
    (
        "institution-suspended-cascades",
        "000 §15; 002 §17",
        mk_line("2026-02-14"),
        evidence(
            inst=institution(
                (Status.NORMAL, "2020-01-01", None), (Status.SUSPENDED, "2026-01-15", "2026-02-14")
            )
        ),
        Verdict.REJECT,
        Reason.INSTITUTION_SUSPENDED,
    ),
    (
        "institution-suspension-over",
        "002 §17",
        mk_line("2026-02-15"),
        evidence(
            inst=institution(
                (Status.NORMAL, "2020-01-01", None), (Status.SUSPENDED, "2026-01-15", "2026-02-14")
            )
        ),
        Verdict.ACCEPT,
        Reason.OK,
    ),
    (
        "institution-terminated-cascades",
        "000 §15; 002 §18",
        mk_line(),
        evidence(
            inst=institution(
                (Status.NORMAL, "2020-01-01", "2025-12-31"), (Status.TERMINATED, "2026-01-01", None)
            )
        ),
        Verdict.REJECT,
        Reason.INSTITUTION_TERMINATED,
    ),
    (
        "institution-beats-staff",
        "contract order",
        mk_line("2026-04-01"),
        evidence(
            inst=institution((Status.NORMAL, "2020-01-01", None), (Status.SUSPENDED, "2026-03-15", None))
        ),
        Verdict.REJECT,
        Reason.INSTITUTION_SUSPENDED,
    ),
    # Department stop (002 §20).
    (
        "department-stopped",
        "002 §20",
        mk_line("2026-04-01", dept="A05"),
        evidence(
            departments=DepartmentActions(
                {"A05": (Period(Status.SUSPENDED, d("2026-03-01"), d("2026-06-30")),)}
            )
        ),
        Verdict.REJECT,
        Reason.DEPARTMENT_SUSPENDED,
    ),
    (
        "other-department-unaffected",
        "002 §20",
        mk_line("2026-02-01", dept="A03"),
        evidence(
            departments=DepartmentActions({"A05": (Period(Status.SUSPENDED, d("2026-01-01"), OPEN_END),)})
        ),
        Verdict.ACCEPT,
        Reason.OK,
    ),
    (
        "department-stop-over",
        "002 §20",
        mk_line("2026-07-01", dept="A05"),
        evidence(
            departments=DepartmentActions(
                {"A05": (Period(Status.SUSPENDED, d("2026-03-01"), d("2026-06-30")),)}
            )
        ),
        Verdict.ACCEPT,
        Reason.OK,
    ),
    # A line without a department code where a department is stopped (002 §20).
    (
        "department-code-missing-under-a-stop",
        "002 §20",
        mk_line("2026-04-01", dept=""),
        evidence(departments=STOP_A05),
        Verdict.REJECT,
        Reason.DEPARTMENT_CODE_MISSING,
    ),
    (
        "department-code-missing-before-the-stop",
        "002 §20",
        mk_line("2026-02-28", dept=""),
        evidence(departments=STOP_A05),
        Verdict.ACCEPT,
        Reason.OK,
    ),
    (
        "department-code-missing-after-the-stop",
        "002 §20",
        mk_line("2026-07-01", dept=""),
        evidence(departments=STOP_A05),
        Verdict.ACCEPT,
        Reason.OK,
    ),
    (
        "department-code-missing-where-nothing-is-stopped",
        "002 §20",
        mk_line("2026-02-01", dept=""),
        evidence(departments=DepartmentActions({"A05": (Period(Status.NORMAL, d("2026-03-01"), OPEN_END),)})),
        Verdict.ACCEPT,
        Reason.OK,
    ),
    (
        "institution-beats-department-code-missing",
        "contract order",
        mk_line("2026-04-01", dept=""),
        evidence(
            inst=institution((Status.NORMAL, "2020-01-01", None), (Status.SUSPENDED, "2026-03-15", None)),
            departments=STOP_A05,
        ),
        Verdict.REJECT,
        Reason.INSTITUTION_SUSPENDED,
    ),
    (
        "department-code-missing-beats-staff",
        "contract order",
        mk_line("2026-04-01", dept="", code="D330902009999"),
        evidence(departments=STOP_A05, staff_record=None, code="D330902009999"),
        Verdict.REJECT,
        Reason.DEPARTMENT_CODE_MISSING,
    ),
    # Rule 6: malformed input gets a clear reason (000 §11; 004 §60).
    (
        "item-code-invisible",
        "004 §60",
        mk_line(item="\u200b\u2060\ufeff"),
        evidence(),
        Verdict.REJECT,
        Reason.ITEM_CODE_MISSING,
    ),
    (
        "item-code-control",
        "004 §60",
        mk_line(item="\x00\x1f"),
        evidence(),
        Verdict.REJECT,
        Reason.ITEM_CODE_MISSING,
    ),
    (
        "staff-code-full-width-digits",
        "000 §11",
        mk_line(code="D３３０９０２００１２３４"),
        evidence(code="D３３０９０２００１２３４"),
        Verdict.REJECT,
        Reason.STAFF_CODE_MALFORMED,
    ),
    (
        "staff-code-arabic-indic-digits",
        "000 §11",
        mk_line(code="D٣٣٠٩٠٢٠٠١٢٣٤"),
        evidence(code="D٣٣٠٩٠٢٠٠١٢٣٤"),
        Verdict.REJECT,
        Reason.STAFF_CODE_MALFORMED,
    ),
    ("item-code-missing", "004 §60", mk_line(item=""), evidence(), Verdict.REJECT, Reason.ITEM_CODE_MISSING),
    ("item-code-blank", "004 §60", mk_line(item="   "), evidence(), Verdict.REJECT, Reason.ITEM_CODE_MISSING),
    (
        "staff-code-missing",
        "000 §11",
        mk_line(code=""),
        evidence(),
        Verdict.REJECT,
        Reason.STAFF_CODE_MISSING,
    ),
    (
        "staff-code-too-short",
        "000 §11",
        mk_line(code="D33090200123"),
        evidence(),
        Verdict.REJECT,
        Reason.STAFF_CODE_MALFORMED,
    ),
    (
        "staff-code-bad-prefix",
        "000 §11",
        mk_line(code="X330902001234"),
        evidence(),
        Verdict.REJECT,
        Reason.STAFF_CODE_MALFORMED,
    ),
    (
        "staff-code-lowercase",
        "000 §11",
        mk_line(code="d330902001234"),
        evidence(),
        Verdict.REJECT,
        Reason.STAFF_CODE_MALFORMED,
    ),
    (
        "item-missing-beats-code-missing",
        "contract order",
        mk_line(code="", item=""),
        evidence(),
        Verdict.REJECT,
        Reason.ITEM_CODE_MISSING,
    ),
    (
        "code-missing-beats-institution",
        "contract order",
        mk_line(code=""),
        evidence(inst=None),
        Verdict.REJECT,
        Reason.STAFF_CODE_MISSING,
    ),
]


@pytest.mark.parametrize(
    ("article", "line", "ev", "verdict", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_rule_table(article: str, line: Line, ev: Evidence, verdict: Verdict, reason: Reason) -> None:
    decision = decide(line, ev, CONFIG)
    assert (decision.verdict, decision.reason) == (verdict, reason), article
    if verdict is Verdict.REJECT:
        spec = RULE_BY_REASON[reason]
        assert decision.rule == spec.article
        assert decision.detail and "{" not in decision.detail
    else:
        assert decision.detail == "" and decision.rule == ""


REJECTING_CASES = [case for case in CASES if case[4] is Verdict.REJECT]


@pytest.mark.parametrize(
    ("line", "ev", "reason"),
    [pytest.param(case[2], case[3], case[5], id=case[0]) for case in REJECTING_CASES],
)
def test_emergency_overrides_every_rejection_but_uncoded_items(
    line: Line, ev: Evidence, reason: Reason
) -> None:
    """000 §15 急救除外, 001 §五(二) 急诊、抢救除外, 002 §38; never an uncoded item (004 §60)."""
    emergency = Line(line.staff_code, line.department_code, line.item_code, line.service_day, True)
    decision = decide(emergency, ev, CONFIG)
    if reason is Reason.ITEM_CODE_MISSING:
        assert decision.verdict is Verdict.REJECT
    else:
        assert decision.verdict is Verdict.ACCEPT_EMERGENCY
        assert decision.rule == RULE_BY_REASON[reason].emergency_article
    assert decision.reason is reason  # the overridden rule stays visible for the audit


def test_emergency_line_with_nothing_wrong_is_a_plain_accept() -> None:
    decision = decide(mk_line(emergency=True), evidence(), CONFIG)
    assert (decision.verdict, decision.reason) == (Verdict.ACCEPT, Reason.OK)


def test_check_order_is_the_contracts() -> None:
    assert [r.name for r in CHECK_ORDER] == [
        "ITEM_CODE_MISSING", "STAFF_CODE_MISSING", "STAFF_CODE_MALFORMED", "INSTITUTION_UNREGISTERED",
        "INSTITUTION_TERMINATED", "INSTITUTION_SUSPENDED", "DEPARTMENT_CODE_MISSING", "DEPARTMENT_SUSPENDED",
        "STAFF_UNREGISTERED", "STAFF_NOT_AT_INSTITUTION", "STAFF_CODE_CANCELLED", "STAFF_TERMINATED",
        "STAFF_LOCKED", "STAFF_SUSPENDED",
    ]  # fmt: skip


def test_every_rejection_reason_has_an_article_and_a_detail() -> None:
    for reason in CHECK_ORDER:
        spec = RULE_BY_REASON[reason]
        assert "〔" in spec.article or "协议" in spec.article or "通知" in spec.article
        assert spec.detail.endswith("。")


def test_cancellation_can_be_confined_to_its_institution() -> None:
    ev = evidence(
        staff(
            (OTHER_HOSPITAL, Status.CANCELLED, "2026-01-01", None),
            (HOSPITAL, Status.NORMAL, "2024-01-01", None),
        )
    )
    local = RulesConfig(national_cancellation=False)
    assert decide(mk_line(), ev, local).reason is Reason.OK
    assert decide(mk_line(), ev, CONFIG).reason is Reason.STAFF_CODE_CANCELLED


def test_code_shapes_are_configurable_per_region() -> None:
    regional = RulesConfig(shapes=CodeShapes.from_patterns(staff=r"Y\d{6}"))
    ev = evidence(staff_record=None, code="Y123456")
    assert decide(mk_line(code="Y123456"), ev, regional).reason is Reason.STAFF_UNREGISTERED
    assert decide(mk_line(code=DOCTOR), evidence(), regional).reason is Reason.STAFF_CODE_MALFORMED


@pytest.mark.parametrize(
    ("encounter", "med_type", "expected"),
    [
        (2, "11", True),
        (1, "13", True),
        (3, "24", True),
        (1, " 13 ", True),
        (1, "11", False),
        (3, "21", False),
    ],
)
def test_emergency_request(encounter: int, med_type: str, expected: bool) -> None:
    assert is_emergency_request(encounter, med_type, CONFIG) is expected


def test_emergency_med_types_are_configurable() -> None:
    assert is_emergency_request(1, "9901", RulesConfig(emergency_med_types=frozenset({"9901"})))
    assert not is_emergency_request(1, "13", RulesConfig(emergency_med_types=frozenset({"9901"})))


def test_decide_all_keeps_order_and_reuses_decisions() -> None:
    lines = [mk_line("2026-02-28"), mk_line("2026-03-01"), mk_line("2026-02-28"), mk_line(code="")]
    decisions = decide_all(lines, evidence(), CONFIG)
    assert [x.reason for x in decisions] == [
        Reason.OK,
        Reason.STAFF_SUSPENDED,
        Reason.OK,
        Reason.STAFF_CODE_MISSING,
    ]
    assert decisions[0] is decisions[2]


def test_distinct_well_formed_codes_are_fetched_once() -> None:
    lines = [mk_line(code=c) for c in (DOCTOR, "", "bad", DOCTOR, "N330902000008")]
    assert staff_codes_to_fetch(lines, CONFIG) == [DOCTOR, "N330902000008"]


def test_detail_names_the_period() -> None:
    decision = decide(mk_line("2026-04-01"), evidence(), CONFIG)
    assert "2026-03-01" in decision.detail and "2026-05-31" in decision.detail and DOCTOR in decision.detail
