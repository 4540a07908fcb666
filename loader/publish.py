"""Write data versions into Redis without readers ever seeing half of one.

Full export: the records stream into a fresh staging table (registered in ``{ns}:staging``
and given a TTL, so a killed loader's leftovers are found and unlinked by the next run) in
pipelined batches of ``WRITE_BATCH`` fields — each HSET blocks Redis for about a
millisecond, so the gateway keeps answering throughout. The table is then verified (field
count and a sample of records read back) and one server-side script checks that the live
version is still the one we started from, writes the new version's metadata and moves
``live`` — atomically. The replaced table is retired and unlinked (UNLINK: freed off the
main thread) after a grace period by a later run.

Several files, one version: each kind's new table is staged the same way (a delta's as a
copy of the live table with its changes), and one commit script makes all of them live
together, so the gateway never serves some of the files without the others.

Delta: up to ``INPLACE_DELTA_MAX`` changed records are applied to the live table by one
script that also moves ``live``, so the change is atomic per file and blocks Redis for a
few milliseconds at most. A bigger delta (a province re-sending half its staff) would make
that one script block Redis for seconds, so it is published copy-on-write instead: the
live table is copied with HSCAN into a staging table, the changes applied there, and the
result committed like a full export.

All keys share the namespace hash tag (see ``gateway.keys``), so both scripts are
single-slot and run unchanged on a Redis Cluster.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis.exceptions

from gateway.keys import (
    HISTORY_LENGTH,
    RETIRE_GRACE_SECONDS,
    STAGING_TTL_SECONDS,
    SWITCH_MARK_TTL_SECONDS,
    SWITCH_WAIT_SECONDS,
    VERSION_META_TTL_SECONDS,
    Keys,
)
from gateway.redis_client import SyncRedis, confirm_replicated
from gateway.versions import Source, VersionMeta, new_version_id
from loader.lock import PublishLock

log = logging.getLogger(__name__)

# Fields per HSET: one command holds Redis for under a millisecond (measured: ~0.9 µs per
# field), so gateway reads interleave with the publish.
WRITE_BATCH = 1000
# HSETs per round trip.
PIPELINE_DEPTH = 16
# Changed records a delta may apply in place with one script (a few ms of Redis time).
INPLACE_DELTA_MAX = 5000
READ_BATCH = 5000
VERIFY_SAMPLE = 200
MAX_SOURCES_PER_KIND = 200

# KEYS: live, new meta, history, retired, staging, switching, previous meta, then for each
#       table of the version: its new (staged) table, the table it replaces
# ARGV: expected live ('' none), new version, now, meta ttl, history length, number of
#       tables n, n flags (two characters: '1' if a replaced table exists to retire, then '1'
#       if the new table holds records and so must exist), meta field/value pairs...
# Every table of one publish (one or several files) goes live in the same step. The new
# version's metadata never expires while live; the one it replaces is kept
# VERSION_META_TTL_SECONDS for disputes.
COMMIT_FULL = """
local live = redis.call('GET', KEYS[1]) or ''
if live ~= ARGV[1] then return redis.error_reply('CONFLICT live version is now ' .. live) end
if redis.call('GET', KEYS[6]) ~= ARGV[2] then return redis.error_reply('SWITCH mark gone') end
local n = tonumber(ARGV[6])
for i = 1, n do
  local must_exist = string.sub(ARGV[6 + i], 2, 2) == '1'
  if must_exist and redis.call('EXISTS', KEYS[6 + 2 * i]) == 0 then
    return redis.error_reply('STAGING table vanished')
  end
