"""Every Prometheus metric the gateway exposes, declared in one place.

Metrics take a ``registry`` so tests build a fresh one and read it back. Label values for
verdicts and reasons are the contract's enum names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.policy import Reason, Verdict
from gateway.rules import Decision

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


def decision_size_class(lines: int) -> str:
    for bound, label in DECISION_SIZE_CLASSES:
        if lines <= bound:
            return label
    return DECISION_SIZE_LARGEST


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.lines = Counter(
            "sgw_lines_total",
            "Settlement lines judged, by verdict and reason.",
            ["verdict", "reason"],
            registry=registry,
        )
        self.data_as_of = Gauge(
            "sgw_data_as_of_timestamp_seconds",
            "Publish time of the data version being served.",
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
        self._decision_children = {
            label: self.decision_seconds.labels(label)
            for label in (*(label for _, label in DECISION_SIZE_CLASSES), DECISION_SIZE_LARGEST)
        }
        # Pre-create every label pair so dashboards see zeros rather than gaps.
        self._line_children = {(v, r): self.lines.labels(v.name, r.name) for v in Verdict for r in Reason}

    def observe_decisions(self, decisions: list[Decision]) -> None:
        counts: dict[tuple[Verdict, Reason], int] = {}
        for d in decisions:
            key = (d.verdict, d.reason)
            counts[key] = counts.get(key, 0) + 1
        for key, n in counts.items():
            self._line_children[key].inc(n)

    def observe_decision_time(self, lines: int, seconds: float) -> None:
        self._decision_children[decision_size_class(lines)].observe(seconds)
