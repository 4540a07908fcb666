"""Whatever the order reads arrive in, a cache lookup never mixes versions."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.cache import RecordCache
from gateway.records import InstitutionRecord, StaffRecord
from gateway.versions import VersionMeta

CODES = [f"D33090200000{i}" for i in range(6)]
INSTITUTIONS = ["H33090200017", "H33090300021"]
VERSIONS = [VersionMeta(version=f"v{i}", as_of=float(i), tables={}) for i in range(4)]


def staff_of(version: str) -> StaffRecord:
    return StaffRecord((), category=version)  # the record says which version it came from


remembers = st.tuples(
    st.just("remember"),
    st.sampled_from(VERSIONS),
    st.sampled_from(INSTITUTIONS),
    st.lists(st.sampled_from(CODES), max_size=4),
)
lookups = st.tuples(
    st.just("lookup"), st.none(), st.sampled_from(INSTITUTIONS), st.lists(st.sampled_from(CODES), max_size=6)
)


@settings(max_examples=300)
@given(st.lists(remembers | lookups, max_size=40), st.integers(min_value=1, max_value=8))
def test_a_lookup_is_one_versions_records(ops: list, max_entries: int) -> None:  # type: ignore[type-arg]
    cache = RecordCache(max_entries)
    newest = -1.0
    for op, meta, institution, codes in ops:
        if op == "remember":
            staff: dict[str, StaffRecord | None] = {c: staff_of(meta.version) for c in codes}
            cache.remember(meta, institution, InstitutionRecord((), name=meta.version), None, staff)
            newest = max(newest, meta.as_of)
            continue
        hit = cache.lookup(institution, codes)
        if hit is None:
            assert newest < 0
            continue
        assert hit.meta.as_of == newest  # always the newest version seen
        for record in hit.staff.values():
            assert record is not None and record.category == hit.meta.version
        if hit.institution_known:
            assert hit.institution is not None and hit.institution.name == hit.meta.version
        assert set(hit.staff) | hit.missing_staff == set(codes)
        assert len(cache) <= max_entries
