"""The record cache: version-tagged, bounded, and never mixing versions in one lookup."""

from __future__ import annotations

from gateway.cache import RecordCache
from gateway.records import InstitutionPeriod, InstitutionRecord, StaffPeriod, StaffRecord, Status
from gateway.versions import VersionMeta


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def meta(version: str, as_of: float) -> VersionMeta:
    return VersionMeta(version=version, as_of=as_of, tables={})


def staff(status: Status = Status.NORMAL) -> StaffRecord:
    return StaffRecord((StaffPeriod("H33090200017", "", status, 0, 99999),))


INST = InstitutionRecord((InstitutionPeriod(Status.NORMAL, 0, 99999),))
V1 = meta("v1", 100.0)
V2 = meta("v2", 200.0)


def test_a_lookup_returns_one_versions_records_and_names_what_is_missing() -> None:
    clock = Clock()
    cache = RecordCache(100, clock)
    cache.remember(V1, "H1", INST, None, {"D1": staff(), "D2": None})
    clock.now += 5
    hit = cache.lookup("H1", ["D1", "D2", "D3"])
    assert hit is not None
    assert hit.meta is V1 and hit.age_seconds == 5
    assert hit.institution_known and hit.institution == INST
    assert hit.staff == {"D1": staff(), "D2": None}  # None: the version does not know D2
    assert hit.missing_staff == {"D3"} and not hit.complete
    assert cache.lookup("H2", ["D1"]).institution_known is False  # type: ignore[union-attr]


def test_a_newer_version_hides_older_records_and_an_older_read_is_ignored() -> None:
    cache = RecordCache(100, Clock())
    cache.remember(V1, "H1", INST, None, {"D1": staff(), "D2": staff()})
    cache.remember(V2, "H1", INST, None, {"D1": staff(Status.SUSPENDED)})
    # A slow read of v1 finishing after v2 was seen must not bring v1 back.
    cache.remember(V1, "H1", INST, None, {"D2": staff()})
    hit = cache.lookup("H1", ["D1", "D2"])
    assert hit is not None and hit.meta is V2
    assert hit.staff == {"D1": staff(Status.SUSPENDED)}
    assert hit.missing_staff == {"D2"}  # only v1 had it: never mixed into a v2 answer
    assert cache.lookup("H1", ["D1"], version="v1") is None


def test_confirming_a_version_refreshes_its_age_and_a_new_version_starts_empty() -> None:
    clock = Clock()
    cache = RecordCache(100, clock)
    assert cache.lookup("H1", []) is None and not cache.has_records
    cache.remember(V1, "H1", INST, None, {})
    clock.now += 50
    assert cache.age_seconds() == 50
    cache.confirm(V1)
    assert cache.age_seconds() == 0 and cache.has_records
    cache.confirm(V2)
    assert not cache.has_records  # nothing of v2 read yet: a fallback could answer nothing


def test_the_least_recently_used_entries_go_first() -> None:
    cache = RecordCache(3, Clock())
    cache.remember(V1, "H1", INST, None, {"D1": None, "D2": None})
    cache.lookup("H1", ["D1"])  # D1 used: D2 is now the oldest
    cache.remember(V1, "H1", INST, None, {"D3": None})
    assert len(cache) == 3
    hit = cache.lookup("H1", ["D1", "D2", "D3"])
    assert hit is not None and hit.missing_staff == {"D2"}
