"""China's working days: weekends and public holidays off, 调休 make-up weekend days on.

000 §8 gives a hospital three working days after an employment ends to lock the doctor's
code. Counting them needs the State Council's holiday schedule of each year, which is
published each November for the next year; the ``chinese-calendar`` package keeps it. A year
it does not hold yet is an error (``CalendarMissing``), never a guess from weekdays alone.
"""

from __future__ import annotations

import datetime as dt

import chinese_calendar


class CalendarMissing(LookupError):
    """The working-day calendar has no schedule for this year."""

    def __init__(self, year: int) -> None:
        super().__init__(f"no working-day calendar for {year} (the holiday schedule is not known yet)")
        self.year = year


def is_working_day(day: dt.date) -> bool:
    try:
        return bool(chinese_calendar.is_workday(day))
    except NotImplementedError:
        raise CalendarMissing(day.year) from None


def nth_working_day_after(day: dt.date, n: int) -> dt.date:
    """The ``n``-th working day strictly after ``day``."""
    if n <= 0:
        raise ValueError("n must be positive")
    current, found = day, 0
    while found < n:
        current += dt.timedelta(days=1)
        if is_working_day(current):
            found += 1
    return current
