"""The records stored per staff code, institution and department, and their wire encoding.

One encoding shared by the loader (writes) and the gateway (reads). Records are compact
orjson arrays: a staff record of a two-site doctor is ~100 bytes. They hold codes, statuses
and day numbers only; the 证件号码 never reaches this module, and a name only when the
operator configured it (``n``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import orjson

from gateway.codes import canonical_department


class Status(enum.IntEnum):
    """Agreement status; the value is its strictness (注销 > 解除 > 封锁 > 中止 > 正常)."""

    NORMAL = 0
    SUSPENDED = 1
    LOCKED = 2
    TERMINATED = 3
    CANCELLED = 4

    @property
    def label(self) -> str:
        return STATUS_LABELS[self]


STATUS_LABELS = {
    Status.NORMAL: "正常",
    Status.SUSPENDED: "中止",
    Status.LOCKED: "封锁",
    Status.TERMINATED: "解除",
    Status.CANCELLED: "注销",
}

# Export spellings, including the national 2024 scheme's 暂停/终止 and some provinces' 有效.
STATUS_SYNONYMS: Mapping[str, Status] = {
    "正常": Status.NORMAL,
    "有效": Status.NORMAL,
    "中止": Status.SUSPENDED,
    "暂停": Status.SUSPENDED,
    "封锁": Status.LOCKED,
    "解除": Status.TERMINATED,
    "终止": Status.TERMINATED,
    "注销": Status.CANCELLED,
}


@dataclass(frozen=True, slots=True)
class Period:
    """One status over whole CST days ``start..end`` (inclusive)."""

    status: Status
    start: int
    end: int

    def covers(self, day: int) -> bool:
        return self.start <= day <= self.end


def strictest(periods: Iterable[Period], day: int) -> Period | None:
    """The strictest period covering ``day`` (overlaps: the stricter status wins)."""
    found: Period | None = None
    for period in periods:
        if period.start <= day <= period.end and (found is None or period.status > found.status):
            found = period
    return found


@dataclass(frozen=True, slots=True)
class StaffPeriod:
    """A staff member's status at one institution (and department, if the export gives one)."""

    institution: str
    department: str
    status: Status
    start: int
    end: int

    def as_period(self) -> Period:
        return Period(self.status, self.start, self.end)


# One staff period on the wire: institution, department, status, first day, last day.
StaffPeriodTuple = tuple[str, str, int, int, int]


def encode_staff(periods: Sequence[StaffPeriodTuple], category: str = "", name: str | None = None) -> bytes:
    """The one staff record encoding. A plain function over tuples because the loader encodes a
    million records per full export and building record objects first would double its time."""
    doc: dict[str, object] = {"p": periods}  # orjson writes tuples and IntEnums as JSON
    if category:
        doc["c"] = category
    if name:
        doc["n"] = name
    return orjson.dumps(doc)


@dataclass(frozen=True, slots=True)
class StaffRecord:
    """Every period of one staff code, at every institution (multi-site practice)."""

    periods: tuple[StaffPeriod, ...]
    category: str = ""
    name: str | None = None
    by_institution: Mapping[str, tuple[Period, ...]] = field(init=False, repr=False, compare=False)
    cancellations: tuple[Period, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        grouped: dict[str, list[Period]] = {}
        for sp in self.periods:
            grouped.setdefault(sp.institution, []).append(sp.as_period())
        object.__setattr__(self, "by_institution", {k: tuple(v) for k, v in grouped.items()})
        cancelled = tuple(sp.as_period() for sp in self.periods if sp.status is Status.CANCELLED)
        object.__setattr__(self, "cancellations", cancelled)

    def encode(self) -> bytes:
        return encode_staff(
            [(p.institution, p.department, int(p.status), p.start, p.end) for p in self.periods],
            self.category,
            self.name,
        )

    @classmethod
    def decode(cls, raw: bytes | str) -> StaffRecord:
        doc = orjson.loads(raw)
        periods = tuple(
            StaffPeriod(inst, dept, Status(status), start, end) for inst, dept, status, start, end in doc["p"]
        )
        return cls(periods, doc.get("c", ""), doc.get("n"))


@dataclass(frozen=True, slots=True)
class InstitutionPeriod:
    status: Status
    start: int
    end: int
    region: str = ""

    def as_period(self) -> Period:
        return Period(self.status, self.start, self.end)


@dataclass(frozen=True, slots=True)
class InstitutionRecord:
    """An institution's agreement periods from every 统筹区 (002 §19: a suspension elsewhere
    applies here too, so all regions' rows are kept and the strictest wins)."""

    periods: tuple[InstitutionPeriod, ...]
    name: str = ""
    as_periods: tuple[Period, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "as_periods", tuple(p.as_period() for p in self.periods))

    def encode(self) -> bytes:
        doc: dict[str, object] = {"p": [[int(p.status), p.start, p.end, p.region] for p in self.periods]}
        if self.name:
            doc["n"] = self.name
        return orjson.dumps(doc)

    @classmethod
    def decode(cls, raw: bytes | str) -> InstitutionRecord:
        doc = orjson.loads(raw)
        periods = tuple(
            InstitutionPeriod(Status(status), start, end, region) for status, start, end, region in doc["p"]
        )
        return cls(periods, doc.get("n", ""))


@dataclass(frozen=True, slots=True)
class DepartmentActions:
    """Settlement stops for single departments of one institution (002 §20)."""

    by_department: Mapping[str, tuple[Period, ...]]

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                dept: [[int(p.status), p.start, p.end] for p in periods]
                for dept, periods in sorted(self.by_department.items())
            }
        )

    @classmethod
    def decode(cls, raw: bytes | str) -> DepartmentActions:
        doc = orjson.loads(raw)
        # Keys are canonical as the loader writes them; data published before that rule may
        # hold ``a05`` beside ``A05``: read in canonical form, both are one department's stops.
        by_department: dict[str, tuple[Period, ...]] = {}
        for dept, periods in doc.items():
            key = canonical_department(dept)
            found = tuple(Period(Status(s), start, end) for s, start, end in periods)
            by_department[key] = by_department.get(key, ()) + found
        return cls(by_department)
