"""Group validated entries into the records the gateway reads, one per key.

Keys: a staff code (all its institutions), an institution code, or — for department
actions — the institution whose departments they stop. A full export yields every record;
a delta yields the records it replaces (``None`` = the key is removed) given the live ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from gateway.records import (
    DepartmentActions,
    InstitutionPeriod,
    InstitutionRecord,
    Period,
    StaffPeriod,
    StaffRecord,
)
from loader.rows import DepartmentEntry, Entry, InstitutionEntry, StaffEntry

E = TypeVar("E", bound=Entry)


def record_key(entry: Entry) -> str:
    if isinstance(entry, StaffEntry):
        return entry.code
    if isinstance(entry, InstitutionEntry):
        return entry.code
    return entry.institution


def _grouped(entries: Iterable[E]) -> dict[str, list[E]]:
    groups: dict[str, list[E]] = {}
    for entry in entries:
        groups.setdefault(record_key(entry), []).append(entry)
    return groups


# -- staff ----------------------------------------------------------------------------------


def _staff_record(periods: Iterable[StaffPeriod], category: str, name: str | None) -> StaffRecord:
    ordered = tuple(sorted(set(periods), key=lambda p: (p.institution, p.start, p.end, p.status)))
    return StaffRecord(ordered, category, name)


def _staff_from_entries(entries: list[StaffEntry]) -> StaffRecord:
    periods = [
        StaffPeriod(e.institution, e.department, e.status, e.start, e.end)
        for e in entries
        if e.status is not None
    ]
    category = next((e.category for e in reversed(entries) if e.category), "")
    name = next((e.name for e in reversed(entries) if e.name), None)
    return _staff_record(periods, category, name)


def _staff_delta(entries: list[StaffEntry], live: StaffRecord | None) -> StaffRecord | None:
    replacing = [e for e in entries if e.status is not None]
    if replacing:
        record: StaffRecord | None = _staff_from_entries(replacing)
    else:
        record = live
    if record is None:
        return None
    deleted = {e.institution for e in entries if e.status is None}
    if deleted:
        if "" in deleted:
            return None
        kept = [p for p in record.periods if p.institution not in deleted]
        record = _staff_record(kept, record.category, record.name)
    return record if record.periods else None


# -- institutions ---------------------------------------------------------------------------


def _institution_from_entries(entries: list[InstitutionEntry]) -> InstitutionRecord | None:
    periods = sorted(
        {InstitutionPeriod(e.status, e.start, e.end, e.region) for e in entries if e.status is not None},
        key=lambda p: (p.start, p.end, p.status, p.region),
    )
    if not periods:
        return None
    name = next((e.name for e in reversed(entries) if e.name), "")
    return InstitutionRecord(tuple(periods), name)


def _institution_delta(
    entries: list[InstitutionEntry], live: InstitutionRecord | None
) -> InstitutionRecord | None:
    return _institution_from_entries(entries)


# -- departments ----------------------------------------------------------------------------


def _departments_from_entries(entries: list[DepartmentEntry]) -> DepartmentActions | None:
    by_dept: dict[str, set[Period]] = {}
    for e in entries:
        if e.status is not None:
            by_dept.setdefault(e.department, set()).add(Period(e.status, e.start, e.end))
    if not by_dept:
        return None
    return DepartmentActions(
        {d: tuple(sorted(ps, key=lambda p: (p.start, p.end, p.status))) for d, ps in by_dept.items()}
    )


def _departments_delta(
    entries: list[DepartmentEntry], live: DepartmentActions | None
) -> DepartmentActions | None:
    replacing = [e for e in entries if e.status is not None]
    record = _departments_from_entries(replacing) if replacing else live
    if record is None:
        return None
    deleted = {e.department for e in entries if e.status is None}
    kept = {d: ps for d, ps in record.by_department.items() if d not in deleted}
    return DepartmentActions(kept) if kept else None


# -- dispatch -------------------------------------------------------------------------------

Encodable = StaffRecord | InstitutionRecord | DepartmentActions

_FULL: Mapping[str, Callable[[list[Any]], Encodable | None]] = {
    "staff": _staff_from_entries,
    "institution": _institution_from_entries,
    "department": _departments_from_entries,
}
_DELTA: Mapping[str, Callable[[list[Any], Any], Encodable | None]] = {
    "staff": _staff_delta,
    "institution": _institution_delta,
    "department": _departments_delta,
}
_DECODE: Mapping[str, Callable[[bytes], Encodable]] = {
    "staff": StaffRecord.decode,
    "institution": InstitutionRecord.decode,
    "department": DepartmentActions.decode,
}


def full_records(kind: str, entries: Iterable[Entry]) -> dict[str, bytes]:
    """Every record of a full export, encoded; keys whose rows were all 删除 are absent."""
    build = _FULL[kind]
    out: dict[str, bytes] = {}
    for key, group in _grouped(entries).items():
        record = build(group)
        if record is not None:
            out[key] = record.encode()
    return out


def delta_records(
    kind: str, entries: Iterable[Entry], live: Mapping[str, bytes | None]
) -> dict[str, bytes | None]:
    """For each key a delta mentions: its new encoded record, or None to remove it.

    ``live`` holds the current encoded record of every mentioned key (None if absent).
    """
    merge = _DELTA[kind]
    decode = _DECODE[kind]
    out: dict[str, bytes | None] = {}
    for key, group in _grouped(entries).items():
        raw = live.get(key)
        record = merge(group, decode(raw) if raw else None)
        out[key] = record.encode() if record is not None else None
    return out


def mentioned_keys(entries: Iterable[Entry]) -> list[str]:
    return list(dict.fromkeys(record_key(e) for e in entries))
