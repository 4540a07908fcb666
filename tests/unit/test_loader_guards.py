"""The loader's guards as pure functions, and the counts kept on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.records import DepartmentActions, Period, Status
from loader import guards
from loader.state import CountsFile, PublishedCounts

LIVE = guards.Reference({"staff": 2052, "institution": 10, "department": 4}, {"staff": "the live version V"})


@pytest.mark.parametrize(
    ("change", "refused"),
    [
        (guards.Change("staff", "full", 2052), False),
        (guards.Change("staff", "full", 1642), False),  # exactly 20 % fewer: allowed
        (guards.Change("staff", "full", 1641), True),  # a truncated download
        (guards.Change("staff", "delta", 252, removed=1800), True),  # 删除 rows of 1,800 people
        (guards.Change("staff", "delta", 2052, removed=1800), True),  # as many added: still 1,800 go
        (guards.Change("staff", "delta", 2000, removed=52), False),
        (guards.Change("department", "full", 4, removed=1), True),  # a quarter of the stops
        (guards.Change("department", "full", 9, removed=0), False),
        (guards.Change("institution", "absent", 0), True),
        (guards.Change("pharmacy", "full", 0), False),  # no reference for it: nothing to compare
    ],
)
def test_shrink_guard(change: guards.Change, refused: bool) -> None:
    assert (guards.shrink_refusal(change, LIVE, 0.20) is not None) is refused


def test_shrink_refusal_names_what_goes_and_against_what() -> None:
    found = guards.shrink_refusal(
        guards.Change("staff", "delta", 252, removed=1800, examples=("D330902000000",)), LIVE, 0.2
    )
    assert found is not None
    note, refusal = found
    assert note == "staff: 1800 of 2052 staff records removed (more than 20%)"
    assert "1,800 of 2,052 staff records (D330902000000, …) in the live version V" in refusal


def test_completeness_needs_staff_and_institutions() -> None:
    assert guards.missing_kinds({}, [guards.Change("institution", "full", 3)]) == ["staff"]
    assert guards.missing_kinds({"institution": 3}, [guards.Change("staff", "full", 5)]) == []
    assert guards.missing_kinds({"institution": 3, "staff": 5}, [guards.Change("staff", "delta", 0)]) == [
        "staff"
    ]
    assert guards.missing_kinds({"institution": 3, "staff": 5}, []) == []


def test_department_stops_are_institution_department_pairs() -> None:
    actions = DepartmentActions(
        {"A05": (Period(Status.SUSPENDED, 0, 10),), "B01": (Period(Status.SUSPENDED, 0, 10),)}
    )
    live = guards.stops_of([("H33090200017", actions.encode()), ("H33090300021", None)])
    assert live == {("H33090200017", "A05"), ("H33090200017", "B01")}
    assert guards.stops_gone(live, {("H33090300021", "A05")}) == (2, ("H33090200017/A05", "H33090200017/B01"))


def test_counts_file_round_trip_and_damage(tmp_path: Path) -> None:
    kept = CountsFile(tmp_path / "state", "sgw")
    assert kept.read() is None
    kept.write(PublishedCounts({"staff": 5, "institution": 2}, 1, "V1", 1.5))
    assert kept.read() == PublishedCounts({"staff": 5, "institution": 2}, 1, "V1", 1.5)
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["loader-sgw.json"]  # no temporary left
    kept.path.write_text("{not json", "utf-8")
    assert kept.read() is None  # reported and ignored, not a crash
