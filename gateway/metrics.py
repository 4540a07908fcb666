"""Every Prometheus metric the gateway counts, declared in one place.

Metrics take a ``registry`` so tests build a fresh one and read it back. Label values for
verdicts and reasons are the contract's enum names; the gRPC metrics keep the names and
label values of go-grpc-prometheus, which operators' dashboards already use.

Per-request cost matters (a 20-line bill is judged in well under a millisecond), so every
label child is resolved once and a request is aggregated into a few dictionaries before
touching any metric: a request costs one pass over its lines plus a handful of increments,
however many lines it has.

Per-institution series are bounded: an allowlist (``SGW_METRICS_INSTITUTIONS``) or else the
first ``SGW_METRICS_INSTITUTION_LIMIT`` well-formed institution codes seen by the process get
their own label value; everything else is counted as ``other``.

Gauges that describe the process's state (data version and age, loader provenance, staff-code
shares) are not declared here but computed at scrape time by ``gateway.metrics_state``.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import compress
from operator import attrgetter
from types import TracebackType

import redis.exceptions
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.admission import BUDGETS
from gateway.breaker import BreakerOpen
from gateway.code_share import CodeShareTracker
from gateway.codes import DEFAULT_SHAPES, CodeShapes
from gateway.policy import Reason, Verdict
from gateway.redis_permissions import GATEWAY_COMMANDS
from gateway.rules import Decision, Line

OTHER_INSTITUTION = "other"

# The gateway answers in about a millisecond: start at 100 µs so the bulk of calls does not
# fall into one bucket, and reach past the Redis timeout (0.5 s) so a stuck store still shows.
GRPC_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
REDIS_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip

# Server-side decision time starts at 50 µs (a one-line bill on a warm process) and reaches
# past a second (a 10,000-line bill on a loaded host); 1 ms and 20 ms are bucket bounds
# because they are the targets for 20-line and 3,000-line bills.
DECISION_BUCKETS = (
    50e-6, 100e-6, 200e-6, 300e-6, 500e-6, 750e-6, 1e-3, 2e-3, 3e-3, 5e-3, 7.5e-3,
    10e-3, 15e-3, 20e-3, 30e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0, 2.5,
)  # fmt: skip
# Bill sizes as label values: outpatient, ward, and discharge bills have different budgets.
DECISION_SIZE_CLASSES = ((10, "1-10"), (100, "11-100"), (1000, "101-1000"))
DECISION_SIZE_LARGEST = "1001+"

# Store calls, by what they fetch: the per-request script, the live pointer, a version's meta.
REDIS_CALLS = ("read", "live", "meta", "lease")
# ``breaker_open``: the circuit breaker refused the call, so it never reached Redis.
BREAKER_OPEN = "breaker_open"
REDIS_ERROR_KINDS = ("timeout", "connection", "response", "other", BREAKER_OPEN)

STAFF_CODE_FAULTS = (Reason.STAFF_CODE_MISSING, Reason.STAFF_CODE_MALFORMED)
JUDGED_VERDICTS = (Verdict.ACCEPT, Verdict.REJECT, Verdict.ACCEPT_EMERGENCY)


def decision_size_class(lines: int) -> str:
    for bound, label in DECISION_SIZE_CLASSES:
        if lines <= bound:
            return label
    return DECISION_SIZE_LARGEST


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Bounds on label cardinality and on the staff-code window."""

    # Institutions with their own label value; empty = the first ``institution_limit`` seen.
    institutions: frozenset[str] = frozenset()
    institution_limit: int = 500
    # Lines per institution over which staff-code shares are computed, and how many codes
    # (the busiest) are exposed with their share.
    code_window: int = 2000
    top_codes: int = 3
    shapes: CodeShapes = DEFAULT_SHAPES


