"""封锁 derived from an employment end date (000 §8).

"定点医疗机构与医保医师解除聘用关系的，应在解除聘用关系三个工作日内将医保医师国家编码封锁":
where a staff export carries the date the employment ended (离职日期, or an alias), a 封锁
period at that institution starts on the third working day after it, whether or not the
hospital has locked the code yet. The date is read from its own column, so an export without
one loads as before; a row whose date cannot be read, or falls in a year the working-day
calendar does not hold, is rejected with the column and the reason.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from gateway.days import OPEN_END, date_of_day, day_of_date
from gateway.records import Status
from loader.columns import clean_header
from loader.dates import DateError, DayCache
from loader.rows import RowError, StaffEntry
from loader.workdays import CalendarMissing, nth_working_day_after

DEPARTURE = "离职日期"
DEPARTURE_ALIASES = frozenset({DEPARTURE, "离职时间", "解聘日期", "解除聘用日期", "聘用结束日期"})
LOCK_AFTER_WORKING_DAYS = 3  # 000 §8


def lock_day(departure: dt.date) -> dt.date:
    """The first day of the derived 封锁: the third working day after the departure."""
    return nth_working_day_after(departure, LOCK_AFTER_WORKING_DAYS)


class Departures:
    """Reads the employment end date of each staff row of one file, if it has the column."""

    def __init__(self, position: int) -> None:
        self.position = position
        self._day = DayCache()
        self.derived = 0  # 封锁 entries added: not rows of the file

    def add(self, entry: StaffEntry, cells: Sequence[str], group: list[StaffEntry]) -> RowError | None:
        """Append the derived 封锁 of a valid row to its person's ``group`` (after the row);
        the error when it cannot be derived (the row is then rejected and nothing added)."""
        derived = self.lock(entry, cells)
        if derived is None:
            return None
        if isinstance(derived, RowError):
            group.remove(entry)
            return derived
        group.append(derived)
        self.derived += 1
        return None

    @classmethod
    def for_headers(cls, raw_headers: Sequence[str]) -> Departures | None:
        for index, header in enumerate(raw_headers):
            if clean_header(header) in DEPARTURE_ALIASES:
                return cls(index)
        return None

    def lock(self, entry: StaffEntry, cells: Sequence[str]) -> StaffEntry | RowError | None:
        """The 封锁 entry a valid row's departure date implies, or why it cannot be derived;
        None when the row has no date (or is a 删除 row)."""
        text = cells[self.position].strip() if self.position < len(cells) else ""
        if not text or entry.status is None:
            return None
        try:
            departure = date_of_day(self._day(text))
        except DateError as exc:
            return RowError(entry.line, DEPARTURE, str(exc), text)
        try:
            first = day_of_date(lock_day(departure))
        except CalendarMissing as exc:
            return RowError(entry.line, DEPARTURE, f"无法推算封锁日期：{exc}", text)
        return entry._replace(status=Status.LOCKED, start=first, end=OPEN_END)
