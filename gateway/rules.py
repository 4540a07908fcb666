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
from gateway.days import OPEN_END, format_day
from gateway.policy import (
    EMERGENCY_DETAIL_PREFIX,
    EMERGENCY_DETAIL_SUFFIX,
    RULE_BY_REASON,
    Reason,
    RuleSpec,
    Verdict,
)
from gateway.profiles.bans import banned_stretches
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


def _default_specs() -> Mapping[Reason, RuleSpec]:
    return RULE_BY_REASON


@dataclass(frozen=True, slots=True)
class RulesConfig:
    """The knobs regions differ on (a policy profile sets them, ``gateway/profiles``).

    Resolved once at configuration time: the per-line checks read plain fields, and with
    every knob at its default ``_check_staff`` takes the same path it always did."""

    shapes: CodeShapes = DEFAULT_SHAPES
    emergency_med_types: frozenset[str] = DEFAULT_EMERGENCY_MED_TYPES
    # 注销 cancels the national code itself (000 §14), so by default a cancellation recorded
    # at any institution applies at all of them; False confines it to that institution.
    national_cancellation: bool = True
    # Article, zh-CN detail and emergency article per reason: the region's own citations. A
    # reason whose ``emergency_article`` is None is never overridden by the exemption.
    specs: Mapping[Reason, RuleSpec] = field(default_factory=_default_specs)
    # Statuses besides 注销 that, recorded at one site of a multi-site doctor, apply at all of
    # them (000 §7 keeps sites apart: empty; 001 §四 adds points across sites: 中止, 解除).
    cross_site_statuses: frozenset[Status] = frozenset()
    # 000 §14: a 中止 lifts only when a later 正常 record shows the agreement restored on
    # application; False: at its end date (001 §五(二) "期满后自动恢复").
    suspension_lifts_on_restoration: bool = False
    # 004 §60: every line must carry a department (科室) code.
    department_code_required: bool = False
    # Bans on new agreements (000 §14; 002 §12; 004 §65): years a 解除/注销 bars a new 正常
    # period, for staff and for institutions; enforced only when ``enforce_bans``.
    enforce_bans: bool = False
    staff_ban_years: Mapping[Status, int] = field(default_factory=dict)
    institution_ban_years: Mapping[Status, int] = field(default_factory=dict)
    # 000 §9(5), §11: at a retail pharmacy (institution code starting with this prefix) a
    # line's staff code is the prescribing doctor's; "" turns the reading off.
    external_prescription_prefix: str = ""
    # Derived: the statuses applied across sites, and whether a staff record needs more than
    # today's plain reading (the hot path checks this one flag).
    cross_site: frozenset[Status] = field(init=False, repr=False, compare=False)
    plain_staff: bool = field(init=False, repr=False, compare=False)
    plain_institution: bool = field(init=False, repr=False, compare=False)
    day_specific: frozenset[Reason] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        cross = set(self.cross_site_statuses)
        if self.national_cancellation:
            cross.add(Status.CANCELLED)
        object.__setattr__(self, "cross_site", frozenset(cross))
        plain = (
            self.cross_site <= {Status.CANCELLED}
            and not self.suspension_lifts_on_restoration
            and not (self.enforce_bans and self.staff_ban_years)
            and not self.external_prescription_prefix
        )
        object.__setattr__(self, "plain_staff", plain)
        object.__setattr__(self, "plain_institution", not (self.enforce_bans and self.institution_ban_years))
        # Reasons whose zh-CN detail names the service day: their decision is one day's only.
        day_specific = frozenset(reason for reason, spec in self.specs.items() if "{date}" in spec.detail)
        object.__setattr__(self, "day_specific", day_specific)


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
    # 外配处方: where the prescribing doctor holds the agreement (SettlementLine field 8).
    prescribing_institution: str = ""


@dataclass(frozen=True, slots=True)
class Evidence:
    """The data one request is judged on, all from one data version."""

    institution_code: str
    institution: InstitutionRecord | None
    departments: DepartmentActions | None
    staff: Mapping[str, StaffRecord | None] = field(default_factory=dict)
    # Staff periods resolved under a profile's knobs, by (code, prescribing institution): a
    # decision and its stable days read them twice, and they are this request's alone.
    resolved: dict[tuple[str, str], tuple[RulesConfig, Sequence[Period]]] = field(
        default_factory=dict, compare=False, repr=False
    )


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


def _institution_periods(record: InstitutionRecord, cfg: RulesConfig) -> Sequence[Period]:
    """The institution's periods, with the stretches of a new agreement that falls inside a
    ban (002 §12, 004 §65) added when the profile enforces bans."""
    periods = record.as_periods
    if cfg.enforce_bans and cfg.institution_ban_years:
        banned = banned_stretches(periods, periods, cfg.institution_ban_years)
        if banned:
            return (*periods, *banned)
    return periods