end
redis.call('DEL', KEYS[6])
redis.call('HSET', KEYS[2], unpack(ARGV, 7 + n))
if live ~= '' then redis.call('EXPIRE', KEYS[7], ARGV[4]) end
for i = 1, n do
  redis.call('PERSIST', KEYS[6 + 2 * i])
  redis.call('ZREM', KEYS[5], KEYS[6 + 2 * i])
  if string.sub(ARGV[6 + i], 1, 1) == '1' then redis.call('ZADD', KEYS[4], ARGV[3], KEYS[7 + 2 * i]) end
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('LPUSH', KEYS[3], ARGV[2])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[5]) - 1)
return 'OK'
"""

# KEYS: live, new meta, history, table, previous meta, switching
# ARGV: expected live, new version, meta ttl, history length, #meta args, #upsert args,
#       meta pairs..., upsert field/value pairs..., fields to delete...
COMMIT_DELTA = """
local live = redis.call('GET', KEYS[1]) or ''
if live ~= ARGV[1] then return redis.error_reply('CONFLICT live version is now ' .. live) end
if redis.call('GET', KEYS[6]) ~= ARGV[2] then return redis.error_reply('SWITCH mark gone') end
redis.call('DEL', KEYS[6])
local nmeta = tonumber(ARGV[5])
local nup = tonumber(ARGV[6])
local first = 7
redis.call('HSET', KEYS[2], unpack(ARGV, first, first + nmeta - 1))
if live ~= '' then redis.call('EXPIRE', KEYS[5], ARGV[3]) end
local i = first + nmeta
local up_end = i + nup - 1
while i <= up_end do
  local j = math.min(i + 999, up_end)
  redis.call('HSET', KEYS[4], unpack(ARGV, i, j))
  i = j + 1
end
local n = #ARGV
while i <= n do
  local j = math.min(i + 999, n)
  redis.call('HDEL', KEYS[4], unpack(ARGV, i, j))
  i = j + 1
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('LPUSH', KEYS[3], ARGV[2])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[4]) - 1)
return 'OK'
"""

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class FullPart:
    """A full export's records for one kind's new table."""

    kind: str
    source: Source
    records: Iterable[tuple[str, bytes]]
    total: int = 0  # the expected number, for progress only


@dataclass(frozen=True)
class DeltaPart:
    """A delta for one kind: its changed records (None = removed) and the change in count."""

    kind: str
    source: Source
    changes: Mapping[str, bytes | None]
    growth: int


@dataclass(frozen=True)
class _Made:
    """A table written for a new version: its kind, id, record count and a sample to verify."""

    kind: str
    table: str
    count: int
    sample: Mapping[str, bytes]
    source: Source


class PublishConflict(RuntimeError):
    """Another writer changed the live version while this one was preparing."""


class StagingError(RuntimeError):
    """The staged table did not read back as written; nothing was published."""


def _flatten(mapping: Mapping[str, bytes]) -> list[Any]:
    out: list[Any] = []
    for key, value in mapping.items():
        out.append(key)
        out.append(value)
    return out


def _with_source(meta_sources: tuple[Source, ...], source: Source) -> tuple[Source, ...]:
    """Provenance after loading ``source``: a full load of a kind replaces that kind's history."""
    kept = [s for s in meta_sources if not (source.mode == "full" and s.kind == source.kind)]
    kept.append(source)
    same_kind = [s for s in kept if s.kind == source.kind]
    if len(same_kind) > MAX_SOURCES_PER_KIND:
        drop = set(map(id, same_kind[: len(same_kind) - MAX_SOURCES_PER_KIND]))
        kept = [s for s in kept if id(s) not in drop]
    return tuple(kept)


def _conflict_or_raise(exc: redis.exceptions.ResponseError) -> None:
    if "CONFLICT" in str(exc):
        raise PublishConflict(str(exc)) from exc
    if "SWITCH" in str(exc):
        raise PublishConflict(
            f"{exc}: this loader stalled past the switching mark's {SWITCH_MARK_TTL_SECONDS} s twice; "
            "nothing was published, run it again"
        ) from exc
    if "STAGING" in str(exc):
        raise StagingError(f"{exc}: did it expire? (staging TTL {STAGING_TTL_SECONDS}s)") from exc
    raise exc


