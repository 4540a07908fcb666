"""Each profile knob, case by case, with the article it rests on; then what each shipped profile
answers for the same situations and which article its verdict cites.

Evidence is built directly, as in test_rules: doctor D330902001234 at H33090200017 (and at
H33090300021 when multi-site); P33090200005 is a retail pharmacy.
"""

from __future__ import annotations

import dataclasses

import pytest

from gateway.codes import DEFAULT_SHAPES
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.policy import RULE_BY_REASON, Reason, Verdict
from gateway.profiles.bans import add_years, banned_stretches
from gateway.profiles.loading import SHIPPED, load
from gateway.records import DepartmentActions, Period, StaffRecord, Status
from gateway.rules import Evidence, Line, RulesConfig, decide, decide_all, is_emergency_request
from gateway.settlement import parse_request
from tests.exports import DOCTOR, HOSPITAL, OTHER_HOSPITAL, line, request
from tests.unit.test_rules import BASE_INSTITUTION, d, evidence, institution, staff

PHARMACY = "P33090200005"
PHARMACIST = "HY330902000011"


def region(name: str) -> RulesConfig:
    return load(name).rules_config(DEFAULT_SHAPES)


def at(
    day: str, *, code: str = DOCTOR, dept: str = "A03", emergency: bool = False, prescriber: str = ""
) -> Line:
    return Line(code, dept, "XA01", d(day), emergency, "1", 100, prescriber)


MULTI_SITE = staff(
    (HOSPITAL, Status.NORMAL, "2024-01-01", None),
    (OTHER_HOSPITAL, Status.NORMAL, "2024-01-01", None),
    (OTHER_HOSPITAL, Status.SUSPENDED, "2026-03-01", "2026-05-31"),
)


def other_site(status: Status) -> StaffRecord:
    return staff(
        (HOSPITAL, Status.NORMAL, "2024-01-01", None),
        (OTHER_HOSPITAL, Status.NORMAL, "2024-01-01", None),
        (OTHER_HOSPITAL, status, "2026-03-01", "2026-05-31"),
    )


SUSPENDED_THEN_RESTORED = staff(
    (HOSPITAL, Status.NORMAL, "2024-01-01", "2026-02-28"),
    (HOSPITAL, Status.SUSPENDED, "2026-03-01", "2026-05-31"),
    (HOSPITAL, Status.NORMAL, "2026-06-10", None),
)
SUSPENDED_NOT_RESTORED = staff(
    (HOSPITAL, Status.NORMAL, "2024-01-01", None),
    (HOSPITAL, Status.SUSPENDED, "2026-03-01", "2026-05-31"),
)
# 解除 for four months, then a new 正常 agreement at another hospital.
REHIRED_AFTER_TERMINATION = staff(
    (HOSPITAL, Status.TERMINATED, "2025-06-01", "2025-09-30"),
    (OTHER_HOSPITAL, Status.NORMAL, "2026-03-01", None),
)
REREGISTERED_AFTER_CANCELLATION = staff(
    (HOSPITAL, Status.CANCELLED, "2022-01-01", "2022-12-31"),
    (HOSPITAL, Status.NORMAL, "2025-01-01", None),
)
PRESCRIBER = staff(
    (HOSPITAL, Status.NORMAL, "2024-01-01", None),
    (HOSPITAL, Status.SUSPENDED, "2026-03-01", "2026-05-31"),
)
IN_GOOD_STANDING = staff((HOSPITAL, Status.NORMAL, "2024-01-01", None))
A_PHARMACY = institution((Status.NORMAL, "2020-01-01", None))
STOPPED_A05 = {"A05": (Period(Status.SUSPENDED, d("2026-03-01"), d("2026-06-30")),)}
SUSPENDED_HOSPITAL = institution(
    (Status.NORMAL, "2020-01-01", None), (Status.SUSPENDED, "2026-03-01", "2026-05-31")
)
TERMINATED_THEN_REDESIGNATED = institution(
    (Status.TERMINATED, "2024-01-01", "2024-12-31"), (Status.NORMAL, "2025-06-01", None)
)

