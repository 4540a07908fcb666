"""Decide each settlement line from the data: pure, no Redis, no gRPC, no clock.

The checks run in the contract's order and the first that applies is the line's reason
(``CHECKS`` below is that order, as data; a test holds it to the contract). Status is
judged on the line's CST service day, so an inpatient bill spanning a suspension's first
day is split correctly line by line. The emergency exemption (000 §15, 001 §五(二),
002 §38) then turns every rejection except an uncoded item into ``ACCEPT_EMERGENCY``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from gateway.codes import DEFAULT_SHAPES, CodeShapes, is_blank
from gateway.days import format_day
from gateway.policy import (
    EMERGENCY_DETAIL_PREFIX,
    EMERGENCY_DETAIL_SUFFIX,
    RULE_BY_REASON,
    Reason,
    Verdict,
)
from gateway.records import (
    DepartmentActions,
    InstitutionRecord,
    Period,
    StaffRecord,
    Status,
    strictest,
)

DEFAULT_EMERGENCY_MED_TYPES = frozenset({"13", "24"})
# settlement.v1.EncounterType.EMERGENCY
ENCOUNTER_EMERGENCY = 2


@dataclass(frozen=True, slots=True)
class RulesConfig:
    """The knobs regions differ on."""

    shapes: CodeShapes = DEFAULT_SHAPES
    emergency_med_types: frozenset[str] = DEFAULT_EMERGENCY_MED_TYPES
    # 注销 cancels the national code itself (000 §14), so by default a cancellation recorded
    # at any institution applies at all of them; False confines it to that institution.
    national_cancellation: bool = True


class Line(NamedTuple):
    """One settlement line as read from the request, once: what the rules need, then the id
    and amount the reply and the metrics need.

    A named tuple, not a frozen dataclass: a 3,000-line bill builds 3,000 of them per request,
    and a tuple is built several times faster (no ``object.__setattr__`` per field)."""

    staff_code: str
    department_code: str
    item_code: str
    service_day: int
    emergency: bool
    line_id: str = ""
    amount_fen: int = 0


@dataclass(frozen=True, slots=True)
class Evidence:
    """The data one request is judged on, all from one data version."""

    institution_code: str
    institution: InstitutionRecord | None
    departments: DepartmentActions | None
    staff: Mapping[str, StaffRecord | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: Reason
    detail: str
    rule: str


ACCEPTED = Decision(Verdict.ACCEPT, Reason.OK, "", "")

# A check returns the reason that applies (with the period behind it, for the detail) or None.
Finding = tuple[Reason, Period | None]
CheckFn = Callable[[Line, Evidence, RulesConfig], Finding | None]

INSTITUTION_STATUS_REASON: Mapping[Status, Reason | None] = {
    Status.NORMAL: None,
    Status.SUSPENDED: Reason.INSTITUTION_SUSPENDED,
    Status.LOCKED: Reason.INSTITUTION_SUSPENDED,
    Status.TERMINATED: Reason.INSTITUTION_TERMINATED,
    Status.CANCELLED: Reason.INSTITUTION_TERMINATED,
}

STAFF_STATUS_REASON: Mapping[Status, Reason | None] = {
    Status.NORMAL: None,
    Status.SUSPENDED: Reason.STAFF_SUSPENDED,
    Status.LOCKED: Reason.STAFF_LOCKED,
    Status.TERMINATED: Reason.STAFF_TERMINATED,
    Status.CANCELLED: Reason.STAFF_CODE_CANCELLED,
}


def _check_item(line: Line, ev: Evidence, cfg: RulesConfig) -> Finding | None:
    # A code of nothing but zero-width or control characters is as missing as an empty one.
    return (Reason.ITEM_CODE_MISSING, None) if is_blank(line.item_code) else None


def _check_staff_code(line: Line, ev: Evidence, cfg: RulesConfig) -> Finding | None:
    if not line.staff_code:
        return Reason.STAFF_CODE_MISSING, None
    if not cfg.shapes.is_staff_code(line.staff_code):
        return Reason.STAFF_CODE_MALFORMED, None
    return None


def _check_institution(line: Line, ev: Evidence, cfg: RulesConfig) -> Finding | None:
    # Unknown, or known but no period covers the day: not designated at that time.
    if ev.institution is None:
        return Reason.INSTITUTION_UNREGISTERED, None
    period = strictest(ev.institution.as_periods, line.service_day)
    if period is None:
        return Reason.INSTITUTION_UNREGISTERED, None
    reason = INSTITUTION_STATUS_REASON[period.status]
    return None if reason is None else (reason, period)


def _department_stop(departments: DepartmentActions, day: int) -> Period | None:
    """A department stop of the institution in force on ``day`` (the first, by department
    code), or None."""
    for code in sorted(departments.by_department):
        period = strictest(departments.by_department[code], day)
        if period is not None and period.status is not Status.NORMAL:
            return period
    return None


def _check_department(line: Line, ev: Evidence, cfg: RulesConfig) -> Finding | None:
    if ev.departments is None:
        return None
    if not line.department_code:
        # Where a department is stopped, a line must say which department it is from, or
        # leaving the code out would slip past the stop (002 §20).
        stop = _department_stop(ev.departments, line.service_day)
        return None if stop is None else (Reason.DEPARTMENT_CODE_MISSING, stop)
    periods = ev.departments.by_department.get(line.department_code)
    if not periods:
        return None
    period = strictest(periods, line.service_day)
    if period is None or period.status is Status.NORMAL:
        return None
    return Reason.DEPARTMENT_SUSPENDED, period


def _check_staff(line: Line, ev: Evidence, cfg: RulesConfig) -> Finding | None:
    record = ev.staff.get(line.staff_code)
    if record is None or not record.periods:
        return Reason.STAFF_UNREGISTERED, None
    here: Iterable[Period] = record.by_institution.get(ev.institution_code, ())
    if cfg.national_cancellation and record.cancellations:
        here = (*here, *record.cancellations)
    period = strictest(here, line.service_day)
    if period is None:
        return Reason.STAFF_NOT_AT_INSTITUTION, None
    reason = STAFF_STATUS_REASON[period.status]
    return None if reason is None else (reason, period)


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    run: CheckFn
    # The reasons this check can report, strictest first: together, the contract's order.
    reasons: tuple[Reason, ...]


CHECKS: tuple[Check, ...] = (
    Check("item", _check_item, (Reason.ITEM_CODE_MISSING,)),
    Check("staff_code", _check_staff_code, (Reason.STAFF_CODE_MISSING, Reason.STAFF_CODE_MALFORMED)),
    Check(
        "institution",
        _check_institution,
        (
            Reason.INSTITUTION_UNREGISTERED,
            Reason.INSTITUTION_TERMINATED,
            Reason.INSTITUTION_SUSPENDED,
        ),
    ),
    Check("department", _check_department, (Reason.DEPARTMENT_CODE_MISSING, Reason.DEPARTMENT_SUSPENDED)),
    Check(
        "staff",
        _check_staff,
        (
            Reason.STAFF_UNREGISTERED,
            Reason.STAFF_NOT_AT_INSTITUTION,
            Reason.STAFF_CODE_CANCELLED,
            Reason.STAFF_TERMINATED,
            Reason.STAFF_LOCKED,
            Reason.STAFF_SUSPENDED,
        ),
    ),
)

CHECK_ORDER: tuple[Reason, ...] = tuple(r for check in CHECKS for r in check.reasons)


def first_finding(line: Line, evidence: Evidence, config: RulesConfig) -> Finding | None:
    """The first reason, in contract order, that applies to ``line``; None if none does."""
    for check in CHECKS:
        finding = check.run(line, evidence, config)
        if finding is not None:
            return finding
    return None


def _detail(finding: Finding, line: Line, evidence: Evidence) -> str:
    reason, period = finding
    return RULE_BY_REASON[reason].detail.format(
        code=line.staff_code,
        institution=evidence.institution_code,
        department=line.department_code,
        date=format_day(line.service_day),
        start=format_day(period.start) if period else "",
        end=format_day(period.end) if period else "",
    )


def decide(line: Line, evidence: Evidence, config: RulesConfig) -> Decision:
    """The verdict for one line."""
    finding = first_finding(line, evidence, config)
    if finding is None:
        return ACCEPTED
    return decision_for(finding, line, evidence)


def decision_for(finding: Finding, line: Line, evidence: Evidence) -> Decision:
    """The verdict a finding leads to: rejected, or paid under the emergency exemption."""
    reason = finding[0]
    spec = RULE_BY_REASON[reason]
    detail = _detail(finding, line, evidence)
    if line.emergency and spec.emergency_article is not None:
        return Decision(
            Verdict.ACCEPT_EMERGENCY,
            reason,
            EMERGENCY_DETAIL_PREFIX + detail + EMERGENCY_DETAIL_SUFFIX,
            spec.emergency_article,
        )
    return Decision(Verdict.REJECT, reason, detail, spec.article)


def is_emergency_request(encounter: int, med_type: str, config: RulesConfig) -> bool:
    """Whole-request emergency: encounter EMERGENCY or an emergency 医疗类别 (13, 24…)."""
    return encounter == ENCOUNTER_EMERGENCY or med_type.strip() in config.emergency_med_types


# Reasons whose zh-CN detail names the service day: their decision is one day's only.
DAY_SPECIFIC_REASONS = frozenset(reason for reason, spec in RULE_BY_REASON.items() if "{date}" in spec.detail)


def _consulted_periods(line: Line, evidence: Evidence, config: RulesConfig) -> Iterator[Period]:
    """Every dated period a check may consult for ``line``: the only way the day matters.

    Kept beside ``CHECKS``: a check that starts reading other dated data must add it here
    (the property tests compare ``decide_all`` with ``decide`` line by line)."""
    if evidence.institution is not None:
        yield from evidence.institution.as_periods
    if evidence.departments is not None:
        if line.department_code:
            yield from evidence.departments.by_department.get(line.department_code, ())
        else:  # a line without a department is judged against every department's stops
            for periods in evidence.departments.by_department.values():
                yield from periods
    record = evidence.staff.get(line.staff_code)
    if record is not None:
        yield from record.by_institution.get(evidence.institution_code, ())
        if config.national_cancellation:
            yield from record.cancellations


def stable_days(line: Line, evidence: Evidence, config: RulesConfig, decision: Decision) -> tuple[int, int]:
    """The days around ``line.service_day`` on which ``line`` gets this very decision: no
    consulted period starts or ends inside them, so every check sees the same periods."""
    day = line.service_day
    if decision.reason in DAY_SPECIFIC_REASONS:
        return day, day
    low, high = -(2**62), 2**62
    for period in _consulted_periods(line, evidence, config):
        if period.start <= day:
            low = max(low, period.start)
        else:
            high = min(high, period.start - 1)
        if period.end >= day:
            high = min(high, period.end)
        else:
            low = max(low, period.end + 1)
    return low, high


def decide_all(lines: Sequence[Line], evidence: Evidence, config: RulesConfig) -> list[Decision]:
    """Verdicts for a whole bill, same order as ``lines``.

    A 3,000-line inpatient bill has a few dozen staff over a few dozen days, but statuses
    change rarely: lines of the same (code, department, emergency, coded-item) share one
    decision over the run of days in which none of the periods consulted starts or ends, so
    a bill costs about one ``decide`` per staff member, not one per staff member and day.
    """
    memo: dict[tuple[str, str, bool, bool], tuple[int, int, Decision]] = {}
    out: list[Decision] = []
    append = out.append
    for line in lines:
        item = line.item_code
        # ``is_blank`` only for the rare code that is not plainly visible: this runs per line.
        key = (
            line.staff_code,
            line.department_code,
            line.emergency,
            not (item.isprintable() and item.strip()) and is_blank(item),
        )
        day = line.service_day
        known = memo.get(key)
        if known is not None and known[0] <= day <= known[1]:
            append(known[2])
            continue
        decision = decide(line, evidence, config)
        low, high = stable_days(line, evidence, config, decision)
        memo[key] = (low, high, decision)
        append(decision)
    return out


def staff_codes_to_fetch(lines: Iterable[Line], config: RulesConfig) -> list[str]:
    """Distinct well-formed staff codes, in first-seen order: each is looked up once."""
    seen: dict[str, None] = {}
    for line in lines:
        code = line.staff_code
        if code and code not in seen and config.shapes.is_staff_code(code):
            seen[code] = None
    return list(seen)