class _Writer:
    """A thread writing batches of field/value arguments into one staging hash: pipelined
    HSETs of ``WRITE_BATCH`` fields, ``PIPELINE_DEPTH`` per round trip, the TTL renewed on
    each. The first error stops the writes and is raised in the caller's thread."""

    def __init__(self, client: SyncRedis, key: str) -> None:
        self.client = client
        self.key = key
        self._batches: queue.Queue[list[Any] | None] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="staging-writer", daemon=True)

    def __enter__(self) -> _Writer:
        self._thread.start()
        return self

    def send(self, args: list[Any]) -> None:
        if self._error is not None:
            raise self._error
        if args:
            self._batches.put(args)

    def __exit__(self, *exc: object) -> None:
        self._batches.put(None)  # the writer drains to this mark even after an error
        self._thread.join()
        if self._error is not None and exc[0] is None:
            raise self._error

    def _run(self) -> None:
        pipe = self.client.pipeline(transaction=False)
        step = 2 * WRITE_BATCH
        created = False
        while (args := self._batches.get()) is not None:
            if self._error is not None:
                continue
            try:
                if not created:  # the TTL is in place before the bulk of the data arrives
                    pipe.execute_command("HSET", self.key, args[0], args[1])
                    pipe.expire(self.key, STAGING_TTL_SECONDS)
                    pipe.execute()
                    args, created = args[2:], True
                for start in range(0, len(args), step):
                    pipe.execute_command("HSET", self.key, *args[start : start + step])
                pipe.expire(self.key, STAGING_TTL_SECONDS)
                pipe.execute()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                self._error = exc