def _check_institution(line: Line, ev: Evidence, cfg: RulesConfig) -> Finding | None:
    # Unknown, or known but no period covers the day: not designated at that time.
    if ev.institution is None:
        return Reason.INSTITUTION_UNREGISTERED, None
    periods = (
        ev.institution.as_periods if cfg.plain_institution else _institution_periods(ev.institution, cfg)
    )
    period = strictest(periods, line.service_day)
    if period is None:
        return Reason.INSTITUTION_UNREGISTERED, None
    reason = INSTITUTION_STATUS_REASON[period.status]
    return None if reason is None else (reason, period)


def _check_department_code_required(line: Line, ev: Evidence, cfg: RulesConfig) -> Finding | None:
    # 004 §60: the agency keeps 科室 codes like item codes; a region requiring them on every
    # line rejects a line without one.
    if cfg.department_code_required and not line.department_code:
        return Reason.DEPARTMENT_CODE_MISSING, None
    return None


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


def _restored_on_application(periods: Sequence[Period]) -> tuple[Period, ...]:
    """000 §14: a 中止 runs on past its end date until a later 正常 record of the same site
    shows the agreement restored on application (open-ended if none does yet)."""
    out: list[Period] = []
    for period in periods:
        if period.status is Status.SUSPENDED:
            restored = min(
                (p.start for p in periods if p.status is Status.NORMAL and p.start > period.end),
                default=OPEN_END + 1,
            )
            period = Period(Status.SUSPENDED, period.start, restored - 1)
        out.append(period)
    return tuple(out)


def _site_periods(record: StaffRecord, site: str, cfg: RulesConfig) -> Sequence[Period]:
    periods = record.by_institution.get(site, ())
    if cfg.suspension_lifts_on_restoration and periods:
        return _restored_on_application(periods)
    return periods


def _judged_sites(line: Line, record: StaffRecord, ev: Evidence, cfg: RulesConfig) -> Iterable[str]:
    """Where the line's staff code holds the agreement it is judged by: the billing
    institution, except for an external prescription at a retail pharmacy (000 §9(5), §11),
    judged at the prescribing institution when the line names it, else at every site."""
    site = ev.institution_code
    if cfg.external_prescription_prefix and site.startswith(cfg.external_prescription_prefix):
        if line.prescribing_institution:
            return (line.prescribing_institution,)
        if site not in record.by_institution:  # not the pharmacy's own pharmacist
            return record.by_institution.keys()
    return (site,)


def staff_periods(line: Line, record: StaffRecord, ev: Evidence, cfg: RulesConfig) -> Sequence[Period]:
    """Every period the staff check weighs for ``line``, the profile's knobs applied."""
    if cfg.plain_staff:
        here: Sequence[Period] = record.by_institution.get(ev.institution_code, ())
        if cfg.national_cancellation and record.cancellations:
            here = (*here, *record.cancellations)
        return here
    key = (line.staff_code, line.prescribing_institution)
    known = ev.resolved.get(key)
    if known is not None and known[0] is cfg:  # evidence may be judged under several configs
        return known[1]
    periods = _resolved_staff_periods(line, record, ev, cfg)
    ev.resolved[key] = (cfg, periods)
    return periods


def _resolved_staff_periods(
    line: Line, record: StaffRecord, ev: Evidence, cfg: RulesConfig
) -> Sequence[Period]:
    sites = tuple(_judged_sites(line, record, ev, cfg))
    periods: list[Period] = []
    for site in sites:
        periods.extend(_site_periods(record, site, cfg))
    if cfg.cross_site:
        for other in record.by_institution:
            if other not in sites:
                periods.extend(p for p in _site_periods(record, other, cfg) if p.status in cfg.cross_site)
    if cfg.enforce_bans and cfg.staff_ban_years:
        everywhere = [p for other in record.by_institution for p in record.by_institution[other]]
        periods.extend(banned_stretches(everywhere, tuple(periods), cfg.staff_ban_years))
    return periods


def _check_staff(line: Line, ev: Evidence, cfg: RulesConfig) -> Finding | None:
    record = ev.staff.get(line.staff_code)
    if record is None or not record.periods:
        return Reason.STAFF_UNREGISTERED, None
    if cfg.plain_staff:  # today's reading, inline: this is every line's path by default
        here: Sequence[Period] = record.by_institution.get(ev.institution_code, ())
        if cfg.national_cancellation and record.cancellations:
            here = (*here, *record.cancellations)
    else:
        here = staff_periods(line, record, ev, cfg)
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
    Check("department_code_required", _check_department_code_required, (Reason.DEPARTMENT_CODE_MISSING,)),
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

