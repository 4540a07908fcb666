"""Synthetic settlements shaped like a hospital's checkout traffic, from the demo export set.

Shared by the benchmark harness (fixed sizes: 1, 20, 200, 3,000 lines) and the Locust file
(the traffic mix). A bill has a few ordering staff, not one per line: an outpatient bill one to
three, an inpatient discharge a few dozen over the days of the stay, so the gateway's
per-request work (distinct codes, distinct days) is what real bills cost. A small share of
lines names staff who are suspended, terminated or unknown, so rejections and their zh-CN
details are part of every measurement.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway.pb.settlement.v1 import gateway_pb2 as pb
from loader import columns as col
from loader.demo import DEPARTMENTS

ITEM_CODES = ("XA01AAA001", "XB05BAA047", "ZA04AAM0521", "001202000010000", "250101001", "310100001")
SECONDS_PER_DAY = 86400


@dataclass(frozen=True)
class StaffPool:
    """Staff codes of one institution, split by whether a bill line from them should pass."""

    institution: str
    normal: tuple[str, ...]
    flagged: tuple[str, ...]
    unknown: tuple[str, ...]

    @classmethod
    def from_staff_csv(cls, path: Path, institution: str | None = None) -> StaffPool:
        """The pool of ``institution`` (default: the one with the most staff) in a demo export."""
        statuses: dict[str, dict[str, set[str]]] = {}
        with path.open(encoding="utf-8-sig", newline="") as fh:
            for row in csv.DictReader(fh):
                by_code = statuses.setdefault(row[col.INSTITUTION], {})
                by_code.setdefault(row[col.CODE], set()).add(row[col.STATUS])
        if institution is None:
            institution = Counter({inst: len(codes) for inst, codes in statuses.items()}).most_common(1)[0][0]
        here = statuses[institution]
        normal = tuple(sorted(code for code, seen in here.items() if seen == {"正常"}))
        flagged = tuple(sorted(code for code, seen in here.items() if seen != {"正常"}))
        # Well-formed codes no export mentions (division 330999 is not in the demo set).
        unknown = tuple(f"D330999{seq:06d}" for seq in range(1, 21))
        return cls(institution, normal, flagged or unknown, unknown)


@dataclass(frozen=True)
class BillShape:
    """How one kind of bill looks: its size, how many staff and days it spans."""

    encounter: int
    med_type: str
    min_lines: int
    max_lines: int
    days: int


OUTPATIENT = BillShape(pb.OUTPATIENT, "11", 5, 30, 1)
PHARMACY = BillShape(pb.PHARMACY, "41", 1, 8, 1)
INPATIENT = BillShape(pb.INPATIENT, "21", 500, 3000, 30)
EMERGENCY = BillShape(pb.EMERGENCY, "13", 3, 20, 1)


def staff_per_bill(lines: int) -> int:
    """Distinct ordering staff on a bill of ``lines`` lines (1 → 1, 20 → 5, 200 → 15, 3,000 → 40)."""
    return max(1, min(40, math.ceil(math.sqrt(lines))))


def days_per_bill(lines: int) -> int:
    """Service days a bill of ``lines`` lines spans when its shape is not given."""
    return 1 if lines <= 30 else min(30, lines // 100 + 1)


class BillMaker:
    """Builds ``ValidateRequest`` messages from a staff pool; seeded, so runs are repeatable."""

    def __init__(self, pool: StaffPool, seed: int = 1, flagged_share: float = 0.03) -> None:
        self.pool = pool
        self.rng = random.Random(seed)
        self.flagged_share = flagged_share
        self._serial = 0

    def _staff_for_line(self, regulars: list[str]) -> str:
        roll = self.rng.random()
        if roll < self.flagged_share * 0.7:
            return self.rng.choice(self.pool.flagged)
        if roll < self.flagged_share:
            return self.rng.choice(self.pool.unknown)
        return self.rng.choice(regulars)

    def bill(
        self,
        lines: int,
        *,
        encounter: int = pb.OUTPATIENT,
        med_type: str = "11",
        days: int | None = None,
        now: float | None = None,
    ) -> pb.ValidateRequest:
        self._serial += 1
        now = time.time() if now is None else now
        span = days_per_bill(lines) if days is None else days
        regulars = self.rng.sample(self.pool.normal, min(len(self.pool.normal), staff_per_bill(lines)))
        department = self.rng.choice(DEPARTMENTS[:4])
        request = pb.ValidateRequest(
            request_id=f"bench-{self._serial}",
            institution_code=self.pool.institution,
            settlement_id=f"MDTRT-{self._serial:08d}",
            encounter=encounter,  # type: ignore[arg-type]
            med_type=med_type,
        )
        add = request.lines.add
        for index in range(lines):
            line = add(
                line_id=str(index + 1),
                staff_code=self._staff_for_line(regulars),
                department_code=department,
                item_code=self.rng.choice(ITEM_CODES),
                amount_fen=self.rng.randrange(100, 200_000),
            )
            line.service_time.FromSeconds(int(now) - SECONDS_PER_DAY * (index * span // lines))
        return request

    def bill_of_shape(self, shape: BillShape) -> pb.ValidateRequest:
        lines = self.rng.randint(shape.min_lines, shape.max_lines)
        return self.bill(lines, encounter=shape.encounter, med_type=shape.med_type, days=shape.days)


def requests_of_size(pool: StaffPool, lines: int, count: int, seed: int = 1) -> Iterator[pb.ValidateRequest]:
    """``count`` outpatient-style bills (inpatient-style past 30 lines) of exactly ``lines`` lines."""
    maker = BillMaker(pool, seed)
    encounter = pb.OUTPATIENT if lines <= 30 else pb.INPATIENT
    for _ in range(count):
        yield maker.bill(lines, encounter=encounter, med_type="11" if lines <= 30 else "21")


def today_cst() -> dt.date:
    return dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).date()
