"""Write data versions into Redis without readers ever seeing half of one.

Full export: the records go into a fresh staging table (with a TTL, so a killed loader
leaves nothing behind for long), are verified, and one server-side script then checks that
the live version is still the one we started from, writes the new version's metadata and
moves ``live`` — atomically. The replaced table is retired and unlinked after a grace period.

Delta: the changed records, the new metadata and the ``live`` move are one script call on
the live table, so the change is atomic per file.

All keys share the namespace hash tag (see ``gateway.keys``), so both scripts are
single-slot and run unchanged on a Redis Cluster.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import redis.exceptions

from gateway.keys import (
    HISTORY_LENGTH,
    RETIRE_GRACE_SECONDS,
    STAGING_TTL_SECONDS,
    VERSION_META_TTL_SECONDS,
    Keys,
)
from gateway.redis_client import SyncRedis
from gateway.versions import Source, VersionMeta, new_version_id

log = logging.getLogger(__name__)

WRITE_BATCH = 5000
LOCK_TTL_SECONDS = 900
MAX_SOURCES_PER_KIND = 200

# Both commits: the new version's metadata never expires while live; the one it replaces
# is kept VERSION_META_TTL_SECONDS for disputes.
# KEYS: live, new meta, history, retired, new table, old table, previous meta
# ARGV: expected live ('' none), new version, now, meta ttl, history length,
#       retire old table (0/1), meta field/value pairs...
COMMIT_FULL = """
local live = redis.call('GET', KEYS[1]) or ''
if live ~= ARGV[1] then return redis.error_reply('CONFLICT live version is now ' .. live) end
redis.call('HSET', KEYS[2], unpack(ARGV, 7))
if live ~= '' then redis.call('EXPIRE', KEYS[7], ARGV[4]) end
redis.call('PERSIST', KEYS[5])
if ARGV[6] == '1' then redis.call('ZADD', KEYS[4], ARGV[3], KEYS[6]) end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('LPUSH', KEYS[3], ARGV[2])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[5]) - 1)
return 'OK'
"""

# KEYS: live, new meta, history, table, previous meta
# ARGV: expected live, new version, meta ttl, history length, #meta args, #upsert args,
#       meta pairs..., upsert field/value pairs..., fields to delete...
COMMIT_DELTA = """
local live = redis.call('GET', KEYS[1]) or ''
if live ~= ARGV[1] then return redis.error_reply('CONFLICT live version is now ' .. live) end
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

RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class PublishConflict(RuntimeError):
    """Another writer changed the live version while this one was preparing."""


class LockBusy(RuntimeError):
    """Another loader holds the publish lock."""


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