class InstitutionLabels:
    """Maps an institution code to its label value, keeping the number of values bounded."""

    def __init__(self, config: MetricsConfig) -> None:
        self.allowlist = config.institutions
        self.limit = config.institution_limit
        self.shapes = config.shapes
        self._seen: set[str] = set()

    def __call__(self, institution: str) -> str:
        if self.allowlist:
            return institution if institution in self.allowlist else OTHER_INSTITUTION
        if institution in self._seen:
            return institution
        if len(self._seen) < self.limit and self.shapes.is_institution_code(institution):
            self._seen.add(institution)
            return institution
        return OTHER_INSTITUTION


@dataclass(frozen=True, slots=True)
class _InstitutionChildren:
    label: str
    lines: dict[Verdict, Counter]
    code_faults: dict[Reason, Counter]


def redis_error_kind(exc: BaseException) -> str:
    """A bounded label value for a failed store call."""
    if isinstance(exc, BreakerOpen):  # a ConnectionError, but no connection was tried
        return BREAKER_OPEN
    if isinstance(exc, redis.exceptions.TimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, redis.exceptions.ConnectionError | OSError):
        return "connection"
    if isinstance(exc, redis.exceptions.ResponseError):
        return "response"
    return "other"


class RedisCallTimer:
    """Times one store call; counts it as an error (by kind) if it raises.

    A call the circuit breaker refused is counted as a ``breaker_open`` error but not timed:
    it never reached Redis, and its ~0 s would drag the latency percentiles down exactly
    while Redis is failing."""

    __slots__ = ("_errors", "_latency", "_started")

    def __init__(self, latency: Histogram, errors: dict[str, Counter]) -> None:
        self._latency = latency
        self._errors = errors
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        kind = redis_error_kind(exc) if isinstance(exc, Exception) else None
        if kind != BREAKER_OPEN:
            self._latency.observe(time.perf_counter() - self._started)
        if kind is not None:
            self._errors[kind].inc()


# Read in C by Counter, so counting codes costs no Python step per line.
_staff_code = attrgetter("staff_code")
# The one staff_code label value for every code of no valid shape (sgw_staff_code_share).
MALFORMED_CODE_LABEL = "(malformed)"
_amount_fen = attrgetter("amount_fen")
_is_charge = (0).__lt__  # 0 < amount
_is_refund = (0).__gt__  # 0 > amount


def amounts_by_verdict(
    amounts: Sequence[int],
    keys: Sequence[int],
    decision_of: Mapping[int, Decision],
    lines_of: Mapping[Verdict, int],
) -> dict[tuple[Verdict, bool], int]:
    """Line amounts summed by (verdict, is refund), refunds as positive values; zero sums are
    left out. ``keys[i]`` names line ``i``'s decision in ``decision_of``; ``lines_of`` counts
    the lines of each verdict.

    Instead of a Python step per line, one C pass (``compress``) for each verdict but the
    most frequent, whose sums are what the others leave of the bill's: an all-accepted bill
    makes no pass at all, a bill with rejections one."""
    sums: dict[tuple[Verdict, bool], int] = {}
    if not lines_of:
        return sums
    refunds = min(amounts) < 0
    largest = max(lines_of, key=lines_of.__getitem__)
    charged = sum(filter(_is_charge, amounts)) if refunds else sum(amounts)
    refunded = -sum(filter(_is_refund, amounts)) if refunds else 0
    for verdict in lines_of:
        if verdict is largest:
            continue
        selected = {key: decision.verdict is verdict for key, decision in decision_of.items()}
        group = list(compress(amounts, map(selected.__getitem__, keys)))
        group_charged = sum(filter(_is_charge, group)) if refunds else sum(group)
        group_refunded = -sum(filter(_is_refund, group)) if refunds else 0
        _put_amounts(sums, verdict, group_charged, group_refunded)
        charged -= group_charged
        refunded -= group_refunded
    _put_amounts(sums, largest, charged, refunded)
    return sums


