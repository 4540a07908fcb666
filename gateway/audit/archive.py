"""The PostgreSQL archive: the audit trail for as long as disputes and audits need it.

The Redis stream is a buffer, capped by memory; the archive is the record. ``audit-archive``
reads the stream with a consumer group (``archive``), inserts each batch in one transaction
(``ON CONFLICT DO NOTHING`` on instance and sequence number: delivered at least once, stored
exactly once), acknowledges it, and only then deletes from the stream the entries it stored.
An entry that is not an audit record (written by hand, or forged) is kept as it came in
``audit_unreadable`` and removed from the stream likewise, so it cannot hold the archive up.

Each data version a record names is copied once into ``audit_version`` with the export files it
was built from (name, sha256): Redis keeps version metadata for 400 days, the archive for good.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
import psycopg
import redis

from gateway.audit.chain import Stored
from gateway.audit.record import RECORD_FIELD, decode, record_hash
from gateway.keys import Keys
from gateway.redis_client import SyncRedis
from gateway.versions import VersionMeta

log = logging.getLogger("gateway.audit")

GROUP = "archive"
READ_BATCH = 1000
BLOCK_MS = 1000

# One idempotent migration: run by ``settlement-gateway audit migrate`` and by the archiver at
# start. Indexes answer the auditor's questions: by settlement, staff, institution, time.
SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_record (
    instance      text        NOT NULL,
    seq           bigint      NOT NULL,
    answered_at   timestamptz NOT NULL,
    settlement_id text        NOT NULL,
    institution   text        NOT NULL,
    staff_code    text        NOT NULL,
    verdict       text        NOT NULL,
    data_version  text        NOT NULL,
    raw           bytea       NOT NULL,
    hash          text        NOT NULL,
    stream_id     text        NOT NULL,
    archived_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance, seq)
);
CREATE INDEX IF NOT EXISTS audit_record_settlement ON audit_record (settlement_id);
CREATE INDEX IF NOT EXISTS audit_record_staff ON audit_record (staff_code, answered_at);
CREATE INDEX IF NOT EXISTS audit_record_institution ON audit_record (institution, answered_at);
CREATE INDEX IF NOT EXISTS audit_record_time ON audit_record (answered_at);
CREATE TABLE IF NOT EXISTS audit_version (
    version     text        PRIMARY KEY,
    as_of       timestamptz,
    sources     jsonb       NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS audit_unreadable (
    stream_id   text        PRIMARY KEY,
    fields      jsonb       NOT NULL,
    error       text        NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT now()
);
"""


def migrate(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(SCHEMA)


@dataclass(frozen=True, slots=True)
class Row:
    instance: str
    seq: int
    time: str
    settlement_id: str
    institution: str
    staff_code: str
    verdict: str
    data_version: str
    raw: bytes
    stream_id: str


def parse_entry(stream_id: str, fields: dict[bytes, bytes]) -> Row:
    """A stream entry as an archive row; ``ValueError`` naming what is wrong if it is none."""
    raw = fields.get(RECORD_FIELD.encode())
    if raw is None:
        raise ValueError(f"no {RECORD_FIELD!r} field")
    doc = decode(raw)
    return Row(
        doc["instance"], doc["seq"], str(doc.get("time", "")), str(doc.get("settlement_id", "")),
        str(doc.get("institution", "")), str(doc.get("staff_code", "")), str(doc.get("verdict", "")),
        str(doc.get("data_version", "")), raw, stream_id,
    )  # fmt: skip


class Archiver:
    """Moves the stream into PostgreSQL, batch by batch."""

    def __init__(
        self, client: SyncRedis, keys: Keys, conn: psycopg.Connection[Any], consumer: str = ""
    ) -> None:
        self.client = client
        self.keys = keys
        self.key = keys.audit
        self.conn = conn
        self.consumer = consumer or socket.gethostname()
        self.archived = 0
        self.unreadable = 0
        self._versions: set[str] = set()

    def ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.key, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def step(self, block_ms: int | None = BLOCK_MS) -> int:
        """Archive one batch: first what this consumer was given but never acknowledged (a
        crash between insert and XACK), then new entries. Returns how many entries it took."""
        entries = self._read("0", None) or self._read(">", block_ms)
        if not entries:
            return 0
        rows: list[Row] = []
        bad: list[tuple[str, dict[str, str], str]] = []
        for raw_id, fields in entries:
            stream_id = raw_id.decode()
            try:
                rows.append(parse_entry(stream_id, fields))
            except (ValueError, TypeError, KeyError) as exc:
                shown = {
                    k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in fields.items()
                }
                bad.append((stream_id, shown, str(exc)))
        with self.conn.transaction():
            self._store_versions({r.data_version for r in rows})
            with self.conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO audit_record (instance, seq, answered_at, settlement_id, institution,"
                    " staff_code, verdict, data_version, raw, hash, stream_id)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    [
                        (
                            r.instance,
                            r.seq,
                            r.time,
                            r.settlement_id,
                            r.institution,
                            r.staff_code,
                            r.verdict,
                            r.data_version,
                            r.raw,
                            record_hash(r.raw),
                            r.stream_id,
                        )
                        for r in rows
                    ],
                )
                if bad:
                    cur.executemany(
                        "INSERT INTO audit_unreadable (stream_id, fields, error) VALUES (%s, %s, %s)"
                        " ON CONFLICT DO NOTHING",
                        [(sid, orjson.dumps(f).decode(), err) for sid, f, err in bad],
                    )
        ids = [raw_id for raw_id, _ in entries]
        # Only now, with the rows committed: acknowledge, then remove exactly these entries.
        self.client.xack(self.key, GROUP, *ids)
        self.client.xdel(self.key, *ids)
        self.archived += len(rows)
        self.unreadable += len(bad)
        if bad:
            log.warning(
                "audit stream entries that are no audit records were set aside", extra={"entries": len(bad)}
            )
        return len(entries)

    def _read(self, start: str, block_ms: int | None) -> list[tuple[bytes, dict[bytes, bytes]]]:
        reply: Any = self.client.xreadgroup(
            GROUP, self.consumer, {self.key: start}, count=READ_BATCH, block=block_ms
        )
        if not reply:
            return []
        # redis-py: [[key, [(id, fields), ...]]] (RESP2) or {key: [[...]]} (RESP3).
        streams = reply.items() if isinstance(reply, dict) else reply
        for _key, messages in streams:
            batch = messages[0] if messages and isinstance(messages[0], list) else messages
            # An entry deleted while pending comes back with no fields: nothing to archive.
            return [(i, f) for i, f in batch if f is not None]
        return []

    def _store_versions(self, versions: set[str]) -> None:
        for version in sorted(versions - self._versions):
            if not version:
                continue
            raw = cast(dict[bytes, bytes], self.client.hgetall(self.keys.version_meta(version)))
            if raw:
                meta = VersionMeta.from_hash(raw)
                self.conn.execute(
                    "INSERT INTO audit_version (version, as_of, sources) VALUES (%s, to_timestamp(%s), %s)"
                    " ON CONFLICT DO NOTHING",
                    (version, meta.as_of, orjson.dumps([s.to_json() for s in meta.sources]).decode()),
                )
            self._versions.add(version)

    def drain(self) -> int:
        """Archive until the stream has nothing new (``--once``)."""
        total = 0
        while n := self.step(block_ms=None):
            total += n
        return total

    def stream_state(self) -> tuple[int, float]:
        """(entries in the stream, seconds since the oldest of them was answered): the lag."""
        length = int(self.client.xlen(self.key))
        oldest = cast(list[tuple[bytes, dict[bytes, bytes]]], self.client.xrange(self.key, count=1))
        if not oldest:
            return length, 0.0
        raw_id, fields = oldest[0]
        try:
            answered = parse_time(parse_entry(raw_id.decode(), fields).time)
        except (ValueError, TypeError, KeyError):
            answered = int(raw_id.split(b"-")[0]) / 1000
        return length, max(0.0, time.time() - answered)


