"""Calendar days in China Standard Time, the unit every agreement period is written in.

Periods in the national export are whole days, end inclusive, in CST (UTC+8, no DST). The
gateway compares a line's service instant against them as an integer day number (days since
1970-01-01 CST), which is exact and cheap; an open-ended period ends at ``OPEN_END``.
"""

from __future__ import annotations

import datetime as dt

CST = dt.timezone(dt.timedelta(hours=8), "CST")
CST_OFFSET_SECONDS = 8 * 3600
SECONDS_PER_DAY = 86400
OPEN_END = 2_932_896  # 9999-12-31, later than any real period
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()

# google.protobuf.Timestamp's valid range: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z.
TIMESTAMP_MIN_SECONDS = -62_135_596_800
TIMESTAMP_MAX_SECONDS = 253_402_300_799


def day_of_instant(epoch_seconds: int) -> int:
    """The CST calendar day an instant (Unix seconds) falls on."""
    return (epoch_seconds + CST_OFFSET_SECONDS) // SECONDS_PER_DAY


def day_of_date(date: dt.date) -> int:
    return date.toordinal() - _EPOCH_ORDINAL


def date_of_day(day: int) -> dt.date:
    return dt.date.fromordinal(day + _EPOCH_ORDINAL)


def format_day(day: int) -> str:
    """``YYYY-MM-DD`` for a day number, or ``长期`` for an open end (as cashiers read it)."""
    if day >= OPEN_END:
        return "长期"
    return date_of_day(day).isoformat()
