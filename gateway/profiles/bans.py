"""Bans on new agreements: a 正常 period that starts inside the ban after a 解除 or 注销.

000 §14 bars a new physician agreement for one year after a 解除 and five years after a
注销; 002 §12 and 004 §65 bar a terminated institution from a new designation for one to three
years. The export may still carry such a 正常 period (a registration the platform accepted):
the loader reports it and, where the profile enforces bans, the gateway judges the banned
stretch as the banning status. Pure and shared by loader and gateway so both agree.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence

from gateway.days import date_of_day, day_of_date
from gateway.records import Period, Status


def add_years(day: int, years: int) -> int:
    """The same calendar day ``years`` later (29 February → 28 February)."""
    date = date_of_day(day)
    try:
        later = date.replace(year=date.year + years)
    except ValueError:  # 29 February into a common year
        later = dt.date(date.year + years, 2, 28)
    return day_of_date(later)


def ban_end(source: Period, years: int) -> int:
    """The last day of the ban a ``source`` 解除/注销 starts: ``years`` from its first day."""
    return add_years(source.start, years) - 1


def banned_stretches(
    sources: Iterable[Period], periods: Sequence[Period], years: Mapping[Status, int]
) -> list[Period]:
    """For each 正常 period of ``periods`` that starts inside the ban of a ``sources`` period
    whose status has a ban (``years``), the banned part of it, with the banning status."""
    out: list[Period] = []
    for source in sources:
        length = years.get(source.status, 0)
        if length <= 0:
            continue
        last = ban_end(source, length)
        for period in periods:
            if period.status is Status.NORMAL and source.start < period.start <= last:
                out.append(Period(source.status, period.start, min(period.end, last)))
    return out
