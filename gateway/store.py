"""The gateway's read side of Redis: one round trip per request, from exactly one version.

A request needs the institution record, its department actions and the records of the
request's distinct staff codes. One server-side script fetches them all after checking that
the version the gateway expects is still live; if the loader published meanwhile, the
script says so, the gateway loads the new version's metadata and asks again. The script
reads only keys it declares, all in one hash-tag slot, so it runs unchanged on a cluster
and needs no write permission.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, cast

from gateway.keys import Keys
from gateway.records import DepartmentActions, InstitutionRecord, StaffRecord
from gateway.redis_client import AsyncRedis
from gateway.versions import VersionMeta

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


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one request is judged on: records of one version."""

    meta: VersionMeta
    institution: InstitutionRecord | None
    departments: DepartmentActions | None
    staff: dict[str, StaffRecord | None]
    # True when the records did not come from the live store (e.g. a fallback cache).
    degraded: bool = False


class Store:
    """Reads records for requests and tracks the live version."""

    def __init__(self, client: AsyncRedis, keys: Keys, timed: CallTimer = _untimed) -> None:
        self.client = client
        self.keys = keys
        self._timed = timed
        self._script = client.register_script(READ_SCRIPT)
        self._meta: VersionMeta | None = None
        self._meta_lock = asyncio.Lock()

    @property
    def meta(self) -> VersionMeta | None:
        """The version last seen live (None before the first successful read)."""
        return self._meta

    async def refresh(self) -> VersionMeta | None:
        """Re-read the live pointer and, if it moved, the new version's metadata."""
        with self._timed("live"):
            live = await self.client.get(self.keys.live)
        if live is None:
            self._meta = None
            return None
        return await self._adopt(cast(bytes, live).decode())

    async def _adopt(self, version: str) -> VersionMeta:
        current = self._meta
        if current is not None and current.version == version:
            return current
        async with self._meta_lock:
            current = self._meta
            if current is not None and current.version == version:
                return current
            with self._timed("meta"):
                raw = await self.client.hgetall(self.keys.version_meta(version))
            if not raw:
                raise NoDataError(f"live version {version} has no metadata")
            meta = VersionMeta.from_hash(cast(dict[bytes, bytes], raw))
            self._meta = meta
            log.info("data version adopted", extra={"data_version": version})
            return meta

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
        meta = self._meta or await self.refresh()
        if meta is None:
            raise NoDataError("no data has been loaded")
        for _ in range(MAX_VERSION_CHASES):
            with self._timed("read"):
                reply = await self.fetch_raw(meta, institution, codes)
            if len(reply) == 1:
                if reply[0] is None:
                    self._meta = None
                    raise NoDataError("no data version is live")
                meta = await self._adopt(reply[0].decode())
                continue
            _, inst_raw, dept_raw, *staff_raw = reply
            return Snapshot(
                meta=meta,
                institution=InstitutionRecord.decode(inst_raw) if inst_raw else None,
                departments=DepartmentActions.decode(dept_raw) if dept_raw else None,
                staff={
                    code: StaffRecord.decode(raw) if raw else None
                    for code, raw in zip(codes, staff_raw, strict=True)
                },
            )
        raise RuntimeError("the data version changed on every attempt; try again")