DEFAULT = RulesConfig()
BANS = RulesConfig(enforce_bans=True, staff_ban_years={Status.TERMINATED: 1, Status.CANCELLED: 5},
                   institution_ban_years={Status.TERMINATED: 3})  # fmt: skip


def pharmacy(record: StaffRecord, code: str = DOCTOR) -> Evidence:
    return Evidence(PHARMACY, A_PHARMACY, None, {code: record})


# (id, article, config, line, evidence, verdict, reason)
KNOBS = [
    # -- sites: 000 §7 keeps a multi-site doctor's sites apart; 001 §四 adds points across them.
    ("suspension-own-site", "000 §7", DEFAULT, at("2026-04-01"), evidence(MULTI_SITE), Verdict.ACCEPT, Reason.OK),
    ("suspension-all-sites", "001 §四, §五(一)", RulesConfig(cross_site_statuses=frozenset({Status.SUSPENDED})),
     at("2026-04-01"), evidence(MULTI_SITE), Verdict.REJECT, Reason.STAFF_SUSPENDED),
    ("termination-own-site", "000 §7", DEFAULT, at("2026-04-01"), evidence(other_site(Status.TERMINATED)),
     Verdict.ACCEPT, Reason.OK),
    ("termination-all-sites", "001 §四, §五(一)", RulesConfig(cross_site_statuses=frozenset({Status.TERMINATED})),
     at("2026-04-01"), evidence(other_site(Status.TERMINATED)), Verdict.REJECT, Reason.STAFF_TERMINATED),
    ("lock-own-site", "000 §8 (the site that ended the employment)", DEFAULT, at("2026-04-01"),
     evidence(other_site(Status.LOCKED)), Verdict.ACCEPT, Reason.OK),
    ("lock-all-sites", "profile choice", RulesConfig(cross_site_statuses=frozenset({Status.LOCKED})),
     at("2026-04-01"), evidence(other_site(Status.LOCKED)), Verdict.REJECT, Reason.STAFF_LOCKED),
    ("all-sites-but-after-the-period", "001 §五(二) 期满后自动恢复",
     RulesConfig(cross_site_statuses=frozenset({Status.SUSPENDED})), at("2026-06-01"), evidence(MULTI_SITE),
     Verdict.ACCEPT, Reason.OK),
    # -- when a 中止 lifts: 001 §五(二) at its end; 000 §14 only once restored on application.
    ("lifts-at-end-date", "001 §五(二)", DEFAULT, at("2026-06-15"), evidence(SUSPENDED_NOT_RESTORED),
     Verdict.ACCEPT, Reason.OK),
    ("not-restored-stays-suspended", "000 §14", RulesConfig(suspension_lifts_on_restoration=True),
     at("2026-06-15"), evidence(SUSPENDED_NOT_RESTORED), Verdict.REJECT, Reason.STAFF_SUSPENDED),
    ("before-restoration-record", "000 §14", RulesConfig(suspension_lifts_on_restoration=True),
     at("2026-06-09"), evidence(SUSPENDED_THEN_RESTORED), Verdict.REJECT, Reason.STAFF_SUSPENDED),
    ("from-restoration-record", "000 §14", RulesConfig(suspension_lifts_on_restoration=True),
     at("2026-06-10"), evidence(SUSPENDED_THEN_RESTORED), Verdict.ACCEPT, Reason.OK),
    ("gap-before-restoration-at-end-date", "001 §五(二)", DEFAULT, at("2026-06-05"),
     evidence(SUSPENDED_THEN_RESTORED), Verdict.REJECT, Reason.STAFF_NOT_AT_INSTITUTION),
    # -- department codes: 004 §60 keeps 科室 codes like item codes.
    ("department-code-optional", "default", DEFAULT, at("2026-02-01", dept=""), evidence(),
     Verdict.ACCEPT, Reason.OK),
    ("department-code-required", "004 §60", RulesConfig(department_code_required=True),
     at("2026-02-01", dept=""), evidence(), Verdict.REJECT, Reason.DEPARTMENT_CODE_MISSING),
    ("department-code-required-emergency", "002 §38 (as for DEPARTMENT_SUSPENDED)",
     RulesConfig(department_code_required=True), at("2026-02-01", dept="", emergency=True), evidence(),
     Verdict.ACCEPT_EMERGENCY, Reason.DEPARTMENT_CODE_MISSING),
    # -- bans on new agreements: 000 §14 (1 year after 解除, 5 after 注销), 002 §12 / 004 §65.
    ("rehired-no-ban", "default: reported, paid", DEFAULT, at("2026-04-01"),
     Evidence(OTHER_HOSPITAL, BASE_INSTITUTION, None, {DOCTOR: REHIRED_AFTER_TERMINATION}), Verdict.ACCEPT, Reason.OK),
    ("rehired-inside-ban", "000 §14 一年内不再签订", BANS, at("2026-04-01"),
     Evidence(OTHER_HOSPITAL, BASE_INSTITUTION, None, {DOCTOR: REHIRED_AFTER_TERMINATION}),
     Verdict.REJECT, Reason.STAFF_TERMINATED),
    ("rehired-last-banned-day", "000 §14", BANS, at("2026-05-31"),
     Evidence(OTHER_HOSPITAL, BASE_INSTITUTION, None, {DOCTOR: REHIRED_AFTER_TERMINATION}),
     Verdict.REJECT, Reason.STAFF_TERMINATED),
    ("rehired-after-ban", "000 §14", BANS, at("2026-06-01"),
     Evidence(OTHER_HOSPITAL, BASE_INSTITUTION, None, {DOCTOR: REHIRED_AFTER_TERMINATION}), Verdict.ACCEPT, Reason.OK),
    ("reregistered-inside-5-years", "000 §14 五年内不得签订", BANS, at("2026-04-01"),
     evidence(REREGISTERED_AFTER_CANCELLATION), Verdict.REJECT, Reason.STAFF_CODE_CANCELLED),
    ("reregistered-after-5-years", "000 §14", BANS, at("2027-01-01"),
     evidence(REREGISTERED_AFTER_CANCELLATION), Verdict.ACCEPT, Reason.OK),
    ("redesignated-no-ban", "default", DEFAULT, at("2026-04-01"), evidence(IN_GOOD_STANDING, inst=TERMINATED_THEN_REDESIGNATED),
     Verdict.ACCEPT, Reason.OK),
    ("redesignated-inside-ban", "002 §12(五), 004 §65", BANS, at("2026-04-01"),
     evidence(IN_GOOD_STANDING, inst=TERMINATED_THEN_REDESIGNATED), Verdict.REJECT, Reason.INSTITUTION_TERMINATED),
    ("redesignated-after-ban", "002 §12(五)", BANS, at("2027-01-01"), evidence(IN_GOOD_STANDING, inst=TERMINATED_THEN_REDESIGNATED),
     Verdict.ACCEPT, Reason.OK),
    # -- external prescriptions at a retail pharmacy: 000 §9(5), §11.
    ("pharmacy-today", "default: judged at the pharmacy", DEFAULT, at("2026-04-01", prescriber=HOSPITAL),
     pharmacy(PRESCRIBER), Verdict.REJECT, Reason.STAFF_NOT_AT_INSTITUTION),
    ("prescriber-suspended", "000 §11", RulesConfig(external_prescription_prefix="P"),
     at("2026-04-01", prescriber=HOSPITAL), pharmacy(PRESCRIBER), Verdict.REJECT, Reason.STAFF_SUSPENDED),
    ("prescriber-in-good-standing", "000 §9(5)", RulesConfig(external_prescription_prefix="P"),
     at("2026-02-01", prescriber=HOSPITAL), pharmacy(PRESCRIBER), Verdict.ACCEPT, Reason.OK),
    ("prescriber-not-at-named-institution", "000 §11", RulesConfig(external_prescription_prefix="P"),
     at("2026-02-01", prescriber=OTHER_HOSPITAL), pharmacy(PRESCRIBER), Verdict.REJECT,
     Reason.STAFF_NOT_AT_INSTITUTION),
    ("prescriber-institution-not-given", "000 §11: judged at every site", RulesConfig(external_prescription_prefix="P"),
     at("2026-04-01"), pharmacy(PRESCRIBER), Verdict.REJECT, Reason.STAFF_SUSPENDED),
    ("prescriber-institution-not-given-good", "000 §9(5)", RulesConfig(external_prescription_prefix="P"),
     at("2026-02-01"), pharmacy(PRESCRIBER), Verdict.ACCEPT, Reason.OK),
    ("pharmacist-own-code", "001 §一(一): a pharmacy's own 药师", RulesConfig(external_prescription_prefix="P"),
     at("2026-04-01", code=PHARMACIST),
     pharmacy(staff((PHARMACY, Status.NORMAL, "2024-01-01", None), (HOSPITAL, Status.SUSPENDED, "2026-03-01", None)),
              PHARMACIST), Verdict.ACCEPT, Reason.OK),
    ("hospital-line-with-prescriber-ignored", "000 §11 (only at pharmacies)", RulesConfig(external_prescription_prefix="P"),
     at("2026-02-01", prescriber=OTHER_HOSPITAL), evidence(PRESCRIBER), Verdict.ACCEPT, Reason.OK),
]  # fmt: skip


