"""Report the rows that start a new 正常 agreement inside a ban (000 §14; 002 §12; 004 §65).

A 解除 bars a new physician agreement for a year and a 注销 for five (000 §14); a terminated
institution may not be designated again for one to three years (002 §12, 004 §65). The
platform may still export such a 正常 row. The loader publishes it as it is (the region's
profile decides whether the gateway then pays, ``[bans] enforce``) and reports it: one line
per row in ``<input>.bans.csv`` beside the input, a count in the summary and a metric.
The ban lengths are the policy profile's (``SGW_POLICY_PROFILE``).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from gateway.days import format_day
from gateway.profiles.bans import ban_end
from gateway.records import Period, Status
from loader.rows import InstitutionEntry, StaffEntry

FIELDS = ("file", "line", "code", "institution", "start", "banned_by", "banned_since", "ban_ends")


@dataclass(frozen=True)
class BanYears:
    """Ban lengths in years per banning status, for staff and for institutions (0: none)."""

    staff: Mapping[Status, int] = field(default_factory=dict)
    institution: Mapping[Status, int] = field(default_factory=dict)


class BannedRow(NamedTuple):
    line: int
    code: str
    institution: str
    start: int
    banned_by: Status
    banned_since: int
    ban_ends: int


def _banned(entries: list[Any], years: Mapping[Status, int], institution_of: Any) -> Iterable[BannedRow]:
    """The 正常 entries of one record that start inside a ban another of its entries sets."""
    sources = [e for e in entries if e.status is not None and years.get(e.status, 0) > 0]
    if not sources:
        return
    for entry in entries:
        if entry.status is not Status.NORMAL:
            continue
        for source in sources:
            last = ban_end(Period(source.status, source.start, source.end), years[source.status])
            if source.start < entry.start <= last:
                yield BannedRow(
                    entry.line,
                    entry.code,
                    institution_of(entry),
                    entry.start,
                    source.status,
                    source.start,
                    last,
                )
                break


def _staff_institution(entry: StaffEntry) -> str:
    return entry.institution


def _institution_code(entry: InstitutionEntry) -> str:
    return entry.code


def find(kind: str, groups: Mapping[str, list[Any]], years: BanYears) -> list[BannedRow]:
    """Every banned 正常 row of a validated file, in file order. A staff ban reaches every
    site (the agency signs no new agreement with the person); an institution's, the code."""
    found: list[BannedRow] = []
    if kind == "staff" and years.staff:
        # (A derived 封锁, loader/departures.py, neither bans nor is banned.)
        for entries in groups.values():
            found.extend(_banned(entries, years.staff, _staff_institution))
    elif kind == "institution" and years.institution:
        for entries in groups.values():
            found.extend(_banned(entries, years.institution, _institution_code))
    found.sort(key=lambda row: row.line)
    return found


def default_path(source: Path) -> Path:
    return source.with_name(source.name + ".bans.csv")


def write(path: Path, source: Path, rows: Iterable[BannedRow]) -> None:
    """The report, CSV with a BOM (Excel opens it as UTF-8); a previous one is replaced."""
    with path.open("w", encoding="utf-8-sig", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(FIELDS)
        for row in rows:
            writer.writerow(
                (str(source), row.line, row.code, row.institution, format_day(row.start),
                 row.banned_by.label, format_day(row.banned_since), format_day(row.ban_ends))
            )  # fmt: skip


def report(
    kind: str, groups: Mapping[str, list[Any]], years: BanYears, source: Path
) -> tuple[int, str | None]:
    """Find the banned rows of a file and write (or clear) its report: (count, report path)."""
    rows = find(kind, groups, years)
    path = default_path(source)
    if not rows:
        path.unlink(missing_ok=True)  # an earlier run's report of this file is stale now
        return 0, None
    write(path, source, rows)
    return len(rows), str(path)
