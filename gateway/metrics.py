"""Every Prometheus metric the gateway exposes, declared in one place.

Metrics take a ``registry`` so tests build a fresh one and read it back. Label values for
verdicts and reasons are the contract's enum names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.policy import Reason, Verdict
from gateway.rules import Decision


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
        # Pre-create every label pair so dashboards see zeros rather than gaps.
        self._line_children = {(v, r): self.lines.labels(v.name, r.name) for v in Verdict for r in Reason}

    def observe_decisions(self, decisions: list[Decision]) -> None:
        counts: dict[tuple[Verdict, Reason], int] = {}
        for d in decisions:
            key = (d.verdict, d.reason)
            counts[key] = counts.get(key, 0) + 1
        for key, n in counts.items():
            self._line_children[key].inc(n)
