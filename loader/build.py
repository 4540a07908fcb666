"""Group validated entries into the records the gateway reads, one per key.

Keys: a staff code (all its institutions), an institution code, or — for department
actions — the institution whose departments they stop. A full export yields every record;
a delta yields the records it replaces (``None`` = the key is removed) given the live ones.

Every kind applies a delta's rows of one key in file order, by one rule: start from the live
record; the key's first non-删除 row replaces all of its live periods (a delta replaces all
rows of what it mentions), and each later non-删除 row adds to them; a 删除 row removes, at
its place in the file, what it names — a person's periods at one institution (at every one
when 定点机构代码 is empty), one department's actions, or an institution's whole record. So
"删除 everywhere, then a new row" leaves the new row, and "a row, then 删除 of it" leaves
nothing. A key with no periods left is removed.

Staff records are built straight from tuples and encoded by ``gateway.records.encode_staff``:
a full export has a million of them, and this is half of the loader's time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from gateway.records import (
    DepartmentActions,
    InstitutionPeriod,
    InstitutionRecord,
    Period,
    StaffPeriodTuple,
    StaffRecord,
    encode_staff,
)
from loader.rows import DepartmentEntry, Entry, InstitutionEntry, StaffEntry


def record_key(entry: Entry) -> str:
    if isinstance(entry, DepartmentEntry):
        return entry.institution
    return entry.code


def grouped(entries: Iterable[Entry]) -> dict[str, list[Any]]:
    """Entries by record key, in first-seen order (rows of one person need not be adjacent);
    each key's entries keep their file order, which a delta's 删除 rows depend on."""
    groups: dict[str, list[Any]] = {}
    for entry in entries:
        key = record_key(entry)
        group = groups.get(key)
        if group is None:
            groups[key] = [entry]
        else:
            group.append(entry)
    return groups


# -- staff ----------------------------------------------------------------------------------


def _period_order(p: StaffPeriodTuple) -> tuple[str, int, int, int, str]:
    return (p[0], p[3], p[4], p[2], p[1])


def _staff_encoded(periods: Iterable[StaffPeriodTuple], category: str, name: str | None) -> bytes | None:
    ordered = sorted(set(periods), key=_period_order)
    return encode_staff(ordered, category, name) if ordered else None


def _staff_parts(entries: list[StaffEntry]) -> tuple[list[StaffPeriodTuple], str, str | None]:
    """Periods of the rows that carry one, and the latest category and name given."""
    periods: list[StaffPeriodTuple] = [
        (e.institution, e.department, e.status, e.start, e.end)  # type: ignore[misc]
        for e in entries
        if e.status is not None
    ]
    category = next((e.category for e in reversed(entries) if e.category), "")
    name = next((e.name for e in reversed(entries) if e.name), None)
    return periods, category, name


def _staff_full(entries: list[StaffEntry]) -> bytes | None:
    if len(entries) == 1:  # most people: one row, nothing to merge or sort
        e = entries[0]
        if e.status is None:
            return None
        return encode_staff(((e.institution, e.department, e.status, e.start, e.end),), e.category, e.name)
    return _staff_encoded(*_staff_parts(entries))


def _staff_live(live: bytes | None) -> tuple[list[StaffPeriodTuple], str, str | None]:
    if not live:
        return [], "", None
    current = StaffRecord.decode(live)
    periods = [(p.institution, p.department, int(p.status), p.start, p.end) for p in current.periods]
    return periods, current.category, current.name


def _staff_delta(entries: list[StaffEntry], live: bytes | None) -> bytes | None:
    """A person's delta rows in file order (the module's rule): the first row with a period
    replaces their live periods, later ones add; a 删除 row drops the periods at its
    institution then and there — all of them, category and name too, when it names none."""
    periods, category, name = _staff_live(live)
    replaced = False
    for e in entries:
        if e.status is None:
            if e.institution:
                periods = [p for p in periods if p[0] != e.institution]
            else:
                periods, category, name = [], "", None
            continue
        if not replaced:
            periods, category, name, replaced = [], "", None, True
        periods.append((e.institution, e.department, e.status, e.start, e.end))
        category = e.category or category
        name = e.name or name
    return _staff_encoded(periods, category, name)


# -- institutions ---------------------------------------------------------------------------


def _institution_encoded(periods: Iterable[InstitutionPeriod], name: str) -> bytes | None:
    ordered = sorted(set(periods), key=lambda p: (p.start, p.end, p.status, p.region))
    return InstitutionRecord(tuple(ordered), name).encode() if ordered else None


def _institution_full(entries: list[InstitutionEntry]) -> bytes | None:
    name = next((e.name for e in reversed(entries) if e.name), "")
    return _institution_encoded(
        (InstitutionPeriod(e.status, e.start, e.end, e.region) for e in entries if e.status is not None), name
    )


def _institution_delta(entries: list[InstitutionEntry], live: bytes | None) -> bytes | None:
    """An institution's delta rows in file order (the module's rule): the first row with a
    period replaces its live record, later ones add; a 删除 row drops the whole record then
    and there, so only rows after it count."""
    current = InstitutionRecord.decode(live) if live else InstitutionRecord(())
    periods, name = list(current.periods), current.name
    replaced = False
    for e in entries:
        if e.status is None:
            periods, name = [], ""
            continue
        if not replaced:
            periods, name, replaced = [], "", True
        periods.append(InstitutionPeriod(e.status, e.start, e.end, e.region))
        name = e.name or name
    return _institution_encoded(periods, name)


# -- departments ----------------------------------------------------------------------------


def _departments(by_dept: Mapping[str, Iterable[Period]]) -> bytes | None:
    kept = {d: tuple(sorted(set(ps), key=lambda p: (p.start, p.end, p.status))) for d, ps in by_dept.items()}
    kept = {d: ps for d, ps in kept.items() if ps}
    return DepartmentActions(kept).encode() if kept else None


def _departments_full(entries: list[DepartmentEntry]) -> bytes | None:
    by_dept: dict[str, list[Period]] = {}
    for e in entries:
        if e.status is not None:
            by_dept.setdefault(e.department, []).append(Period(e.status, e.start, e.end))
    return _departments(by_dept)


def _departments_delta(entries: list[DepartmentEntry], live: bytes | None) -> bytes | None:
    """An institution's department rows in file order (the module's rule): the first row with
    a period replaces all its live department actions, later ones add; a 删除 row clears the
    department it names then and there."""
    by_dept: dict[str, list[Period]] = {}
    if live:
        by_dept = {d: list(ps) for d, ps in DepartmentActions.decode(live).by_department.items()}
    replaced = False
    for e in entries:
        if e.status is None:
            by_dept.pop(e.department, None)
            continue
        if not replaced:
            by_dept, replaced = {}, True
        by_dept.setdefault(e.department, []).append(Period(e.status, e.start, e.end))
    return _departments(by_dept)


# -- dispatch -------------------------------------------------------------------------------

_FULL: Mapping[str, Callable[[list[Any]], bytes | None]] = {
    "staff": _staff_full,
    "institution": _institution_full,
    "department": _departments_full,
}
_DELTA: Mapping[str, Callable[[list[Any], bytes | None], bytes | None]] = {
    "staff": _staff_delta,
    "institution": _institution_delta,
    "department": _departments_delta,
}


def encode_full(kind: str, groups: Mapping[str, list[Any]]) -> Iterator[tuple[str, bytes]]:
    """Every record of a full export, encoded, as a stream (so they can be written while the
    rest are still being encoded); keys whose rows yield no period are skipped."""
    build = _FULL[kind]
    for key, group in groups.items():
        record = build(group)
        if record is not None:
            yield key, record


def full_records(kind: str, entries: Iterable[Entry]) -> dict[str, bytes]:
    return dict(encode_full(kind, grouped(entries)))


def delta_records(
    kind: str, groups: Mapping[str, list[Any]], live: Mapping[str, bytes | None]
) -> dict[str, bytes | None]:
    """For each key a delta mentions (``groups``: its entries by key, in file order): its new
    encoded record, or None to remove it. ``live`` holds the current encoded record of every
    mentioned key (None if absent)."""
    merge = _DELTA[kind]
    return {key: merge(group, live.get(key)) for key, group in groups.items()}