class Publisher:
    """The only writer of data versions."""

    def __init__(
        self,
        client: SyncRedis,
        keys: Keys,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.keys = keys
        self.clock = clock
        self.sleep = sleep
        self._commit_full = client.register_script(COMMIT_FULL)
        self._commit_delta = client.register_script(COMMIT_DELTA)
        self._lock = PublishLock(client, keys.lock)

    # -- reading ----------------------------------------------------------------------------

    def live_meta(self) -> VersionMeta | None:
        live = self.client.get(self.keys.live)
        if live is None:
            return None
        raw = self.client.hgetall(self.keys.version_meta(cast(bytes, live).decode()))
        return VersionMeta.from_hash(cast(dict[bytes, bytes], raw)) if raw else None

    def live_records(
        self, kind: str, ids: list[str], meta: VersionMeta | None = None
    ) -> dict[str, bytes | None]:
        meta = meta or self.live_meta()
        table = meta.tables.get(kind) if meta else None
        if not table or not ids:
            return dict.fromkeys(ids)
        key = self.keys.table(kind, table)
        out: dict[str, bytes | None] = {}
        for start in range(0, len(ids), READ_BATCH):
            chunk = ids[start : start + READ_BATCH]
            values = cast(list[bytes | None], self.client.hmget(key, chunk))
            out.update(zip(chunk, values, strict=True))
        return out

    # -- locking ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, wait_seconds: float = 60.0) -> Iterator[None]:
        """One publisher at a time; also clears what a killed publisher left behind."""
        with self._lock.held(wait_seconds):
            self.remove_abandoned_staging()
            # A killed publisher's switching mark only keeps gateways off their leases.
            self.client.delete(self.keys.switching)
            yield

    def remove_abandoned_staging(self) -> int:
        """Unlink staging tables of publishes that never committed (call with the lock held)."""
        abandoned = cast(list[bytes], self.client.zrange(self.keys.staging, 0, -1))
        for key in abandoned:
            self.client.unlink(key.decode())
            self.client.zrem(self.keys.staging, key)
            log.warning("removed an unfinished publish's staging table", extra={"table": key.decode()})
        return len(abandoned)

    # -- publishing -------------------------------------------------------------------------

    def _next_meta(self, base: VersionMeta | None, parts: Sequence[_Made]) -> VersionMeta:
        """The metadata of the version ``parts`` (one new table per kind) make of ``base``."""
        now = self.clock()
        tables = dict(base.tables) if base else {}
        counts = dict(base.counts) if base else {}
        sources = base.sources if base else ()
        for part in parts:
            tables[part.kind] = part.table
            counts[part.kind] = part.count
            sources = _with_source(sources, part.source)
        return VersionMeta(
            version=new_version_id(now),
            as_of=now,
            tables=tables,
            counts=counts,
            sources=sources,
            previous=base.version if base else "",
        )

    def _stage(
        self, kind: str, records: Iterable[tuple[str, bytes]], total: int, progress: Progress | None
    ) -> tuple[str, int, dict[str, bytes]]:
        """Write ``records`` into a new staging table; returns its id, the number of fields
        sent and a sample of them for verification.

        Encoding (this thread) and writing (a writer thread, which waits on Redis with the GIL
        released) overlap, so Redis works through one round trip while the next is encoded."""
        table_id = new_version_id(self.clock())
        key = self.keys.table(kind, table_id)
        self.client.zadd(self.keys.staging, {key: self.clock()})
        sent = 0
        sample: dict[str, bytes] = {}
        every = max(1, total // VERIFY_SAMPLE)
        round_trip = 2 * WRITE_BATCH * PIPELINE_DEPTH
        with _Writer(self.client, key) as writer:
            args: list[Any] = []
            for field, value in records:
                args.append(field)
                args.append(value)
                if sent % every == 0:
                    sample[field] = value
                sent += 1
                if len(args) >= round_trip:
                    writer.send(args)
                    args = []
                    if progress is not None:
                        progress(sent, total)
            writer.send(args)
        if progress is not None:
            progress(sent, total)
        return table_id, sent, sample

    def _verify(self, kind: str, table_id: str, expected: int, sample: Mapping[str, bytes]) -> None:
        key = self.keys.table(kind, table_id)
        staged = self.client.hlen(key)
        if staged != expected:
            raise StagingError(f"staging verification failed: expected {expected} records, found {staged}")
        if sample:
            back = cast(list[bytes | None], self.client.hmget(key, list(sample)))
            wrong = [f for f, got in zip(sample, back, strict=True) if got != sample[f]]
            if wrong:
                raise StagingError(f"staging verification failed: {len(wrong)} sampled records differ")

    def _commit_staged(self, staged: Sequence[_Made], base: VersionMeta | None) -> VersionMeta:
        """Verify each staged table holds its count and its sample, then make them all live
        in one step, as one version."""
        table_keys = [self.keys.table(part.kind, part.table) for part in staged]
        try:
            for part in staged:
                self._verify(part.kind, part.table, part.count, part.sample)
        except StagingError:
            for key in table_keys:
                self._discard(key)
            raise
        meta = self._next_meta(base, staged)
        keys = [
            self.keys.live,
            self.keys.version_meta(meta.version),
            self.keys.history,
            self.keys.retired,
            self.keys.staging,
            self.keys.switching,
            self._previous_meta_key(base, meta),
        ]
        retire: list[str] = []
        for part, table_key in zip(staged, table_keys, strict=True):
            old_table = base.tables.get(part.kind) if base else None
            keys += [table_key, self.keys.table(part.kind, old_table) if old_table else table_key]
            # An empty table (a forced delta removing every record) is no hash in Redis.
            retire.append(("1" if old_table else "0") + ("1" if part.count > 0 else "0"))
        args = [
            base.version if base else "",
            meta.version,
            meta.as_of,
            VERSION_META_TTL_SECONDS,
            HISTORY_LENGTH,
            len(staged),
            *retire,
            *_flatten(meta.to_hash()),
        ]
        try:
            self._switch(meta.version, lambda: self._commit_full(keys=keys, args=args))
        except redis.exceptions.ResponseError as exc:
            for key in table_keys:
                self._discard(key)
            _conflict_or_raise(exc)
        self._announce(meta)
        return meta

    def _switch(self, version: str, commit: Callable[[], object]) -> None:
        """Run ``commit`` (a script that moves ``live`` to ``version``) only once every
        gateway's lease on the current version has run out: put up the switching mark, wait
        ``SWITCH_WAIT_SECONDS``, commit. The script refuses if the mark is gone (it expired
        while this process stalled, so a gateway may hold a fresh lease): then once more."""
        try:
            for attempt in (1, 2):
                self.client.set(self.keys.switching, version, ex=SWITCH_MARK_TTL_SECONDS)
                self.sleep(SWITCH_WAIT_SECONDS)
                try:
                    commit()
                    confirm_replicated(self.client, f"publishing {version}")
                    return
                except redis.exceptions.ResponseError as exc:
                    if not str(exc).startswith("SWITCH") or attempt == 2:
                        raise
                    log.warning("the switching mark expired before the commit; waiting again")
        except BaseException:
            with contextlib.suppress(redis.exceptions.RedisError):
                if self.client.get(self.keys.switching) == version.encode():
                    self.client.delete(self.keys.switching)
            raise

    def _discard(self, table_key: str) -> None:
        with contextlib.suppress(redis.exceptions.RedisError):
            self.client.unlink(table_key)
            self.client.zrem(self.keys.staging, table_key)

    def publish_full(
        self,
        kind: str,
        records: Iterable[tuple[str, bytes]],
        source: Source,
        base: VersionMeta | None,
        total: int = 0,
        progress: Progress | None = None,
    ) -> VersionMeta:
        """Stage ``records`` (a stream of key, encoded record) as the new ``kind`` table and
        make it live atomically. ``total`` (the expected number) only drives ``progress``."""
        return self.publish_set([FullPart(kind, source, records, total)], base, progress)

    def publish_set(
        self,
        parts: Sequence[FullPart | DeltaPart],
        base: VersionMeta | None,
        progress: Progress | None = None,
    ) -> VersionMeta:
        """Stage one new table per part (a full export's records, or a delta applied to a
        copy of the live table) and make them all live at once, as one version: the gateway
        never sees some of the files without the others. One part per kind."""
        if len({part.kind for part in parts}) != len(parts):
            raise ValueError("one part per kind in a version")
        staged: list[_Made] = []
        try:
            for part in parts:
                if isinstance(part, FullPart):
                    table_id, sent, sample = self._stage(part.kind, part.records, part.total, progress)
                    staged.append(_Made(part.kind, table_id, sent, sample, part.source))
                else:
                    staged.append(self._stage_delta_copy(part, base, progress))
        except BaseException:
            for made in staged:
                self._discard(self.keys.table(made.kind, made.table))
            raise
        return self._commit_staged(staged, base)

    def publish_delta(
        self,
        kind: str,
        changes: Mapping[str, bytes | None],
        live: Mapping[str, bytes | None],
        source: Source,
        base: VersionMeta | None,
        progress: Progress | None = None,
    ) -> VersionMeta:
        """Apply ``changes`` (None = remove) atomically; ``live`` holds the current record
        of every changed key (None if absent), for the new count."""
        added = sum(1 for k, v in changes.items() if v is not None and live.get(k) is None)
        removed = sum(1 for k, v in changes.items() if v is None and live.get(k) is not None)
        live_table = base.tables.get(kind) if base else None
        if len(changes) > INPLACE_DELTA_MAX:
            return self._publish_delta_copy(kind, changes, added - removed, source, base, progress)
        count = (base.counts.get(kind, 0) if base else 0) + added - removed
        return self._publish_delta_inplace(kind, live_table, changes, count, source, base)

    def _publish_delta_inplace(
        self,
        kind: str,
        live_table: str | None,
        changes: Mapping[str, bytes | None],
        count: int,
        source: Source,
        base: VersionMeta | None,
    ) -> VersionMeta:
        table_id = live_table or new_version_id(self.clock())
        upserts = {k: v for k, v in changes.items() if v is not None}
        deletes = [k for k, v in changes.items() if v is None]
        meta = self._next_meta(base, [_Made(kind, table_id, count, {}, source)])
        meta_args = _flatten(meta.to_hash())
        upsert_args = _flatten(upserts)
        try:
            self._switch(
                meta.version,
                lambda: self._commit_delta(
                    keys=[
                        self.keys.live,
                        self.keys.version_meta(meta.version),
                        self.keys.history,
                        self.keys.table(kind, table_id),
                        self._previous_meta_key(base, meta),
                        self.keys.switching,
                    ],
                    args=[
                        base.version if base else "",
                        meta.version,
                        VERSION_META_TTL_SECONDS,
                        HISTORY_LENGTH,
                        len(meta_args),
                        len(upsert_args),
                        *meta_args,
                        *upsert_args,
                        *deletes,
                    ],
                ),
            )
        except redis.exceptions.ResponseError as exc:
            _conflict_or_raise(exc)
        self._announce(meta)
        return meta

    def _publish_delta_copy(
        self,
        kind: str,
        changes: Mapping[str, bytes | None],
        growth: int,
        source: Source,
        base: VersionMeta | None,
        progress: Progress | None,
    ) -> VersionMeta:
        log.info("large delta: publishing copy-on-write", extra={"changes": len(changes), "kind": kind})
        return self._commit_staged(
            [self._stage_delta_copy(DeltaPart(kind, source, changes, growth), base, progress)], base
        )

    def _stage_delta_copy(
        self, part: DeltaPart, base: VersionMeta | None, progress: Progress | None
    ) -> _Made:
        """A copy of the live ``part.kind`` table (HSCAN, in batches) with the delta applied,
        staged as a new table."""
        live_table = base.tables.get(part.kind) if base else None
        live_key = self.keys.table(part.kind, live_table) if live_table else None
        count = (int(self.client.hlen(live_key)) if live_key else 0) + part.growth
        changes = part.changes

        def merged() -> Iterator[tuple[str, bytes]]:
            cursor = 0
            while live_key is not None:
                cursor, chunk = cast(
                    tuple[int, dict[bytes, bytes]], self.client.hscan(live_key, cursor, count=READ_BATCH)
                )
                for raw_field, value in chunk.items():
                    field = raw_field.decode()
                    if field not in changes:
                        yield field, value
                if cursor == 0:
                    break
            for field, new in changes.items():
                if new is not None:
                    yield field, new

        table_id, _, sample = self._stage(part.kind, merged(), count, progress)
        # HSCAN may return a field twice; HSET makes that harmless, and the count is computed.
        return _Made(part.kind, table_id, count, sample, part.source)

    def table_records(self, kind: str, table: str | None) -> Iterator[tuple[str, bytes]]:
        """Every record of one table (HSCAN, in batches); nothing when there is no table."""
        if not table:
            return
        key = self.keys.table(kind, table)
        cursor = 0
        while True:
            cursor, chunk = cast(
                tuple[int, dict[bytes, bytes]], self.client.hscan(key, cursor, count=READ_BATCH)
            )
            for raw_field, value in chunk.items():
                yield raw_field.decode(), value
            if cursor == 0:
                return

    def _previous_meta_key(self, base: VersionMeta | None, meta: VersionMeta) -> str:
        # With no previous version the script ignores this key; it must still be in the slot.
        return self.keys.version_meta(base.version if base else meta.version)

    def _announce(self, meta: VersionMeta) -> None:
        with contextlib.suppress(redis.exceptions.RedisError):
            self.client.publish(self.keys.published_channel, meta.version)
        log.info("data version published", extra={"data_version": meta.version, "counts": dict(meta.counts)})

    def collect_garbage(self, grace_seconds: float = RETIRE_GRACE_SECONDS) -> int:
        """Unlink tables retired more than ``grace_seconds`` ago; returns how many."""
        cutoff = self.clock() - grace_seconds
        due = cast(list[bytes], self.client.zrangebyscore(self.keys.retired, "-inf", cutoff))
        for key in due:
            self.client.unlink(key.decode())
            self.client.zrem(self.keys.retired, key)
        return len(due)