def parse_time(text: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# -- reading the archive ------------------------------------------------------------------


def find(
    conn: psycopg.Connection[Any],
    settlement_id: str | None = None,
    staff_code: str | None = None,
    institution: str | None = None,
    since: float | None = None,
    until: float | None = None,
    limit: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Archived records matching every filter, by answer time (never by stream id)."""
    where: list[str] = []
    args: list[Any] = []
    for column, value in (
        ("settlement_id", settlement_id),
        ("staff_code", staff_code),
        ("institution", institution),
    ):
        if value is not None:
            where.append(f"{column} = %s")
            args.append(value)
    if since is not None:
        where.append("answered_at >= to_timestamp(%s)")
        args.append(since)
    if until is not None:
        where.append("answered_at <= to_timestamp(%s)")
        args.append(until)
    sql = "SELECT raw, hash FROM audit_record"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY answered_at, instance, seq"
    if limit:
        sql += f" LIMIT {int(limit)}"
    with conn.cursor() as cur:
        for raw, stored_hash in cur.execute(sql, args):
            doc = decode(bytes(raw))
            doc["hash"] = stored_hash
            yield doc


def chain_rows(
    conn: psycopg.Connection[Any], instance: str | None = None, seqs: Sequence[int] = ()
) -> Iterator[Stored]:
    """Stored records by (instance, seq), all of them or some of one instance, read with a
    server-side cursor so a large archive is never held in memory."""
    sql = "SELECT instance, seq, answered_at, raw, hash, settlement_id, institution, staff_code FROM audit_record"
    args: list[Any] = []
    if instance is not None:
        sql += " WHERE instance = %s AND seq = ANY(%s)"
        args = [instance, list(seqs)]
    sql += " ORDER BY instance, seq"
    with conn.cursor(name="audit_chain") as cur:
        cur.itersize = 5000
        cur.execute(sql, args)
        for inst, seq, answered_at, raw, stored_hash, settlement_id, institution, staff_code in cur:
            raw = bytes(raw)
            try:
                doc = orjson.loads(raw)
            except orjson.JSONDecodeError:
                doc = {}
            if not isinstance(doc, dict):
                doc = {}
            columns = {"settlement_id": settlement_id, "institution": institution, "staff_code": staff_code}
            if any(str(doc.get(k, "")) != v for k, v in columns.items()):
                # The indexed columns were changed without the record: mark the hash as
                # unmatched so ``check`` reports the row as altered.
                stored_hash = "columns-differ-from-record"
            yield Stored(inst, seq, answered_at.isoformat(), raw, stored_hash, doc)


def version_sources(conn: psycopg.Connection[Any], version: str) -> list[dict[str, Any]] | None:
    row = conn.execute("SELECT sources FROM audit_version WHERE version = %s", (version,)).fetchone()
    return None if row is None else cast(list[dict[str, Any]], row[0])
