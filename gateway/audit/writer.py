"""The audit writer: audited lines from the answer's path to the Redis stream, off the hot path.

A doctor may contest a rejection within 10 working days (001 §六(一), 003 §16), and emergency
exemptions and outage payments are audited later; so every ``REJECT``, every
``ACCEPT_EMERGENCY`` and every line paid under the outage policy (004 §58) is recorded
(``gateway.audit.record`` says what a record holds).

``Validate`` encodes the answer's records once, seals them into this instance's hash chain,
appends them to the spool (``gateway.audit.spool``: one ``write``, before the reply) and queues
them; a background task writes batches to one Redis Stream (``Keys.audit``) with one pipelined
round trip each, one field per entry. With an archive configured (``SGW_AUDIT_DSN``) the stream
is not trimmed by the gateway: ``settlement-gateway audit-archive`` moves records to PostgreSQL
and removes only what it stored. Without one the stream is capped at about ``max_entries``.

The queue is bounded by lines: when Redis is down longer than the queue can hold, further
records are dropped and counted (``sgw_audit_records_total{result="dropped"}`` and a log
line), never blocking a checkout. Nothing here waits on Redis without a bound: a batch write is
bounded as a whole, and shutdown gives up on what a frozen Redis will not take, leaving it in
the spool for the next start. Delivery is at least once; storage in the archive exactly once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway.audit.record import RECORD_FIELD, Chain, audited_indices, decode, documents, new_instance_id
from gateway.audit.spool import Orphan, Spool, orphans
from gateway.keys import Keys
from gateway.metrics import GatewayMetrics
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.redis_client import AsyncRedis
from gateway.redis_permissions import PermissionWatch, is_permission_error
from gateway.rules import Decision, Evidence, Line, RulesConfig
from gateway.settlement import parse_request

log = logging.getLogger("gateway.audit")

WRITE_BATCH = 1000
# How long the writer lets records gather before a write: one pipelined round trip per this
# much time instead of one per audited answer.
WRITE_LINGER_SECONDS = 0.01
RETRY_MIN_SECONDS = 0.2
RETRY_MAX_SECONDS = 5.0
# A batch write is one pipelined round trip, but redis-py bounds each connect and each reply
# read separately (``SGW_REDIS_TIMEOUT``), with a retry: a whole batch gets this many Redis
# timeouts, and never less than the floor.
WRITE_TIMEOUT_FACTOR = 4
WRITE_TIMEOUT_MIN_SECONDS = 1.0
DEFAULT_REDIS_TIMEOUT = 0.5
# How often the stream's length and lag are read for the metrics.
STREAM_WATCH_SECONDS = 5.0


class AuditLog:
    """Seals and spools audited lines on the answer's path; writes them in the background."""

    def __init__(
        self,
        client: AsyncRedis,
        keys: Keys,
        metrics: GatewayMetrics,
        max_entries: int = 5_000_000,
        queue_lines: int = 200_000,
        redis_timeout: float | None = None,
        *,
        rules: RulesConfig | None = None,
        spool_dir: Path | None = None,
        archived: bool = False,
        outage_policy: str = "",
        instance: str | None = None,
    ) -> None:
        """``redis_timeout`` (``SGW_REDIS_TIMEOUT``) scales the bound on a batch write and on
        the writer's exit; by default it is read off the client's own socket timeout.
        ``archived``: an archive drains the stream, so the writer does not trim it."""
        self.client = client
        self.key = keys.audit
        self.metrics = metrics
        self.max_entries = max_entries
        self.queue_lines = queue_lines
        self.rules = rules or RulesConfig()
        self.archived = archived
        self.outage_policy = outage_policy
        self.chain = Chain(instance or new_instance_id())
        self.spool_dir = spool_dir
        self.spool = Spool(spool_dir, self.chain.instance) if spool_dir is not None else None
        # Each queued answer: its encoded records and the last sequence number among them.
        self._queue: deque[tuple[list[bytes], int]] = deque()
        self._retry: list[bytes] = []
        self._retry_seq = 0
        self.pending_lines = 0
        self.written = 0
        self.dropped = 0
        # Set by the server: a refused XADD is a misconfigured ACL, reported like any refusal.
        self.permissions: PermissionWatch | None = None
        self.replayed = 0
        self.write_timeout = write_timeout(client_timeout(client) if redis_timeout is None else redis_timeout)
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        # Set by stop(): write at once, no more lingering.
        self._flushing = False

    @property
    def instance(self) -> str:
        return self.chain.instance

    def record(
        self,
        request: pb.ValidateRequest,
        decisions: Sequence[Decision],
        data_version: str,
        degraded: bool,
        *,
        lines: Sequence[Line] | None = None,
        evidence: Evidence | None = None,
        caller: str | Callable[[], str] = "",
    ) -> None:
        """Seal, spool and queue the audited lines of one answer; never blocks, never raises on
        overflow. Called before the reply is sent: once it returns the records are on disk.
        ``caller`` may be a function: who asked is then looked up only for an audited answer."""
        indices = audited_indices(decisions)
        if not indices:
            return
        n = len(indices)
        if self.pending_lines + n > self.queue_lines:
            if not self.dropped:
                log.error("audit queue full: dropping audit records", extra={"queue_lines": self.queue_lines})
            self.dropped += n
            self.metrics.audit_records.labels("dropped").inc(n)
            return
        if lines is None:
            lines = parse_request(request, self.rules, len(request.lines)).lines
        docs = documents(
            request, lines, decisions, indices, evidence, self.rules,
            caller=caller if isinstance(caller, str) else caller(), data_version=data_version, degraded=degraded,
            outage_policy=self.outage_policy, at=time.time(),
        )  # fmt: skip
        seal = self.chain.seal
        records = [seal(doc) for doc in docs]
        if self.spool is not None:
            try:
                self.spool.append(records, self.chain.seq)
            except OSError as exc:
                log.error("audit spool write failed", extra={"error": str(exc)})
        self.pending_lines += n
        self._queue.append((records, self.chain.seq))
        self._wakeup.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-writer")
        self._watch = asyncio.create_task(self._watch_stream(), name="audit-stream-watch")

    async def _watch_stream(self) -> None:
        """The stream's length and, with an archive, its lag, as gauges: what the alert rules
        watch (an archiver that stopped lets the untrimmed stream grow in Redis's memory)."""
        while True:
            try:
                async with asyncio.timeout(self.write_timeout):
                    length, lag = await stream_state(self.client, self.key)
                self.metrics.audit_stream_entries.set(length)
                self.metrics.audit_archive_lag.set(lag if self.archived else 0.0)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - Redis away: the gauges keep their last values
                pass
            await asyncio.sleep(STREAM_WATCH_SECONDS)

    async def stop(self, flush_seconds: float = 2.0) -> int:
        """Write what is queued (for at most ``flush_seconds``), then stop the writer.

        Bounded whatever Redis does, so a frozen Redis cannot keep the process from exiting on
        SIGTERM. Returns (and logs) how many audited lines were not written; they stay in the
        spool, and the next gateway started on this state directory writes them.
        """
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._task is None:
            return self.pending_lines
        self._flushing = True
        deadline = time.monotonic() + flush_seconds
        while self.pending_lines and time.monotonic() < deadline:
            self._wakeup.set()
            await asyncio.sleep(0.02)
        task, self._task = self._task, None
        task.cancel()
        # ``asyncio.wait``, not ``wait_for``: on timeout ``wait_for`` waits again for the
        # cancellation to land, which is exactly what may never happen.
        await asyncio.wait({task}, timeout=self.write_timeout)
        if not task.done():
            log.error(
                "audit writer did not stop in time; abandoning it", extra={"seconds": self.write_timeout}
            )
        elif not task.cancelled() and task.exception() is not None:
            log.error("audit writer failed", extra={"error": str(task.exception())})
        if self.pending_lines:
            log.error("audit records not written at shutdown", extra={"lines": self.pending_lines})
        if self.spool is not None:
            self.spool.close(remove=not self.pending_lines)
            self.spool = None
        return self.pending_lines

    def _next_batch(self) -> tuple[list[bytes], int]:
        batch, last = self._retry, self._retry_seq
        self._retry, self._retry_seq = [], 0
        while self._queue and len(batch) < WRITE_BATCH:
            records, last = self._queue.popleft()
            batch.extend(records)
        return batch, last

    async def _write_until_done(self, batch: list[bytes]) -> None:
        """Write one batch, retrying with backoff until Redis takes it (for replayed spools)."""
        delay = RETRY_MIN_SECONDS
        while True:
            try:
                async with asyncio.timeout(self.write_timeout):
                    await self._write(batch)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any store failure or timeout: retry later
                log.warning(
                    "audit replay write failed; will retry", extra={"error": str(exc) or type(exc).__name__}
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def _replay(self, found: list[Orphan]) -> None:
        """Write the spools of instances that are gone (a crash left them), then remove them."""
        for orphan in found:
            try:
                batch: list[bytes] = []
                count = 0
                for raw in orphan.records():
                    batch.append(raw)
                    if len(batch) >= WRITE_BATCH:
                        await self._write_until_done(batch)
                        count += len(batch)
                        batch = []
                if batch:
                    await self._write_until_done(batch)
                    count += len(batch)
            except BaseException:
                orphan.release()
                raise
            orphan.remove()
            self.replayed += count
            self.metrics.audit_records.labels("replayed").inc(count)
            log.warning(
                "audit spool of a stopped gateway replayed",
                extra={"instance": orphan.instance, "lines": count},
            )

    async def _run(self) -> None:
        if self.spool_dir is not None:
            try:
                await self._replay(orphans(self.spool_dir, self.chain.instance))
            except asyncio.CancelledError:
                raise
            except Exception:  # an unreadable spool must not stop this gateway's own trail
                log.exception("audit spool replay failed; the files stay for the next start")
        delay = RETRY_MIN_SECONDS
        while True:
            await self._wakeup.wait()
            if not self._flushing and self.pending_lines < WRITE_BATCH:
                await asyncio.sleep(WRITE_LINGER_SECONDS)
            self._wakeup.clear()
            while self._retry or self._queue:
                batch, last_seq = self._next_batch()
                try:
                    async with asyncio.timeout(self.write_timeout):
                        await self._write(batch)
                except asyncio.CancelledError:
                    self._retry, self._retry_seq = batch, last_seq
                    raise
                except Exception as exc:  # noqa: BLE001 - any store failure or timeout: keep, retry later
                    self._retry, self._retry_seq = batch, last_seq
                    if self.permissions is not None and is_permission_error(exc):
                        self.permissions.saw(exc, "xadd")
                    log.warning(
                        "audit write failed; will retry",
                        extra={"error": str(exc) or type(exc).__name__, "lines": len(batch)},
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_SECONDS)
                    continue
                delay = RETRY_MIN_SECONDS
                self.pending_lines -= len(batch)
                self.written += len(batch)
                self.metrics.audit_records.labels("written").inc(len(batch))
                if self.spool is not None:
                    self.spool.acknowledged(last_seq)

    async def _write(self, batch: list[bytes]) -> None:
        maxlen = None if self.archived else self.max_entries
        async with self.client.pipeline(transaction=False) as pipe:
            for raw in batch:
                pipe.xadd(self.key, {RECORD_FIELD: raw}, maxlen=maxlen, approximate=True)
            await pipe.execute()


def client_timeout(client: AsyncRedis) -> float | None:
    """The socket timeout a client was built with (the gateway builds it from
    ``SGW_REDIS_TIMEOUT``), so the writer's bounds follow the configured scale."""
    timeout = client.get_connection_kwargs().get("socket_timeout")
    return float(timeout) if isinstance(timeout, int | float) else None


def write_timeout(redis_timeout: float | None) -> float:
    """The bound on one batch write: ``WRITE_TIMEOUT_FACTOR`` Redis timeouts, at least the floor."""
    scale = redis_timeout or DEFAULT_REDIS_TIMEOUT
    return max(WRITE_TIMEOUT_MIN_SECONDS, WRITE_TIMEOUT_FACTOR * scale)


async def stream_state(client: AsyncRedis, key: str) -> tuple[int, float]:
    """(entries in the stream, seconds since its oldest readable record was answered)."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.xlen(key)
        pipe.xrange(key, count=1)
        length, oldest = await pipe.execute()
    if not oldest:
        return int(length), 0.0
    raw_id, fields = oldest[0]
    raw = fields.get(RECORD_FIELD.encode())
    try:
        answered = parse_time(str(decode(raw)["time"])) if raw is not None else None
    except (ValueError, TypeError, KeyError):
        answered = None
    if answered is None:  # not a record: its stream id is all there is
        answered = int(raw_id.split(b"-")[0]) / 1000
    return int(length), max(0.0, time.time() - answered)


def parse_time(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