@pytest.mark.parametrize(
    ("article", "config", "line", "ev", "verdict", "reason"), [pytest.param(*k[1:], id=k[0]) for k in KNOBS]
)
def test_knob(
    article: str, config: RulesConfig, line: Line, ev: Evidence, verdict: Verdict, reason: Reason
) -> None:
    decision = decide(line, ev, config)
    assert (decision.verdict, decision.reason) == (verdict, reason), article
    assert decide_all([line], ev, config) == [decision]


EMERGENCY = [
    # (id, article, reason, evidence, line): paid by default, rejected under 佛山
    ("institution-suspended", "002 §17 names no exemption", Reason.INSTITUTION_SUSPENDED,
     evidence(inst=SUSPENDED_HOSPITAL), at("2026-04-01", emergency=True)),
    ("department-suspended", "002 §20 names no exemption", Reason.DEPARTMENT_SUSPENDED,
     evidence(departments=DepartmentActions(STOPPED_A05)),
     at("2026-04-01", dept="A05", emergency=True)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("article", "reason", "ev", "line"), [pytest.param(*e[1:], id=e[0]) for e in EMERGENCY]
)
def test_emergency_overrides_are_the_profiles(article: str, reason: Reason, ev: Evidence, line: Line) -> None:
    assert decide(line, ev, DEFAULT).verdict is Verdict.ACCEPT_EMERGENCY
    foshan = decide(line, ev, region("foshan"))
    assert (foshan.verdict, foshan.reason) == (Verdict.REJECT, reason), article
    assert foshan.rule == RULE_BY_REASON[reason].article  # the 佛山 article itself


def test_a_non_designated_institution_is_still_paid_in_an_emergency_under_foshan() -> None:
    """002 §38: 除急诊和抢救外……在非定点医疗机构就医发生的费用……不予支付."""
    decision = decide(at("2026-04-01", emergency=True), evidence(inst=None), region("foshan"))
    assert decision.verdict is Verdict.ACCEPT_EMERGENCY
    assert decision.rule == "佛医保〔2021〕93号 第三十八条（急诊和抢救除外）"


@pytest.mark.parametrize(
    ("profile", "med_type", "flagged", "emergency"),
    [
        ("default", "24", False, True),  # 急诊转住院 covers the whole stay
        ("nantong", "24", False, False),  # 004 第二十二条: only the 留观 part, flagged by HIS
        ("nantong", "24", True, True),
        ("nantong", "13", False, True),
    ],
)
def test_emergency_admission_covers_the_stay_or_only_its_emergency_part(
    profile: str, med_type: str, flagged: bool, emergency: bool
) -> None:
    config = region(profile)
    parsed = parse_request(
        request(line("1", emergency=flagged), encounter=pb.INPATIENT, med_type=med_type), config, 10
    )
    assert parsed.lines[0].emergency is emergency
    assert is_emergency_request(pb.INPATIENT, med_type, config) is (emergency and not flagged)


def test_the_prescribing_institution_is_read_from_the_line() -> None:
    msg = line("1")
    msg.prescribing_institution_code = f" {HOSPITAL} "
    pharmacies = RulesConfig(external_prescription_prefix="P")
    parsed = parse_request(request(msg, institution_code=PHARMACY), pharmacies, 10)
    assert parsed.lines[0].prescribing_institution == HOSPITAL
    # Where the profile does not read external prescriptions the field changes nothing.
    assert (
        parse_request(request(msg, institution_code=PHARMACY), DEFAULT, 10).lines[0].prescribing_institution
        == ""
    )


def test_ban_years_are_calendar_years() -> None:
    assert add_years(d("2024-02-29"), 1) == d("2025-02-28")
    assert add_years(d("2025-06-01"), 1) == d("2026-06-01")
    stretches = banned_stretches(
        [Period(Status.TERMINATED, d("2025-06-01"), d("2025-09-30"))],
        [Period(Status.NORMAL, d("2026-03-01"), d("2026-12-31")), Period(Status.NORMAL, d("2024-01-01"), d("2025-05-31"))],
        {Status.TERMINATED: 1},
    )  # fmt: skip
    assert stretches == [Period(Status.TERMINATED, d("2026-03-01"), d("2026-05-31"))]


# -- the shipped profiles on the same situations -------------------------------------------

SITUATIONS = {
    # situation: (line, evidence)
    "suspended-now": (at("2026-04-01"), evidence(SUSPENDED_NOT_RESTORED)),
    "after-suspension-not-restored": (at("2026-06-15"), evidence(SUSPENDED_NOT_RESTORED)),
    "suspended-at-other-site": (at("2026-04-01"), evidence(MULTI_SITE)),
    "rehired-inside-ban": (
        at("2026-04-01"),
        Evidence(OTHER_HOSPITAL, BASE_INSTITUTION, None, {DOCTOR: REHIRED_AFTER_TERMINATION}),
    ),
    "no-department-code": (at("2026-02-01", dept=""), evidence()),
    "redesignated-inside-ban": (
        at("2026-04-01"),
        evidence(IN_GOOD_STANDING, inst=TERMINATED_THEN_REDESIGNATED),
    ),
    # Where 中止 reaches every site (济宁, national) the doctor is suspended at the pharmacy too,
    # as a 注销 elsewhere outranks "not at this institution" (contract order, strictest status).
    "suspended-prescriber-at-pharmacy": (at("2026-04-01", prescriber=HOSPITAL), pharmacy(PRESCRIBER)),
}
R = Reason
REGIONS = {
    #            suspended-now       after-not-restored   other-site           rehired-in-ban        no-dept                     redesignated            prescriber
    "default": (R.STAFF_SUSPENDED, R.OK, R.OK, R.OK, R.OK, R.OK, R.STAFF_NOT_AT_INSTITUTION),
    "zhoushan": (R.STAFF_SUSPENDED, R.STAFF_SUSPENDED, R.OK, R.STAFF_TERMINATED, R.OK, R.OK, R.STAFF_SUSPENDED),
    "jining": (R.STAFF_SUSPENDED, R.OK, R.STAFF_SUSPENDED, R.STAFF_TERMINATED, R.OK, R.OK, R.STAFF_SUSPENDED),
    "foshan": (R.STAFF_SUSPENDED, R.OK, R.OK, R.OK, R.OK, R.INSTITUTION_TERMINATED, R.STAFF_NOT_AT_INSTITUTION),
    "nantong": (R.STAFF_SUSPENDED, R.OK, R.OK, R.STAFF_TERMINATED, R.DEPARTMENT_CODE_MISSING,
                R.INSTITUTION_TERMINATED, R.STAFF_NOT_AT_INSTITUTION),
    "national-2024": (R.STAFF_SUSPENDED, R.OK, R.STAFF_SUSPENDED, R.STAFF_TERMINATED, R.OK, R.OK,
                      R.STAFF_SUSPENDED),
}  # fmt: skip


@pytest.mark.parametrize("profile", SHIPPED)
@pytest.mark.parametrize("situation", list(SITUATIONS))
def test_each_region_answers_as_its_documents_require(profile: str, situation: str) -> None:
    """The rows of REGIONS: 000 §7, §11, §14 (舟山); 001 §四, §五(二) (济宁); 002 §12 (佛山);
    004 §60, §65, §68 (南通); 医保发〔2024〕23号."""
    line, ev = SITUATIONS[situation]
    expected = REGIONS[profile][list(SITUATIONS).index(situation)]
    config = region(profile)
    decision = decide(line, ev, config)
    assert decision.reason is expected
    if expected is not Reason.OK:
        assert decision.verdict is Verdict.REJECT
        assert decision.rule == config.specs[expected].article
        assert decision.detail and "{" not in decision.detail


CITED = [
    # (profile, reason, the article its verdict cites)
    ("default", Reason.STAFF_SUSPENDED, "济宁市医疗保障局医保支付资格相关人员管理通知（2024） 五（二）"),
    ("zhoushan", Reason.STAFF_SUSPENDED, "舟医保发〔2022〕16号 第十五条"),
    ("zhoushan", Reason.INSTITUTION_SUSPENDED, "舟医保发〔2022〕16号 第十五条"),
    (
        "jining",
        Reason.STAFF_NOT_AT_INSTITUTION,
        "济宁市医疗保障局医保支付资格相关人员管理通知（2024） 三（二）",
    ),
    ("foshan", Reason.STAFF_SUSPENDED, "佛医保〔2021〕93号 第二十条"),
    ("nantong", Reason.STAFF_SUSPENDED, "南通市基本医疗保险定点医疗机构服务协议 第六十八条"),
    ("nantong", Reason.STAFF_UNREGISTERED, "南通市基本医疗保险定点医疗机构服务协议 第八条（一）"),
    ("nantong", Reason.INSTITUTION_TERMINATED, "南通市基本医疗保险定点医疗机构服务协议 第六十五条"),
    ("national-2024", Reason.STAFF_SUSPENDED, "医保发〔2024〕23号（暂停医保支付资格）"),
]


@pytest.mark.parametrize(("profile", "reason", "article"), CITED)
def test_a_verdict_cites_the_regions_own_article(profile: str, reason: Reason, article: str) -> None:
    assert region(profile).specs[reason].article == article


def test_an_emergency_line_cites_the_regions_exemption() -> None:
    """001 §五(二): "（急诊、抢救除外）"."""
    decision = decide(at("2026-04-01", emergency=True), evidence(SUSPENDED_NOT_RESTORED), region("jining"))
    assert decision.verdict is Verdict.ACCEPT_EMERGENCY
    assert decision.rule == "济宁市医疗保障局医保支付资格相关人员管理通知（2024） 五（二）（急诊、抢救除外）"


def test_a_profiles_own_detail_decides_which_verdicts_are_one_days_only() -> None:
    """A detail naming {date} makes its decision day-specific for decide_all's sharing."""
    spec = dataclasses.replace(RULE_BY_REASON[Reason.STAFF_SUSPENDED], detail="{code} 于 {date} 中止。")
    config = RulesConfig(specs={**RULE_BY_REASON, Reason.STAFF_SUSPENDED: spec})
    bill = [at("2026-04-01"), at("2026-04-02")]
    decisions = decide_all(bill, evidence(SUSPENDED_NOT_RESTORED), config)
    assert [x.detail for x in decisions] == [
        f"{DOCTOR} 于 2026-04-01 中止。",
        f"{DOCTOR} 于 2026-04-02 中止。",
    ]
