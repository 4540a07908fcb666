"""The audit commands behind ``settlement-gateway audit …`` and ``audit-archive``.

Each returns the exit status: 0 done, 1 the trail could not be read (or ``verify`` found a
problem), 2 a usage error. Output is for people unless ``--json`` asks for JSON lines.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any, cast

import orjson
import psycopg
import redis.exceptions
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from gateway.audit import archive, chain, explain, queries
from gateway.audit.record import decode
from gateway.config import ConfigError, Settings
from gateway.embedded import EmbeddedRedisError, store_url
from gateway.keys import Keys
from gateway.redis_client import SyncRedis, sync_client
from gateway.versions import VersionMeta

log = logging.getLogger("gateway.audit")

# How often a running archiver refreshes the stream length and lag gauges.
METRICS_INTERVAL_SECONDS = 5.0


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        redis_url=args.redis_url, state_dir=args.state_dir, namespace=args.namespace, audit_dsn=args.dsn
    )


def _archive_settings(args: argparse.Namespace, command: str) -> tuple[Settings, str] | int:
    """The settings and DSN of a command that needs the archive, or its exit status (2: a usage
    error)."""
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"settlement-gateway: {exc}", file=sys.stderr)
        return 2
    if not settings.audit_dsn:
        print(f"settlement-gateway {command}: give --dsn or SGW_AUDIT_DSN", file=sys.stderr)
        return 2
    return settings, settings.audit_dsn


def _fail(message: str) -> int:
    print(f"settlement-gateway audit: {message}", file=sys.stderr)
    return 1


@contextlib.contextmanager
def _redis(settings: Settings) -> Iterator[SyncRedis]:
    with store_url(settings.redis_url, settings.state_dir) as url:
        client = sync_client(url, timeout=30)
        try:
            yield client
        finally:
            client.close()


def _text_line(doc: dict[str, Any]) -> str:
    return (
        f"{doc.get('time')}  {doc.get('settlement_id')} line {doc.get('line_id')}  {doc.get('verdict')} "
        f"{doc.get('reason')}  staff {doc.get('staff_code')}  {doc.get('institution')}  "
        f"day {doc.get('service_day')}  {doc.get('amount_fen')} fen  {doc.get('rule')}"
    )


def find_main(args: argparse.Namespace) -> int:
    """Print the matching records, oldest first: from the archive with a DSN, else the stream."""
    if not any((args.settlement, args.staff, args.institution, args.since, args.until)):
        print("settlement-gateway audit: give --settlement, --staff, --institution, --since or --until",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"settlement-gateway: {exc}", file=sys.stderr)
        return 2
    found = 0
    filters = (args.settlement, args.staff, args.institution, args.since, args.until)
    try:
        with contextlib.ExitStack() as stack:
            if settings.audit_dsn:
                conn = stack.enter_context(psycopg.connect(settings.audit_dsn))
                records: Iterator[dict[str, Any]] = archive.find(conn, *filters, limit=args.limit)
            else:
                client = stack.enter_context(_redis(settings))
                records = queries.find_records(client, Keys(settings.namespace), *filters)
            for doc in records:
                if args.json:
                    sys.stdout.buffer.write(orjson.dumps(doc) + b"\n")
                else:
                    print(_text_line(doc))
                found += 1
                if args.limit and found >= args.limit:
                    break
    except (redis.exceptions.RedisError, OSError, EmbeddedRedisError, psycopg.Error) as exc:
        return _fail(f"cannot read the audit trail: {exc}")
    print(f"{found} audit record(s)", file=sys.stderr)
    return 0


def migrate_main(args: argparse.Namespace) -> int:
    found = _archive_settings(args, "audit migrate")
    if isinstance(found, int):
        return found
    _, dsn = found
    try:
        archive.migrate(dsn)
    except psycopg.Error as exc:
        return _fail(f"cannot create the archive schema: {exc}")
    print("audit archive schema is up to date", file=sys.stderr)
    return 0


def verify_main(args: argparse.Namespace) -> int:
    """Check every chain in the archive; exit 1 and list the problems if any."""
    found = _archive_settings(args, "audit verify")
    if isinstance(found, int):
        return found
    _, dsn = found
    summary = chain.Summary()
    problems = 0
    try:
        with psycopg.connect(dsn) as conn:
            for problem in chain.check(archive.chain_rows(conn), summary):
                problems += 1
                if args.json:
                    sys.stdout.buffer.write(orjson.dumps(problem.to_json()) + b"\n")
                else:
                    print(
                        f"{problem.kind}: instance {problem.instance} seq {problem.first}"
                        + (f"..{problem.last}" if problem.last != problem.first else "")
                        + f" at {problem.time}: {problem.detail}"
                    )
    except psycopg.Error as exc:
        return _fail(f"cannot read the archive: {exc}")
    verdict = "OK" if not problems else f"{problems} problem(s)"
    print(f"{summary.records} record(s) in {summary.instances} chain(s): {verdict}", file=sys.stderr)
    return 1 if problems else 0


def explain_main(args: argparse.Namespace) -> int:
    """The dispute view of one settlement (``gateway.audit.explain``)."""
    if not args.settlement:
        print("settlement-gateway audit explain: give --settlement", file=sys.stderr)
        return 2
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"settlement-gateway: {exc}", file=sys.stderr)
        return 2
    try:
        with contextlib.ExitStack() as stack:
            client: SyncRedis | None = None
            if settings.audit_dsn:
                conn = stack.enter_context(psycopg.connect(settings.audit_dsn))
                found = [(d, _archived_raw(conn, d)) for d in archive.find(conn, args.settlement)]

                def lookup(instance: str, seq: int) -> bytes | None:
                    rows = list(archive.chain_rows(conn, instance, [seq]))
                    return rows[0].raw if rows else None

                def sources(version: str) -> list[dict[str, Any]] | None:
                    return archive.version_sources(conn, version) or _redis_sources(client, settings, version)

                with contextlib.suppress(redis.exceptions.RedisError, OSError, EmbeddedRedisError):
                    if settings.redis_url:
                        client = stack.enter_context(_redis(settings))
            else:
                client = stack.enter_context(_redis(settings))
                by_key: dict[tuple[str, int], bytes] = {}
                found = []
                for _sid, raw, doc in queries.stream_records(client, Keys(settings.namespace)):
                    by_key[doc["instance"], doc["seq"]] = raw
                    if doc.get("settlement_id") == args.settlement:
                        found.append((doc, raw))

                def lookup(instance: str, seq: int) -> bytes | None:
                    return by_key.get((instance, seq))

                def sources(version: str) -> list[dict[str, Any]] | None:
                    return _redis_sources(client, settings, version)

            lines = [
                explain.explain_line(doc, raw, sources(str(doc.get("data_version", ""))), lookup)
                for doc, raw in found
            ]
    except (redis.exceptions.RedisError, OSError, EmbeddedRedisError, psycopg.Error) as exc:
        return _fail(f"cannot read the audit trail: {exc}")
    if args.json:
        sys.stdout.buffer.write(orjson.dumps({"settlement_id": args.settlement, "lines": lines}) + b"\n")
    else:
        print(explain.render(args.settlement, lines))
    return 0 if lines else 1


def _archived_raw(conn: psycopg.Connection[Any], doc: dict[str, Any]) -> bytes:
    row = conn.execute(
        "SELECT raw FROM audit_record WHERE instance = %s AND seq = %s", (doc["instance"], doc["seq"])
    ).fetchone()
    assert row is not None
    raw = bytes(row[0])
    decode(raw)
    return raw


def _redis_sources(client: SyncRedis | None, settings: Settings, version: str) -> list[dict[str, Any]] | None:
    if client is None or not version:
        return None
    raw = cast(dict[bytes, bytes], client.hgetall(Keys(settings.namespace).version_meta(version)))
    if not raw:
        return None
    return [s.to_json() for s in VersionMeta.from_hash(raw).sources]


# -- the archiver ---------------------------------------------------------------------------


class ArchiverMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.stream_entries = Gauge(
            "sgw_audit_stream_entries", "Entries in the audit stream (not yet archived).", registry=registry
        )
        self.lag = Gauge(
            "sgw_audit_archive_lag_seconds",
            "Age of the oldest audit record still waiting in the stream (0 when it is empty).",
            registry=registry,
        )
        self.archived = Counter(
            "sgw_audit_archived_records_total", "Audit records stored in the archive.", registry=registry
        )
        self.last_success = Gauge(
            "sgw_audit_archive_last_success_timestamp_seconds",
            "When the archiver last completed a pass over the stream.",
            registry=registry,
        )


def archive_main(args: argparse.Namespace) -> int:
    """Move the stream into PostgreSQL: once (``--once``), or until SIGTERM."""
    found = _archive_settings(args, "audit-archive")
    if isinstance(found, int):
        return found
    settings, dsn = found
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    registry = CollectorRegistry()
    metrics = ArchiverMetrics(registry)
    try:
        with _redis(settings) as client, psycopg.connect(dsn) as conn:
            archiver = archive.Archiver(client, Keys(settings.namespace), conn, args.consumer or "")
            archiver.ensure_group()
            if args.once:
                total = archiver.drain()
                print(f"{total} stream entries archived", file=sys.stderr)
                return 0
            if args.metrics_listen:
                host, _, port = args.metrics_listen.rpartition(":")
                start_http_server(int(port), host.strip("[]") or "0.0.0.0", registry)
            log.info("audit archiver running", extra={"consumer": archiver.consumer})
            refreshed = 0.0
            while not stopping:
                before = archiver.archived
                archiver.step()
                metrics.archived.inc(archiver.archived - before)
                if time.monotonic() - refreshed >= METRICS_INTERVAL_SECONDS:
                    length, lag = archiver.stream_state()
                    metrics.stream_entries.set(length)
                    metrics.lag.set(lag)
                    metrics.last_success.set(time.time())
                    refreshed = time.monotonic()
    except (redis.exceptions.RedisError, OSError, EmbeddedRedisError, psycopg.Error) as exc:
        return _fail(f"archiving failed: {exc}")
    return 0
