"""The gateway's one in-process record cache: recently used records, tagged with their version.

Every successful live read leaves its records here (staff codes, and the institution with its
department actions), each tagged with the data version it came from. When Redis cannot be
reached, the records of the cache's newest version answer instead, flagged degraded and
carrying that version's ``data_version`` and ``data_as_of`` (see ``gateway.outage``). A hot
path may read it too (``lookup(..., version=live)``): versions never change once published,
so an entry tagged with the live version is exactly what Redis would return.

Why entries of older versions are never served: a newer version may have banned someone the
older one allowed, and one reply must be computed from one version only. They are not purged
when a version changes (that would be an O(n) pause on the event loop); they are skipped by
``lookup`` and replaced by the next live read or evicted by the LRU bound.

A staff code that the live data does not know is cached too (as ``None``): "unregistered" is
an answer, different from "not in the cache".
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.records import DepartmentActions, InstitutionRecord, StaffRecord
from gateway.versions import VersionMeta

DEFAULT_MAX_ENTRIES = 100_000

# Entry keys: (kind, code). Values: (version, record). The institution's value is the pair
# (institution record, department actions), which one read always fetches together.
_STAFF = "s"
_INSTITUTION = "i"


@dataclass(frozen=True, slots=True)
class CachedVersion:
    """The newest version the cache holds records of, and when it was last seen live."""

    meta: VersionMeta
    # time.monotonic() of the last live read (or live-pointer check) that found this version live.
    verified_at: float


@dataclass(frozen=True, slots=True)
class CacheLookup:
    """What the cache holds for one request, all from one version (``meta``)."""

    meta: VersionMeta
    # Seconds since the version was last confirmed live.
    age_seconds: float
    institution_known: bool
    institution: InstitutionRecord | None
    departments: DepartmentActions | None
    # Known staff codes -> record (None: the version does not know the code).
    staff: dict[str, StaffRecord | None]
    # Requested codes the cache has no record of in this version.
    missing_staff: frozenset[str]

    @property
    def complete(self) -> bool:
        return self.institution_known and not self.missing_staff


class RecordCache:
    """A bounded LRU of records keyed by staff code and institution code, version-tagged."""

    def __init__(
        self, max_entries: int = DEFAULT_MAX_ENTRIES, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_entries <= 0:
            raise ValueError("max_entries must be positive")
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[tuple[str, str], tuple[str, Any]] = OrderedDict()
        self._newest: CachedVersion | None = None
        # Whether any read of the newest version has been remembered (health: usable data).
        self._newest_filled = False

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def newest(self) -> CachedVersion | None:
        return self._newest

    @property
    def has_records(self) -> bool:
        """Whether the newest version has records here (a fallback could answer something)."""
        return self._newest_filled

    def age_seconds(self) -> float | None:
        """Seconds since the newest version was last confirmed live; None when empty."""
        newest = self._newest
        return None if newest is None else max(0.0, self.clock() - newest.verified_at)

    def confirm(self, meta: VersionMeta) -> bool:
        """Note that ``meta`` was just seen live. False (and nothing changes) when it is older
        than the newest version already held: a slow read finishing after a publish."""
        newest = self._newest
        if newest is not None and newest.meta.version != meta.version and meta.as_of < newest.meta.as_of:
            return False
        if newest is None or newest.meta.version != meta.version:
            self._newest_filled = False
        self._newest = CachedVersion(meta, self.clock())
        return True

    def remember(
        self,
        meta: VersionMeta,
        institution_code: str,
        institution: InstitutionRecord | None,
        departments: DepartmentActions | None,
        staff: Mapping[str, StaffRecord | None],
    ) -> None:
        """Keep the records of one live read (all of version ``meta``)."""
        if not self.confirm(meta):
            return
        version = meta.version
        entries = self._entries
        self._newest_filled = True
        self._put((_INSTITUTION, institution_code), (version, (institution, departments)))
        for code, record in staff.items():
            self._put((_STAFF, code), (version, record))
        overflow = len(entries) - self.max_entries
        for _ in range(overflow):
            entries.popitem(last=False)

    def _put(self, key: tuple[str, str], value: tuple[str, Any]) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)

    def lookup(
        self, institution_code: str, codes: Sequence[str], version: str | None = None
    ) -> CacheLookup | None:
        """The records of ``version`` (default: the newest) for one request; None when the
        cache holds no version (or not that one)."""
        newest = self._newest
        if newest is None or (version is not None and version != newest.meta.version):
            return None
        version = newest.meta.version
        entries = self._entries
        inst = entries.get((_INSTITUTION, institution_code))
        institution_known = inst is not None and inst[0] == version
        if institution_known:
            entries.move_to_end((_INSTITUTION, institution_code))
            institution, departments = inst[1]  # type: ignore[index]
        else:
            institution, departments = None, None
        staff: dict[str, StaffRecord | None] = {}
        missing: set[str] = set()
        for code in codes:
            key = (_STAFF, code)
            entry = entries.get(key)
            if entry is not None and entry[0] == version:
                entries.move_to_end(key)
                staff[code] = entry[1]
            else:
                missing.add(code)
        return CacheLookup(
            meta=newest.meta,
            age_seconds=max(0.0, self.clock() - newest.verified_at),
            institution_known=institution_known,
            institution=institution,
            departments=departments,
            staff=staff,
            missing_staff=frozenset(missing),
        )
