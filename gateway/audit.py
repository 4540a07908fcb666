"""The audit trail: every line that was not simply paid, kept for disputes.

A doctor may contest a rejection within 10 working days (001 §六(一), 003 §16), and emergency
exemptions and outage payments are to be audited later; so every ``REJECT``, every
``ACCEPT_EMERGENCY`` and every line paid under the outage policy (004 §58) is recorded with
the request id, institution, settlement id (the HIS visit id ``mdtrt_id``, which a dispute is
about), line id, staff code, verdict, reason, rule, data version, whether the answer was
degraded, and the time. Nothing else of the request is kept: no patient identifiers.

Records go to one capped Redis Stream (``Keys.audit``, trimmed approximately to
``max_entries``). ``Validate`` only appends to an in-memory queue; a background task writes
batches with one pipelined round trip each. The queue is bounded by lines: when Redis is down
longer than the queue can hold, further records are dropped and counted (metric
``sgw_audit_records_total{result="dropped"}`` and a log line), never blocking a checkout.
Buffered records are written once Redis is back. A queued answer keeps only its audited
lines' fields, never the request, so the queue's memory follows the lines it counts.

Nothing here waits on Redis without a bound: a batch write is bounded as a whole, and
shutdown gives up on what a frozen Redis will not take, logging how much was not written.
Delivery is at least once: a batch whose write timed out may still reach Redis when it wakes,
and its retry then writes those records again (identical, field for field).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

from gateway.keys import Keys
from gateway.metrics import GatewayMetrics
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.policy import Reason, Verdict
from gateway.redis_client import AsyncRedis, SyncRedis
from gateway.redis_permissions import PermissionWatch, is_permission_error
from gateway.rules import Decision

log = logging.getLogger(__name__)

WRITE_BATCH = 1000
# How long the writer lets records gather before a write: one pipelined round trip per this
# much time instead of one per audited answer. A redis-py round trip costs this process about
# as much CPU as judging an everyday bill, and most bills carry a line worth auditing.
WRITE_LINGER_SECONDS = 0.01
RETRY_MIN_SECONDS = 0.2
RETRY_MAX_SECONDS = 5.0
QUERY_BATCH = 5000
# A batch write is one pipelined round trip, but redis-py bounds each connect and each reply
# read separately (``SGW_REDIS_TIMEOUT``), with a retry: a half-dead Redis that answers
# slowly, or not at all, could hold a batch far longer. A whole batch gets this many Redis
# timeouts (connect, replies, the retry's connect and replies), and never less than the floor.
WRITE_TIMEOUT_FACTOR = 4
WRITE_TIMEOUT_MIN_SECONDS = 1.0
DEFAULT_REDIS_TIMEOUT = 0.5
# Stream ids are the time Redis wrote the record; a record is written at most this long after
# its answer (longer only when it waited out an outage in the queue). Time-range queries read
# this much further and then filter on the record's own time.
WRITE_SLACK_SECONDS = 3600
# The gateway's and Redis's clocks may disagree by this much.
CLOCK_SKEW_SECONDS = 300


# A module global, not ``Verdict.ACCEPT`` in the loop: an enum member looked up on its class
# costs about three times the check itself, once per line of every bill.
_ACCEPT = Verdict.ACCEPT


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audited line."""

    time: str  # ISO 8601 UTC, millisecond precision: when the answer was given
    request_id: str
    institution: str
    settlement_id: str
    line_id: str
    staff_code: str
    verdict: str
    reason: str
    rule: str
    data_version: str
    degraded: bool
    stream_id: str = ""

    def to_fields(self) -> dict[str, str]:
        doc = asdict(self)
        del doc["stream_id"]
        doc["degraded"] = "1" if self.degraded else "0"
        return doc

    @classmethod
    def from_fields(cls, stream_id: str, fields: Mapping[str, str]) -> AuditRecord:
        return cls(
            time=fields.get("time", ""),
            request_id=fields.get("request_id", ""),
            institution=fields.get("institution", ""),
            settlement_id=fields.get("settlement_id", ""),
            line_id=fields.get("line_id", ""),
            staff_code=fields.get("staff_code", ""),
            verdict=fields.get("verdict", ""),
            reason=fields.get("reason", ""),
            rule=fields.get("rule", ""),
            data_version=fields.get("data_version", ""),
            degraded=fields.get("degraded") == "1",
            stream_id=stream_id,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def format_time(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# One audited line as queued: line id, staff code (as sent), verdict, reason, rule.
_QueuedLine = tuple[str, str, Verdict, Reason, str]


@dataclass(frozen=True, slots=True)
class _Pending:
    """One answer's audited lines, as queued by ``Validate`` (flattened by the writer).

    Only what the records need is copied out of the request: the queue must cost memory in
    proportion to the audited lines it counts, not to the bills they came from (a 10,000-line
    bill with one rejected line would otherwise pin its ~0.5 MB for that one queued line while
    Redis is down). No protobuf object is referenced from here.
    """

    request_id: str
    institution_code: str
    settlement_id: str
    lines: tuple[_QueuedLine, ...]
    data_version: str
    degraded: bool
    at: float

    @classmethod
    def of(
        cls,
        request: pb.ValidateRequest,
        decisions: Sequence[Decision],
        indices: list[int],
        data_version: str,
        degraded: bool,
    ) -> _Pending:
        """Copy the audited lines out of ``request``: work for those lines only, and as little
        as will do on the hot path (stripping and naming wait for the writer)."""
        lines = request.lines
        queued = []
        for i in indices:
            # Protobuf string fields are read out as new str objects: the message is not kept.
            line, decision = lines[i], decisions[i]
            queued.append((line.line_id, line.staff_code, decision.verdict, decision.reason, decision.rule))
        return cls(
            request.request_id,
            request.institution_code,
            request.settlement_id,
            tuple(queued),
            data_version,
            degraded,
            time.time(),
        )

    def records(self) -> list[dict[str, str]]:
        when = format_time(self.at)
        institution = self.institution_code.strip()
        return [
            AuditRecord(
                time=when,
                request_id=self.request_id,
                institution=institution,
                settlement_id=self.settlement_id,
                line_id=line_id,
                staff_code=staff_code.strip(),
                verdict=verdict.name,
                reason=reason.name,
                rule=rule,
                data_version=self.data_version,
                degraded=self.degraded,
            ).to_fields()
            for line_id, staff_code, verdict, reason, rule in self.lines
        ]


class AuditLog:
    """Queues audited lines from the hot path and writes them to the stream in the background."""

    def __init__(
        self,
        client: AsyncRedis,
        keys: Keys,
        metrics: GatewayMetrics,
        max_entries: int = 5_000_000,
        queue_lines: int = 200_000,
        redis_timeout: float | None = None,
    ) -> None:
        """``redis_timeout`` (``SGW_REDIS_TIMEOUT``) scales the bound on a batch write and on
        the writer's exit; by default it is read off the client's own socket timeout."""
        self.client = client
        self.key = keys.audit
        self.metrics = metrics
        self.max_entries = max_entries
        self.queue_lines = queue_lines
        self._queue: deque[_Pending] = deque()
        self._retry: list[dict[str, str]] = []
        self.pending_lines = 0
        self.written = 0
        self.dropped = 0
        # Set by the server: a refused XADD is a misconfigured ACL, reported like any refusal.
        self.permissions: PermissionWatch | None = None
        self.write_timeout = write_timeout(client_timeout(client) if redis_timeout is None else redis_timeout)
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Set by stop(): write at once, no more lingering.
        self._flushing = False

    def record(
        self,
        request: pb.ValidateRequest,
        decisions: Sequence[Decision],
        data_version: str,
        degraded: bool,
    ) -> None:
        """Queue the audited lines of one answer; never blocks, never raises on overflow.

        Audited: every line but a plain live ``ACCEPT`` (which cites no rule)."""
        indices = [i for i, d in enumerate(decisions) if d.verdict is not _ACCEPT or d.rule]
        if not indices:
            return
        n = len(indices)
        if self.pending_lines + n > self.queue_lines:
            if not self.dropped:
                log.error("audit queue full: dropping audit records", extra={"queue_lines": self.queue_lines})
            self.dropped += n
            self.metrics.audit_records.labels("dropped").inc(n)
            return
        self.pending_lines += n
        self._queue.append(_Pending.of(request, decisions, indices, data_version, degraded))
        self._wakeup.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def stop(self, flush_seconds: float = 2.0) -> int:
        """Write what is queued (for at most ``flush_seconds``), then stop the writer.

        Bounded whatever Redis does, so a frozen Redis cannot keep the process from exiting on
        SIGTERM: at most ``flush_seconds`` of flushing, then at most ``write_timeout`` for the
        cancelled writer to end. Returns (and logs) how many audited lines were not written
        (not confirmed: a batch cut short may still reach a Redis that wakes up).
        """
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
        return self.pending_lines

    def _next_batch(self) -> list[dict[str, str]]:
        batch = self._retry
        self._retry = []
        while self._queue and len(batch) < WRITE_BATCH:
            batch.extend(self._queue.popleft().records())
        return batch

    async def _run(self) -> None:
        delay = RETRY_MIN_SECONDS
        while True:
            await self._wakeup.wait()
            if not self._flushing and self.pending_lines < WRITE_BATCH:
                await asyncio.sleep(WRITE_LINGER_SECONDS)
            self._wakeup.clear()
            while self._retry or self._queue:
                batch = self._next_batch()
                try:
                    async with asyncio.timeout(self.write_timeout):
                        await self._write(batch)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - any store failure or timeout: keep, retry later
                    self._retry = batch
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

    async def _write(self, batch: list[dict[str, str]]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for fields in batch:
                pipe.xadd(self.key, fields, maxlen=self.max_entries, approximate=True)  # type: ignore[arg-type]
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


# -- queries (the ``settlement-gateway audit`` command) -----------------------------------


def stream_id_of(epoch: float) -> str:
    return str(max(0, int(epoch * 1000)))


def find_records(
    client: SyncRedis,
    keys: Keys,
    settlement_id: str | None = None,
    staff_code: str | None = None,
    institution: str | None = None,
    since: float | None = None,
    until: float | None = None,
) -> Iterator[AuditRecord]:
    """Audit records matching every given filter, oldest first.

    Reads the stream in batches; a time range bounds what is read, so narrow queries over a
    large stream stay quick.
    """
    start = "-" if since is None else stream_id_of(since - CLOCK_SKEW_SECONDS)
    end = "+" if until is None else stream_id_of(until + WRITE_SLACK_SECONDS)
    since_text = None if since is None else format_time(since)
    until_text = None if until is None else format_time(until)
    while True:
        batch = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            client.xrange(keys.audit, min=start, max=end, count=QUERY_BATCH),
        )
        for raw_id, raw_fields in batch:
            fields = {k.decode(): v.decode() for k, v in raw_fields.items()}
            record = AuditRecord.from_fields(raw_id.decode(), fields)
            if settlement_id is not None and record.settlement_id != settlement_id:
                continue
            if staff_code is not None and record.staff_code != staff_code:
                continue
            if institution is not None and record.institution != institution:
                continue
            if since_text is not None and record.time < since_text:
                continue
            if until_text is not None and record.time > until_text:
                continue
            yield record
        if len(batch) < QUERY_BATCH:
            return
        start = "(" + batch[-1][0].decode()
