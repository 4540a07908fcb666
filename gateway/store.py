"""The gateway's read side of Redis: one round trip per request, from exactly one version.

A request needs the institution record, its department actions and the records of the
request's distinct staff codes. One server-side script fetches them all after checking that
the version the gateway expects is still live; if the loader published meanwhile, the
script says so, the gateway loads the new version's metadata and asks again. The script
reads only keys it declares, all in one hash-tag slot, so it runs unchanged on a cluster
and needs no write permission.

Every call goes through a circuit breaker, and every successful read leaves its records in
the record cache (``gateway.cache``). When Redis cannot be reached (or has lost its data),
``read`` answers from the cache's newest version, flagged degraded, or lets the outage policy
decide (``gateway.outage``). Nothing to reconnect by hand: redis-py opens a new connection on
the next call, and the breaker's probe notices when the store is back.

Most checkouts need no round trip at all: while the store holds a version lease (see
``gateway.keys``: the live version, confirmed within the last ``VERSION_LEASE_SECONDS`` with
no publish under way), a request whose records the cache holds for that very version is
answered from the cache. The lease is what makes that safe: the loader cannot move ``live``
before every lease on the old version has run out, so such an answer is from the version
live at that moment, exactly what the read script would have returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar, cast

import redis.exceptions

from gateway.breaker import BreakerOpen, CircuitBreaker
from gateway.cache import RecordCache
from gateway.keys import VERSION_LEASE_SECONDS, Keys
from gateway.outage import OutagePolicy, usable_lookup
from gateway.records import DepartmentActions, InstitutionRecord, StaffRecord
from gateway.redis_client import AsyncRedis, ReadOnlyScript
from gateway.redis_permissions import PermissionWatch, is_permission_error
from gateway.versions import VersionMeta

T = TypeVar("T")

# What a failed store call raises (BreakerOpen is a ConnectionError, hence an OSError).
STORE_ERRORS = (redis.exceptions.RedisError, OSError)
# Stands in for a version when the store is down and nothing was ever read (accept-flagged).
NO_VERSION = VersionMeta(version="", as_of=0.0, tables={})

log = logging.getLogger(__name__)

# KEYS: live, staff table, institution table, department table.
# ARGV: expected version, institution code, staff codes...
# Reply: {live} when live differs from the expected version, else
#        {version, institution record, department record, staff records...}.
READ_SCRIPT = """
local live = redis.call('GET', KEYS[1])
if live ~= ARGV[1] then return {live or false} end
local out = {live,
  redis.call('HGET', KEYS[3], ARGV[2]) or false,
  redis.call('HGET', KEYS[4], ARGV[2]) or false}
local n = #ARGV
local i = 3
while i <= n do
  local j = math.min(i + 499, n)
  local recs = redis.call('HMGET', KEYS[2], unpack(ARGV, i, j))
  for k = 1, #recs do out[#out + 1] = recs[k] end
  i = j + 1
end
return out
"""

MAX_VERSION_CHASES = 3

# Times one Redis call by name ("read", "live", "meta"); the gateway's metrics provide it.
CallTimer = Callable[[str], AbstractContextManager[None]]


def _untimed(call: str) -> AbstractContextManager[None]:
    return contextlib.nullcontext()


class NoDataError(RuntimeError):
    """No data version is live: nothing has been loaded yet."""


class IncompleteVersion(NoDataError):
    """The live version lacks staff or institutions (``VersionMeta.missing_kinds``), so the
    gateway does not adopt it: judged on it, every line would be rejected for a reason that
    is not true (STAFF_UNREGISTERED for everyone). Like an outage, the cache answers."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one request is judged on: records of one version."""

    meta: VersionMeta
    institution: InstitutionRecord | None
    departments: DepartmentActions | None
    staff: dict[str, StaffRecord | None]
    # True when the records did not come from the live store (e.g. a fallback cache).
    degraded: bool = False
    # Degraded answers under ``accept-flagged`` only: data the cache did not have.
    institution_known: bool = True
    missing_staff: frozenset[str] = field(default_factory=frozenset)

    @property
    def has_gaps(self) -> bool:
        return not self.institution_known or bool(self.missing_staff)


@dataclass(frozen=True, slots=True)
class VersionLease:
    """``meta`` is live until ``expires`` (``time.monotonic()``): no publish can move
    ``live`` before then."""

    meta: VersionMeta
    expires: float


