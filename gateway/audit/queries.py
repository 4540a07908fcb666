"""Finding records in the Redis stream (``settlement-gateway audit`` without an archive).

Stream ids are never trusted for time: anyone able to write the stream can add an entry with a
far-future id (``9999999999999-0``), after which Redis numbers every later entry after it. So a
time range reads the whole stream and filters on each record's own answer time. Records a
restarted gateway replayed from its spool may be in the stream twice: each (instance, seq) is
shown once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

from gateway.audit.record import RECORD_FIELD, decode, format_time, record_hash
from gateway.keys import Keys
from gateway.redis_client import SyncRedis

QUERY_BATCH = 5000


def stream_records(client: SyncRedis, keys: Keys) -> Iterator[tuple[str, bytes, dict[str, Any]]]:
    """(stream id, raw, document) of every readable record, oldest entry first, each once."""
    seen: set[tuple[str, int]] = set()
    start = "-"
    field = RECORD_FIELD.encode()
    while True:
        batch = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            client.xrange(keys.audit, min=start, max="+", count=QUERY_BATCH),
        )
        for raw_id, fields in batch:
            raw = fields.get(field)
            if raw is None:
                continue
            try:
                doc = decode(raw)
            except ValueError:
                continue
            key = (doc["instance"], doc["seq"])
            if key in seen:
                continue
            seen.add(key)
            yield raw_id.decode(), raw, doc
        if len(batch) < QUERY_BATCH:
            return
        start = "(" + batch[-1][0].decode()


def find_records(
    client: SyncRedis,
    keys: Keys,
    settlement_id: str | None = None,
    staff_code: str | None = None,
    institution: str | None = None,
    since: float | None = None,
    until: float | None = None,
) -> Iterator[dict[str, Any]]:
    """Records in the stream matching every given filter, in stream order."""
    since_text = None if since is None else format_time(since)
    until_text = None if until is None else format_time(until)
    for stream_id, raw, doc in stream_records(client, keys):
        if settlement_id is not None and doc.get("settlement_id") != settlement_id:
            continue
        if staff_code is not None and doc.get("staff_code") != staff_code:
            continue
        if institution is not None and doc.get("institution") != institution:
            continue
        when = str(doc.get("time", ""))
        if since_text is not None and when < since_text:
            continue
        if until_text is not None and when > until_text:
            continue
        doc["hash"] = record_hash(raw)
        doc["stream_id"] = stream_id
        yield doc