def _put_amounts(
    sums: dict[tuple[Verdict, bool], int], verdict: Verdict, charged: int, refunded: int
) -> None:
    if charged:
        sums[verdict, False] = charged
    if refunded:
        sums[verdict, True] = refunded


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry, config: MetricsConfig | None = None) -> None:
        self.registry = registry
        self.config = config or MetricsConfig()
        self._declare_grpc(registry)
        self._declare_domain(registry)
        self._declare_redis(registry)
        self._declare_admission(registry)
        self.institution_label = InstitutionLabels(self.config)
        self.code_shares = CodeShareTracker(self.config.code_window, self.config.top_codes)
        # Pre-create every fixed label set so dashboards see zeros rather than gaps.
        self._line_children = {(v, r): self.lines.labels(v.name, r.name) for v in Verdict for r in Reason}
        self._amount_children = {
            (v, refund): self.amount_fen.labels(v.name, "refund" if refund else "charge")
            for v in JUDGED_VERDICTS
            for refund in (False, True)
        }
        self._institution_children: dict[str, _InstitutionChildren] = {}
        self._decision_children = {
            label: self.decision_seconds.labels(label)
            for label in (*(label for _, label in DECISION_SIZE_CLASSES), DECISION_SIZE_LARGEST)
        }
        self._redis_children = {
            call: (
                self.redis_seconds.labels(call),
                {kind: self.redis_errors.labels(call, kind) for kind in REDIS_ERROR_KINDS},
            )
            for call in REDIS_CALLS
        }

    def _declare_grpc(self, registry: CollectorRegistry) -> None:
        method = ["grpc_type", "grpc_service", "grpc_method"]
        self.grpc_started = Counter(
            "grpc_server_started_total", "Total number of RPCs started on the server.", method,
            registry=registry,
        )  # fmt: skip
        self.grpc_handled = Counter(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            [*method, "grpc_code"],
            registry=registry,
        )
        self.grpc_handling = Histogram(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level "
            "handled by the server.",
            method,
            buckets=GRPC_LATENCY_BUCKETS,
            registry=registry,
        )
        self.grpc_msg_received = Counter(
            "grpc_server_msg_received_total", "Total number of RPC stream messages received on the server.",
            method, registry=registry,
        )  # fmt: skip
        self.grpc_msg_sent = Counter(
            "grpc_server_msg_sent_total", "Total number of gRPC stream messages sent by the server.",
            method, registry=registry,
        )  # fmt: skip

    def _declare_domain(self, registry: CollectorRegistry) -> None:
        self.lines = Counter(
            "sgw_lines_total", "Settlement lines judged, by verdict and reason.", ["verdict", "reason"],
            registry=registry,
        )  # fmt: skip
        self.amount_fen = Counter(
            "sgw_amount_fen_total",
            "Sum of line amounts (fen, 0.01 CNY) judged, by verdict; refund lines (negative "
            "amounts) are summed as positive values under direction=refund.",
            ["verdict", "direction"],
            registry=registry,
        )
        self.institution_lines = Counter(
            "sgw_institution_lines_total",
            "Settlement lines judged per institution, by verdict (ACCEPT_EMERGENCY = an emergency "
            "override). Institutions beyond the configured bound are counted as 'other'.",
            ["institution", "verdict"],
            registry=registry,
        )
        self.institution_code_faults = Counter(
            "sgw_institution_staff_code_invalid_lines_total",
            "Lines per institution whose staff code was missing or malformed (004 §60 asks for "
            ">= 95% prescription-physician match), whatever their verdict.",
            ["institution", "reason"],
            registry=registry,
        )
        self.decision_seconds = Histogram(
            "sgw_decision_seconds",
            "Server-side time from receiving a settlement to its reply being ready "
            "(parse, store read, rules, reply), by bill size in lines.",
            ["lines"],
            buckets=DECISION_BUCKETS,
            registry=registry,
        )
        self.degraded = Counter(
            "sgw_degraded_answers_total", "Settlements answered from data that was not live (degraded).",
            registry=registry,
        )  # fmt: skip
        self.incomplete_versions = Counter(
            "sgw_incomplete_version_refusals_total",
            "Times the gateway declined to adopt the live data version because it has no staff "
            "or no institution records (it keeps answering from its cache, degraded).",
            registry=registry,
        )
        self.audit_records = Counter(
            "sgw_audit_records_total",
            "Audit records (rejected, exempted or outage-paid lines): written, dropped "
            "because the queue was full while Redis was unreachable, or replayed from the spool "
            "a stopped gateway left.",
            ["result"],
            registry=registry,
        )
        for result in ("written", "dropped", "replayed"):
            self.audit_records.labels(result)
        # Read off the stream by the audit writer every few seconds (gateway/audit/writer.py);
        # "max" across the workers of one host, which all see the same stream.
        self.audit_stream_entries = Gauge(
            "sgw_audit_stream_entries",
            "Entries in the audit stream: with an archive, the records it has not yet taken.",
            registry=registry, multiprocess_mode="max",
        )  # fmt: skip
        self.audit_archive_lag = Gauge(
            "sgw_audit_archive_lag_seconds",
            "With an archive (SGW_AUDIT_DSN): how long ago the oldest record still in the stream "
            "was answered (0: the stream is empty). Without one: 0, the stream is capped instead.",
            registry=registry, multiprocess_mode="max",
        )  # fmt: skip

    def _declare_redis(self, registry: CollectorRegistry) -> None:
        self.redis_seconds = Histogram(
            "sgw_redis_call_seconds", "Latency of the gateway's Redis calls, by call.", ["call"],
            buckets=REDIS_LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.redis_errors = Counter(
            "sgw_redis_errors_total", "Redis calls that failed, by call and kind of error.",
            ["call", "error"], registry=registry,
        )  # fmt: skip
        # NOPERM / NOAUTH / WRONGPASS: the ACL or the password is wrong (gateway.redis_permissions).
        self.redis_permission_errors = Counter(
            "sgw_redis_permission_errors_total",
            "Redis commands refused to the gateway for want of a permission or a valid login, by command.",
            ["command"], registry=registry,
        )  # fmt: skip
        for command in GATEWAY_COMMANDS:
            self.redis_permission_errors.labels(command)

    def _declare_admission(self, registry: CollectorRegistry) -> None:
        """Fair share and safe defaults (gateway/admission.py, gateway/server.py)."""
        self.caller_refusals = Counter(
            "sgw_caller_refusals_total",
            "Calls refused with RESOURCE_EXHAUSTED because their caller was over its own budget "
            "(calls, streams or lines in flight: SGW_CALLER_*).",
            ["budget"],
            registry=registry,
        )
        self._caller_refusal_children = {b: self.caller_refusals.labels(b) for b in BUDGETS}
        self.idle_streams_closed = Counter(
            "sgw_idle_streams_closed_total",
            "Streams closed because they sent no request for SGW_STREAM_IDLE_SECONDS.",
            registry=registry,
        )
        self.plaintext_listeners = Gauge(
            "sgw_plaintext_listeners",
            "1 when a listener (grpc, metrics) serves without TLS on an address other hosts can "
            "reach; 0 when it uses TLS or listens on loopback only.",
            ["listener"],
            multiprocess_mode="max",
            registry=registry,
        )

    def caller_refused(self, budget: str) -> None:
        self._caller_refusal_children[budget].inc()

    def observe_decision_time(self, lines: int, seconds: float) -> None:
        self._decision_children[decision_size_class(lines)].observe(seconds)

    def redis_call(self, call: str) -> RedisCallTimer:
        """A context manager timing one store call (``call`` is one of ``REDIS_CALLS``)."""
        latency, errors = self._redis_children[call]
        return RedisCallTimer(latency, errors)

    def _children_for(self, institution: str) -> _InstitutionChildren:
        children = self._institution_children.get(institution)
        if children is None:
            label = self.institution_label(institution)
            children = _InstitutionChildren(
                label=label,
                lines={v: self.institution_lines.labels(label, v.name) for v in JUDGED_VERDICTS},
                code_faults={
                    r: self.institution_code_faults.labels(label, r.name) for r in STAFF_CODE_FAULTS
                },
            )
            # Cache only institutions with their own label, so junk codes cannot grow the cache.
            if label != OTHER_INSTITUTION:
                self._institution_children[institution] = children
        return children

    def observe_settlement(
        self,
        institution: str,
        lines: Sequence[Line],
        decisions: Sequence[Decision],
        degraded: bool,
    ) -> None:
        """Count one judged settlement (``decisions`` in the order of ``lines``).

        Lines are grouped by decision object (``decide_all`` shares one per distinct outcome)
        and each metric is incremented once per group with the group's count or amount, never
        once per line. The grouping and the sums run in C (``Counter``, ``dict``, ``map``,
        ``compress``, ``sum``), so no Python statement runs per line: 0.49 instead of 0.70 µs
        of CPU a line for a 3,000-line bill (``benchmarks/micro_reply.py``,
        ``benchmarks/RESULTS.md`` "Reply bytes and line counting").
        """
        if len(lines) != len(decisions):
            raise ValueError(f"{len(lines)} lines but {len(decisions)} decisions")
        keys = list(map(id, decisions))
        count = Tally(keys)
        decision_of = dict(zip(keys, decisions, strict=True))
        codes = Tally(map(_staff_code, lines))
        codes.pop("", None)
        is_staff_code = self.config.shapes.is_staff_code
        malformed = [code for code in codes if not is_staff_code(code)]
        if malformed:
            # Never a label: a code of no valid shape may be an ID number typed into the field.
            codes[MALFORMED_CODE_LABEL] = sum(codes.pop(code) for code in malformed)

        children = self._children_for(institution)
        by_verdict: dict[Verdict, int] = {}
        faults: dict[Reason, int] = {}
        line_children = self._line_children
        uncoded_items = False
        for key, n in count.items():
            decision = decision_of[key]
            verdict, reason = decision.verdict, decision.reason
            line_children[verdict, reason].inc(n)
            by_verdict[verdict] = by_verdict.get(verdict, 0) + n
            if reason in STAFF_CODE_FAULTS:
                faults[reason] = faults.get(reason, 0) + n
            elif reason is Reason.ITEM_CODE_MISSING:
                uncoded_items = True
        amounts = amounts_by_verdict(list(map(_amount_fen, lines)), keys, decision_of, by_verdict)
        if uncoded_items:
            # Reported before the staff code is checked: check it here for the match ratio.
            self._count_uncoded_item_faults(lines, decisions, faults)
        for verdict, n in by_verdict.items():
            children.lines[verdict].inc(n)
        for reason, n in faults.items():
            children.code_faults[reason].inc(n)
        for amount_key, fen in amounts.items():
            self._amount_children[amount_key].inc(fen)
        if degraded:
            self.degraded.inc()
        self.code_shares.add(children.label, codes, len(decisions))

    def _count_uncoded_item_faults(
        self, lines: Sequence[Line], decisions: Sequence[Decision], faults: dict[Reason, int]
    ) -> None:
        for line, decision in zip(lines, decisions, strict=True):
            if decision.reason is not Reason.ITEM_CODE_MISSING:
                continue
            if not line.staff_code:
                faults[Reason.STAFF_CODE_MISSING] = faults.get(Reason.STAFF_CODE_MISSING, 0) + 1
            elif not self.config.shapes.is_staff_code(line.staff_code):
                faults[Reason.STAFF_CODE_MALFORMED] = faults.get(Reason.STAFF_CODE_MALFORMED, 0) + 1