class Store:
    """Reads records for requests and tracks the live version."""

    def __init__(
        self,
        client: AsyncRedis,
        keys: Keys,
        timed: CallTimer = _untimed,
        cache: RecordCache | None = None,
        breaker: CircuitBreaker | None = None,
        outage_policy: OutagePolicy = OutagePolicy.REFUSE,
        degraded_max_age_seconds: float = 600.0,
        on_incomplete: Callable[[], None] = lambda: None,
    ) -> None:
        self.client = client
        self.keys = keys
        self._timed = timed
        self.cache = cache if cache is not None else RecordCache()
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self.outage_policy = outage_policy
        self.degraded_max_age_seconds = degraded_max_age_seconds
        self._script = ReadOnlyScript(client, READ_SCRIPT)
        self._meta: VersionMeta | None = None
        self._meta_lock = asyncio.Lock()
        self._lease: VersionLease | None = None
        self.lease_seconds = VERSION_LEASE_SECONDS
        # Counts each time the live version is declined for being incomplete.
        self._on_incomplete = on_incomplete
        # The last version declined (versions never change: no need to read it again).
        self._declined: VersionMeta | None = None
        # Refusals for want of a permission (a misconfigured ACL), told apart from outages.
        self.permissions = PermissionWatch()

    async def _call(self, operation: Awaitable[T]) -> T:
        """One store call through the breaker."""
        try:
            self.breaker.before_call()
        except BreakerOpen:
            if asyncio.iscoroutine(operation):
                operation.close()
            raise
        try:
            result = await operation
        except STORE_ERRORS as exc:
            self.breaker.failed()
            if is_permission_error(exc):
                self.permissions.saw(exc)
            raise
        except BaseException:
            self.breaker.abandoned()
            raise
        self.breaker.succeeded()
        return result

    def fallback_ready(self) -> bool:
        """Whether the cache could answer now, were the store down."""
        age = self.cache.age_seconds()
        return self.cache.has_records and age is not None and age <= self.degraded_max_age_seconds

    @property
    def meta(self) -> VersionMeta | None:
        """The version last seen live (None before the first successful read)."""
        return self._meta

    async def refresh(self) -> VersionMeta | None:
        """Re-read the live pointer and, if it moved, the new version's metadata."""
        with self._timed("live"):
            live = await self._call(self.client.get(self.keys.live))
        if live is None:
            self._meta = None
            return None
        meta = await self._adopt(cast(bytes, live).decode())
        self.cache.confirm(meta)
        return meta

    async def _adopt(self, version: str) -> VersionMeta:
        current = self._meta
        if current is not None and current.version == version:
            return current
        async with self._meta_lock:
            current = self._meta
            if current is not None and current.version == version:
                return current
            declined = self._declined
            if declined is not None and declined.version == version:
                self._decline(declined, first=False)
            with self._timed("meta"):
                raw = await self._call(self.client.hgetall(self.keys.version_meta(version)))
            if not raw:
                raise NoDataError(f"live version {version} has no metadata")
            meta = VersionMeta.from_hash(cast(dict[bytes, bytes], raw))
            if meta.missing_kinds():
                self._declined = meta
                self._decline(meta, first=True)
            self._meta = meta
            log.info("data version adopted", extra={"data_version": version})
            return meta

    def _decline(self, meta: VersionMeta, first: bool) -> NoReturn:
        """Refuse to adopt an incomplete version: count it, say why (once per version), and
        keep the version served so far (the cache answers, degraded, as in an outage)."""
        self._on_incomplete()
        missing = " and ".join(meta.missing_kinds())
        if first:
            log.error(
                "live data version not adopted: it has no %s records; answering from the cache "
                "(degraded) until a complete version is published",
                missing,
                extra={
                    "data_version": meta.version,
                    "missing": missing,
                    "serving": self._meta and self._meta.version,
                },
            )
        raise IncompleteVersion(f"the live data version {meta.version} has no {missing} records: not adopted")

    async def renew_lease(self) -> VersionLease | None:
        """Read ``live`` and the loader's switching mark in one call; with no mark, hold a
        lease on the live version for ``lease_seconds`` from the moment the call was sent."""
        # A lease held meanwhile stays good until it expires, whatever this call finds: the
        # loader cannot move ``live`` before then, even if this gateway cannot reach Redis.
        sent = time.monotonic()
        with self._timed("lease"):
            live, switching = await self._call(self.client.mget(self.keys.live, self.keys.switching))
        if live is None or switching is not None:
            self._lease = None
            return None
        try:
            meta = await self._adopt(cast(bytes, live).decode())
        except NoDataError:
            self._lease = None
            raise
        # A renewal answered before a publish but processed after the read path adopted the
        # new version is too old to confirm anything.
        self._lease = VersionLease(meta, sent + self.lease_seconds) if self.cache.confirm(meta) else None
        return self._lease

    def _current_lease(self) -> VersionLease | None:
        lease = self._lease
        return lease if lease is not None and time.monotonic() < lease.expires else None

    def lease_holds(self) -> bool:
        """Whether a version lease vouches for the cached version right now."""
        return self._current_lease() is not None

    def read_leased(self, institution: str, codes: Sequence[str]) -> Snapshot | None:
        """The request's records from the cache, when a lease vouches that their version is
        live now and the cache holds every one of them; else None (ask Redis)."""
        lease = self._current_lease()
        if lease is None:
            return None
        cached = self.cache.lookup(institution, codes, version=lease.meta.version)
        if cached is None or not cached.complete:
            return None
        return Snapshot(
            meta=lease.meta,
            institution=cached.institution,
            departments=cached.departments,
            staff=cached.staff,
        )

    def _table_key(self, meta: VersionMeta, kind: str) -> str:
        table = meta.tables.get(kind)
        # A kind never loaded reads from a key that does not exist: every lookup is nil.
        return self.keys.table(kind, table or "none")

    async def fetch_raw(self, meta: VersionMeta, institution: str, codes: Sequence[str]) -> list[Any]:
        """The read script's undecoded reply (the benchmarks' data ceiling calls this too)."""
        reply: list[Any] = await self._script(
            keys=[
                self.keys.live,
                self._table_key(meta, "staff"),
                self._table_key(meta, "institution"),
                self._table_key(meta, "department"),
            ],
            args=[meta.version, institution, *codes],
        )
        return reply

    async def read(self, institution: str, codes: Sequence[str]) -> Snapshot:
        """The records for one request: live, or degraded from the cache, or
        ``StoreUnavailable`` / ``NoDataError``."""
        leased = self.read_leased(institution, codes)
        if leased is not None:
            return leased
        try:
            snapshot = await self.read_live(institution, codes)
        except NoDataError as exc:
            if self.cache.newest is None:
                raise  # never had data: nothing is loaded, not an outage
            return self._fallback(institution, codes, str(exc))
        except STORE_ERRORS as exc:
            return self._fallback(institution, codes, f"{type(exc).__name__}: {exc}")
        self.cache.remember(
            snapshot.meta, institution, snapshot.institution, snapshot.departments, snapshot.staff
        )
        return snapshot

    def _fallback(self, institution: str, codes: Sequence[str], cause: str) -> Snapshot:
        lookup = usable_lookup(
            self.cache.lookup(institution, codes),
            self.outage_policy,
            self.degraded_max_age_seconds,
            cause,
        )
        if lookup is None:
            return Snapshot(
                NO_VERSION, None, None, {}, True, institution_known=False, missing_staff=frozenset(codes)
            )
        return Snapshot(
            meta=lookup.meta,
            institution=lookup.institution,
            departments=lookup.departments,
            staff=lookup.staff,
            degraded=True,
            institution_known=lookup.institution_known,
            missing_staff=lookup.missing_staff,
        )

    async def read_live(self, institution: str, codes: Sequence[str]) -> Snapshot:
        """The records for one request from Redis, of exactly one version."""
        meta = self._meta or await self.refresh()
        if meta is None:
            raise NoDataError("no data has been loaded")
        for _ in range(MAX_VERSION_CHASES):
            # Hot records: what the cache holds *of this very version* need not be fetched
            # or decoded again. The script still checks that the version is live, in the
            # same atomic step that fetches the rest, so nothing from a superseded version
            # is ever used: after a publish it answers "moved", and the cache holds nothing
            # of the new version yet.
            cached = self.cache.lookup(institution, codes, version=meta.version)
            staff: dict[str, StaffRecord | None] = {}
            fetch = codes
            if cached is not None:
                staff = cached.staff
                fetch = [code for code in codes if code in cached.missing_staff]
            with self._timed("read"):
                reply = await self._call(self.fetch_raw(meta, institution, fetch))
            if len(reply) == 1:
                if reply[0] is None:
                    self._meta = None
                    raise NoDataError("no data version is live")
                meta = await self._adopt(reply[0].decode())
                continue
            _, inst_raw, dept_raw, *staff_raw = reply
            for code, raw in zip(fetch, staff_raw, strict=True):
                staff[code] = StaffRecord.decode(raw) if raw else None
            if cached is not None and cached.institution_known:
                institution_record, departments = cached.institution, cached.departments
            else:
                institution_record = InstitutionRecord.decode(inst_raw) if inst_raw else None
                departments = DepartmentActions.decode(dept_raw) if dept_raw else None
            return Snapshot(meta=meta, institution=institution_record, departments=departments, staff=staff)
        # Publishes faster than reads: as good as no data for this request (fallback or
        # UNAVAILABLE), never an unexplained error.
        raise NoDataError(f"the data version changed {MAX_VERSION_CHASES} times during one read")
