"""Version metadata: which tables a data version reads and where its data came from.

Stored as the hash ``{ns}:ver:<version>``; written by the loader, read by the gateway (once
per version, then cached) and by ``settlement-loader status``. Every verdict names its
version, so a disputed rejection can be traced to the very files it was judged on.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.keys import TABLE_KINDS

# A version the gateway may judge on has both: without staff every line is STAFF_UNREGISTERED,
# without institutions every line is INSTITUTION_UNREGISTERED — wrong answers, not an outage.
# Departments may be empty (most institutions have no department stop).
REQUIRED_KINDS = ("staff", "institution")


def new_version_id(now: float) -> str:
    """Sortable, readable and unique: ``20261124T035530Z-3fa9c1``."""
    stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class Source:
    """One file that went into a version.

    ``options`` fingerprints the load options that shape what the file produced (mapping,
    code shapes, kept names…): the same bytes read another way are another load, so a re-run
    is skipped only when both the sha256 and this match. Versions recorded before it existed
    read as ``""``, which matches no load, so such a file is loaded again rather than skipped.
    """

    kind: str
    path: str
    sha256: str
    mode: str  # "full" or "delta"
    rows: int
    rejected: int
    loaded_at: float
    options: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": self.path,
            "sha256": self.sha256,
            "mode": self.mode,
            "rows": self.rows,
            "rejected": self.rejected,
            "loaded_at": self.loaded_at,
            "options": self.options,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Source:
        return cls(
            kind=str(doc["kind"]),
            path=str(doc["path"]),
            sha256=str(doc["sha256"]),
            mode=str(doc["mode"]),
            rows=int(doc["rows"]),
            rejected=int(doc["rejected"]),
            loaded_at=float(doc["loaded_at"]),
            options=str(doc.get("options", "")),
        )


@dataclass(frozen=True, slots=True)
class VersionMeta:
    """A version: its id, when it was published, its tables and its provenance."""

    version: str
    as_of: float
    # kind -> table id (the key is Keys.table(kind, id)); a kind never loaded has none.
    tables: Mapping[str, str]
    # Files that built this version: the last full load of each kind and the deltas after it.
    sources: tuple[Source, ...] = ()
    # kind -> number of records (persons, institutions, institutions with department actions).
    counts: Mapping[str, int] = field(default_factory=dict)
    previous: str = ""

    def missing_kinds(self) -> tuple[str, ...]:
        """The required kinds (``REQUIRED_KINDS``) this version has no records of: no table,
        or a table whose recorded count is zero. Empty for a complete version."""
        return tuple(k for k in REQUIRED_KINDS if not self.tables.get(k) or self.counts.get(k, 1) <= 0)

    def to_hash(self) -> dict[str, bytes]:
        return {
            "version": self.version.encode(),
            "as_of": repr(self.as_of).encode(),
            "tables": orjson.dumps(dict(self.tables)),
            "sources": orjson.dumps([s.to_json() for s in self.sources]),
            "counts": orjson.dumps(dict(self.counts)),
            "previous": self.previous.encode(),
        }

    @classmethod
    def from_hash(cls, raw: Mapping[bytes, bytes]) -> VersionMeta:
        def get(name: str) -> bytes:
            return raw.get(name.encode(), b"")

        tables = orjson.loads(get("tables") or b"{}")
        return cls(
            version=get("version").decode(),
            as_of=float(get("as_of") or 0),
            tables={k: v for k, v in tables.items() if k in TABLE_KINDS},
            sources=tuple(Source.from_json(s) for s in orjson.loads(get("sources") or b"[]")),
            counts=orjson.loads(get("counts") or b"{}"),
            previous=get("previous").decode(),
        )