# Two checks may report one reason (DEPARTMENT_CODE_MISSING: required everywhere by a profile,
# or where a department stop is in force): each reason once, at its first place.
CHECK_ORDER: tuple[Reason, ...] = tuple(dict.fromkeys(r for check in CHECKS for r in check.reasons))
# Without the department-code knob its check never finds anything: skipped, one call less a line.
_CHECKS_NO_DEPARTMENT_CODE = tuple(c for c in CHECKS if c.run is not _check_department_code_required)


def first_finding(line: Line, evidence: Evidence, config: RulesConfig) -> Finding | None:
    """The first reason, in contract order, that applies to ``line``; None if none does."""
    for check in CHECKS if config.department_code_required else _CHECKS_NO_DEPARTMENT_CODE:
        finding = check.run(line, evidence, config)
        if finding is not None:
            return finding
    return None


def _detail(spec: RuleSpec, finding: Finding, line: Line, evidence: Evidence) -> str:
    period = finding[1]
    return spec.detail.format(
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
    return decision_for(finding, line, evidence, config)


def decision_for(
    finding: Finding, line: Line, evidence: Evidence, config: RulesConfig | None = None
) -> Decision:
    """The verdict a finding leads to: rejected, or paid under the emergency exemption.
    The wording and articles are the profile's (``config.specs``), else the default table."""
    reason = finding[0]
    spec = (RULE_BY_REASON if config is None else config.specs)[reason]
    detail = _detail(spec, finding, line, evidence)
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


def _consulted_periods(line: Line, evidence: Evidence, config: RulesConfig) -> Iterator[Period]:
    """Every dated period a check may consult for ``line``: the only way the day matters.

    Kept beside ``CHECKS``: a check that starts reading other dated data must add it here
    (the property tests compare ``decide_all`` with ``decide`` line by line)."""
    if evidence.institution is not None:
        if config.plain_institution:
            yield from evidence.institution.as_periods
        else:
            yield from _institution_periods(evidence.institution, config)
    if evidence.departments is not None:
        if line.department_code:
            yield from evidence.departments.by_department.get(line.department_code, ())
        else:  # a line without a department is judged against every department's stops
            for periods in evidence.departments.by_department.values():
                yield from periods
    record = evidence.staff.get(line.staff_code)
    if record is not None:
        if config.plain_staff:
            yield from record.by_institution.get(evidence.institution_code, ())
            if config.national_cancellation:
                yield from record.cancellations
        else:
            yield from staff_periods(line, record, evidence, config)


def consulted_periods_by_source(
    line: Line, evidence: Evidence, config: RulesConfig
) -> dict[str, list[Period]]:
    """``_consulted_periods`` by where each period came from (institution, department, staff,
    cancellation): what the audit trail records as the periods a decision rested on."""
    out: dict[str, list[Period]] = {}
    if evidence.institution is not None:
        out["institution"] = list(evidence.institution.as_periods)
    if evidence.departments is not None:
        out["department"] = list(evidence.departments.by_department.get(line.department_code, ()))
    record = evidence.staff.get(line.staff_code)
    if record is not None:
        out["staff"] = list(record.by_institution.get(evidence.institution_code, ()))
        if config.national_cancellation:
            out["cancellation"] = list(record.cancellations)
    return out


def stable_days(line: Line, evidence: Evidence, config: RulesConfig, decision: Decision) -> tuple[int, int]:
    """The days around ``line.service_day`` on which ``line`` gets this very decision: no
    consulted period starts or ends inside them, so every check sees the same periods."""
    day = line.service_day
    if decision.reason in config.day_specific:
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


# Decisions already made for a bill, by (staff code, department, emergency, coded item,
# prescribing institution): with the day range over which each stays the same.
DecisionMemo = dict[tuple[str, str, bool, bool, str], tuple[int, int, Decision]]


def decide_all(
    lines: Sequence[Line],
    evidence: Evidence,
    config: RulesConfig,
    memo: DecisionMemo | None = None,
) -> list[Decision]:
    """Verdicts for a whole bill, same order as ``lines``.

    A 3,000-line inpatient bill has a few dozen staff over a few dozen days, but statuses
    change rarely: lines of the same (code, department, emergency, coded-item) share one
    decision over the run of days in which none of the periods consulted starts or ends, so
    a bill costs about one ``decide`` per staff member, not one per staff member and day.
    A bill judged in slices (``gateway.slices``) passes the same ``memo`` to each slice.
    """
    if memo is None:
        memo = {}
    out: list[Decision] = []
    append = out.append
    # The prescribing institution decides only where external prescriptions are read.
    external = bool(config.external_prescription_prefix)
    for line in lines:
        item = line.item_code
        # ``is_blank`` only for the rare code that is not plainly visible: this runs per line.
        key = (
            line.staff_code,
            line.department_code,
            line.emergency,
            not (item.isprintable() and item.strip()) and is_blank(item),
            line.prescribing_institution if external else "",
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