class Publisher:
    """The only writer of data versions."""

    def __init__(self, client: SyncRedis, keys: Keys, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.keys = keys
        self.clock = clock
        self._commit_full = client.register_script(COMMIT_FULL)
        self._commit_delta = client.register_script(COMMIT_DELTA)
        self._release = client.register_script(RELEASE_LOCK)

    # -- reading ----------------------------------------------------------------------------

    def live_meta(self) -> VersionMeta | None:
        live = self.client.get(self.keys.live)
        if live is None:
            return None
        raw = self.client.hgetall(self.keys.version_meta(cast(bytes, live).decode()))
        return VersionMeta.from_hash(cast(dict[bytes, bytes], raw)) if raw else None

    def live_records(self, kind: str, ids: list[str]) -> dict[str, bytes | None]:
        meta = self.live_meta()
        table = meta.tables.get(kind) if meta else None
        if not table or not ids:
            return dict.fromkeys(ids)
        key = self.keys.table(kind, table)
        out: dict[str, bytes | None] = {}
        for start in range(0, len(ids), WRITE_BATCH):
            chunk = ids[start : start + WRITE_BATCH]
            values = cast(list[bytes | None], self.client.hmget(key, chunk))
            out.update(zip(chunk, values, strict=True))
        return out

    # -- locking ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, wait_seconds: float = 30.0) -> Iterator[None]:
        """One publisher at a time; a crashed holder's lock expires by itself."""
        token = secrets.token_hex(8)
        deadline = time.monotonic() + wait_seconds
        while not self.client.set(self.keys.lock, token, nx=True, ex=LOCK_TTL_SECONDS):
            if time.monotonic() >= deadline:
                raise LockBusy("another settlement-loader is publishing; try again later")
            time.sleep(0.2)
        try:
            yield
        finally:
            with contextlib.suppress(redis.exceptions.RedisError):
                self._release(keys=[self.keys.lock], args=[token])

    # -- publishing -------------------------------------------------------------------------

    def _next_meta(
        self, base: VersionMeta | None, kind: str, table: str, count: int, source: Source
    ) -> VersionMeta:
        now = self.clock()
        tables = dict(base.tables) if base else {}
        tables[kind] = table
        counts = dict(base.counts) if base else {}
        counts[kind] = count
        sources = _with_source(base.sources if base else (), source)
        return VersionMeta(
            version=new_version_id(now),
            as_of=now,
            tables=tables,
            sources=sources,
            counts=counts,
            previous=base.version if base else "",
        )

    def publish_full(
        self,
        kind: str,
        records: Mapping[str, bytes],
        source: Source,
        base: VersionMeta | None,
        progress: Callable[[int], None] | None = None,
    ) -> VersionMeta:
        """Stage ``records`` as the new ``kind`` table and make it live atomically."""
        table_id = f"{new_version_id(self.clock())}"
        table_key = self.keys.table(kind, table_id)
        items = list(records.items())
        for start in range(0, len(items), WRITE_BATCH):
            batch = dict(items[start : start + WRITE_BATCH])
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(table_key, mapping=batch)  # type: ignore[arg-type]
            pipe.expire(table_key, STAGING_TTL_SECONDS)
            pipe.execute()
            if progress is not None:
                progress(len(batch))
        staged = self.client.hlen(table_key)
        if staged != len(records):
            raise RuntimeError(f"staging verification failed: wrote {len(records)} records, found {staged}")
        meta = self._next_meta(base, kind, table_id, len(records), source)
        old_table = base.tables.get(kind) if base else None
        old_key = self.keys.table(kind, old_table) if old_table else table_key
        try:
            self._commit_full(
                keys=[
                    self.keys.live,
                    self.keys.version_meta(meta.version),
                    self.keys.history,
                    self.keys.retired,
                    table_key,
                    old_key,
                    self._previous_meta_key(base, meta),
                ],
                args=[
                    base.version if base else "",
                    meta.version,
                    meta.as_of,
                    VERSION_META_TTL_SECONDS,
                    HISTORY_LENGTH,
                    "1" if old_table else "0",
                    *_flatten(meta.to_hash()),
                ],
            )
        except redis.exceptions.ResponseError as exc:
            self.client.unlink(table_key)
            if "CONFLICT" in str(exc):
                raise PublishConflict(str(exc)) from exc
            raise
        self._announce(meta)
        return meta

    def publish_delta(
        self,
        kind: str,
        changes: Mapping[str, bytes | None],
        source: Source,
        base: VersionMeta | None,
    ) -> VersionMeta:
        """Apply ``changes`` (None = remove) to the live ``kind`` table in one atomic step."""
        table_id = (base.tables.get(kind) if base else None) or new_version_id(self.clock())
        upserts = {k: v for k, v in changes.items() if v is not None}
        deletes = [k for k, v in changes.items() if v is None]
        live_count = base.counts.get(kind, 0) if base else 0
        existing = self.live_records(kind, list(changes)) if base and base.tables.get(kind) else {}
        added = sum(1 for k in upserts if existing.get(k) is None)
        removed = sum(1 for k in deletes if existing.get(k) is not None)
        meta = self._next_meta(base, kind, table_id, live_count + added - removed, source)
        meta_args = _flatten(meta.to_hash())
        upsert_args = _flatten(upserts)
        try:
            self._commit_delta(
                keys=[
                    self.keys.live,
                    self.keys.version_meta(meta.version),
                    self.keys.history,
                    self.keys.table(kind, table_id),
                    self._previous_meta_key(base, meta),
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
            )
        except redis.exceptions.ResponseError as exc:
            if "CONFLICT" in str(exc):
                raise PublishConflict(str(exc)) from exc
            raise
        self._announce(meta)
        return meta

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
