"""The loader's part of the profiles: the 3-working-day lock (000 §8) on China's calendar, and
the 正常 rows that start inside a ban (000 §14, 002 §12, 004 §65)."""

from __future__ import annotations

import datetime as dt

import pytest

from gateway.days import OPEN_END, day_of_date
from gateway.records import Status
from loader.bans import BanYears, find
from loader.departures import Departures, lock_day
from loader.rows import InstitutionEntry, RowError, StaffEntry
from loader.workdays import CalendarMissing, is_working_day, nth_working_day_after

D = dt.date.fromisoformat


@pytest.mark.parametrize(
    ("departure", "locked_from", "why"),
    [
        ("2025-03-05", "2025-03-10", "Wednesday: Thu, Fri, then Monday"),
        ("2024-12-31", "2025-01-06", "元旦 2025-01-01 is off"),
        ("2024-04-30", "2024-05-08", "劳动节 2024-05-01..05 is off"),
        ("2025-09-28", "2025-10-09", "a 调休 Sunday; 国庆/中秋 2025-10-01..08 off"),
        ("2026-02-12", "2026-02-24", "调休 Saturday 2026-02-14 counts; 春节 2026-02-15..23 off"),
        ("2026-09-30", "2026-10-10", "国庆 2026-10-01..07 off; 调休 Saturday 2026-10-10 counts"),
    ],
)
def test_the_lock_starts_on_the_third_working_day_after_the_departure(
    departure: str, locked_from: str, why: str
) -> None:
    """000 §8: "应在解除聘用关系三个工作日内将医保医师国家编码封锁"."""
    assert lock_day(D(departure)) == D(locked_from), why


def test_make_up_days_work_and_holidays_do_not() -> None:
    assert is_working_day(D("2026-02-14"))  # Saturday, 调休 for 春节
    assert not is_working_day(D("2026-02-16"))  # Monday, 春节
    assert not is_working_day(D("2025-03-08"))  # an ordinary Saturday


@pytest.mark.parametrize("day", ["2027-03-01", "2003-06-02"])
def test_a_year_without_a_calendar_is_an_error_never_a_guess(day: str) -> None:
    with pytest.raises(CalendarMissing) as caught:
        is_working_day(D(day))
    assert caught.value.year == D(day).year


def test_counting_into_a_year_without_a_calendar_is_an_error() -> None:
    # 2026-12-31 is a working day; the second one would be in 2027.
    with pytest.raises(CalendarMissing, match="2027"):
        nth_working_day_after(D("2026-12-30"), 3)


def staff_entry(
    line: int = 2, status: Status | None = Status.NORMAL, start: str = "2024-01-01"
) -> StaffEntry:
    return StaffEntry(
        line, "D330902001234", "H33090200017", "A03", status, day_of_date(D(start)), OPEN_END, "医师", None
    )


def test_a_departure_column_derives_a_lock_at_that_institution() -> None:
    departures = Departures.for_headers(["人员代码", "*离职日期 "])
    assert departures is not None and departures.position == 1
    locked = departures.lock(staff_entry(), ["D330902001234", "2025-03-05"])
    assert isinstance(locked, StaffEntry)
    assert (locked.status, locked.start, locked.end) == (
        Status.LOCKED,
        day_of_date(D("2025-03-10")),
        OPEN_END,
    )
    assert locked.institution == "H33090200017" and locked.line == 2


@pytest.mark.parametrize("alias", ["离职日期", "离职时间", "解聘日期", "解除聘用日期", "聘用结束日期"])
def test_departure_aliases(alias: str) -> None:
    assert Departures.for_headers(["人员代码", alias]) is not None


def test_no_departure_column_or_date_derives_nothing() -> None:
    assert Departures.for_headers(["人员代码", "协议状态"]) is None
    departures = Departures(1)
    assert departures.lock(staff_entry(), ["D330902001234", ""]) is None
    assert departures.lock(staff_entry(status=None), ["D330902001234", "2025-03-05"]) is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [("2027-03-01", "无法推算封锁日期：no working-day calendar for 2027"), ("last week", "")],
)
def test_a_bad_or_uncovered_departure_date_rejects_the_row_naming_the_column(text: str, reason: str) -> None:
    error = Departures(1).lock(staff_entry(line=7), ["D330902001234", text])
    assert isinstance(error, RowError)
    assert (error.line, error.column, error.value) == (7, "离职日期", text)
    assert reason in error.reason


def test_a_new_agreement_inside_a_ban_is_reported_once() -> None:
    """000 §14: a year after 解除 (at any site), five after 注销."""
    years = BanYears({Status.TERMINATED: 1, Status.CANCELLED: 5})
    rehired = [
        staff_entry(2, Status.TERMINATED, "2025-06-01"),
        staff_entry(3, Status.NORMAL, "2026-03-01")._replace(institution="H33090300021"),
        staff_entry(4, Status.NORMAL, "2026-07-01"),  # after the ban: fine
        staff_entry(5, Status.NORMAL, "2024-01-01"),  # before the 解除: not a new agreement
    ]
    found = find("staff", {"D330902001234": rehired}, years)
    assert [(r.line, r.institution, r.banned_by) for r in found] == [(3, "H33090300021", Status.TERMINATED)]
    assert found[0].ban_ends == day_of_date(D("2026-05-31"))
    assert find("staff", {"D330902001234": rehired}, BanYears()) == []


def test_an_institution_designated_again_inside_its_ban_is_reported() -> None:
    """002 §12(五), 004 §65: 3 years."""
    entries = [
        InstitutionEntry(2, "H33090400031", "某医院", "330904", Status.TERMINATED, day_of_date(D("2024-01-01")),
                         day_of_date(D("2024-12-31"))),
        InstitutionEntry(3, "H33090400031", "某医院", "330904", Status.NORMAL, day_of_date(D("2025-06-01")), OPEN_END),
    ]  # fmt: skip
    found = find("institution", {"H33090400031": entries}, BanYears(institution={Status.TERMINATED: 3}))
    assert [(r.line, r.code, r.banned_by) for r in found] == [(3, "H33090400031", Status.TERMINATED)]
