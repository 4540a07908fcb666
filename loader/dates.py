"""Dates as exports write them: ``YYYY-MM-DD``, ``YYYY/MM/DD``, ``YYYYMMDD``, with or without a
time, or an Excel serial number, all read as China Standard Time calendar days."""

from __future__ import annotations

import datetime as dt
import re

from gateway.days import day_of_date

_DATE = re.compile(r"(\d{4})[-/.年](\d{1,2})[-/.月](\d{1,2})日?(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?")
_COMPACT = re.compile(r"(\d{4})(\d{2})(\d{2})")
_EXCEL_EPOCH = dt.date(1899, 12, 30)
# Excel serials between 1950 and 2100: anything else is not a plausible agreement date.
_EXCEL_MIN, _EXCEL_MAX = 18264, 73051
# Distinct date cells remembered by one DayCache (a full export has a few thousand).
_CACHE_LIMIT = 200_000


class DateError(ValueError):
    pass


def parse_day(text: str) -> int:
    """The CST day number of an export date cell; DateError if it is not a real date."""
    value = text.strip()
    match = _DATE.fullmatch(value) or _COMPACT.fullmatch(value)
    if match:
        year, month, day = (int(g) for g in match.groups())
        try:
            return day_of_date(dt.date(year, month, day))
        except ValueError as exc:
            raise DateError("不存在的日期") from exc
    try:
        serial = float(value)
    except ValueError:
        raise DateError("无法识别的日期") from None
    if not (_EXCEL_MIN <= serial <= _EXCEL_MAX):
        raise DateError("无法识别的日期")
    return day_of_date(_EXCEL_EPOCH + dt.timedelta(days=int(serial)))


class DayCache:
    """``parse_day`` with memory: a million-row export repeats a few thousand dates, so each
    distinct cell is parsed once and later rows cost one dict lookup (and share one int)."""

    __slots__ = ("_days",)

    def __init__(self) -> None:
        self._days: dict[str, int] = {}

    @property
    def known(self) -> dict[str, int]:
        """Cells parsed so far (the live dict: a fast path may look dates up directly)."""
        return self._days

    def __call__(self, text: str) -> int:
        day = self._days.get(text)
        if day is None:
            day = parse_day(text)
            if len(self._days) < _CACHE_LIMIT:
                self._days[text] = day
        return day
