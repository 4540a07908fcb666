"""Prometheus metrics of ``settlement-loader watch``, declared in one place.

An operator's questions about the feed are: when did data last load (alert when too long
ago), how many rows came and how many were rejected, how long a load takes, and whether
files are piling up or being refused. Metrics take a ``registry`` so tests read them back.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from loader.columns import KINDS
from loader.sync import Outcome, SyncResult

DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 60, 120, 300)


class LoaderMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.last_success = Gauge(
            "sgw_loader_last_success_timestamp_seconds",
            "When a file of this kind was last published (or found already live).",
            ["kind"],
            registry=registry,
        )
        self.rows_loaded = Counter(
            "sgw_loader_rows_loaded_total", "Rows accepted and published.", ["kind"], registry=registry
        )
        self.rows_rejected = Counter(
            "sgw_loader_rows_rejected_total",
            "Rows rejected (in published and refused files alike).",
            ["kind"],
            registry=registry,
        )
        self.banned_rows = Counter(
            "sgw_loader_banned_rows_total",
            "正常 rows starting inside a ban after a 解除 or 注销 (000 §14, 002 §12, 004 §65).",
            ["kind"],
            registry=registry,
        )
        self.duration = Histogram(
            "sgw_loader_sync_duration_seconds",
            "Time to load one file, from reading to the live pointer's move.",
            ["kind"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.files = Counter(
            "sgw_loader_files_total",
            "Files handled, by outcome (published, published_with_rejects, refused, failed).",
            ["outcome"],
            registry=registry,
        )
        self.pending = Gauge(
            "sgw_loader_pending_files", "Export files waiting in the watched directory.", registry=registry
        )
        self.last_scan = Gauge(
            "sgw_loader_last_scan_timestamp_seconds",
            "When the watched directory was last scanned (the watcher is alive).",
            registry=registry,
        )
        for kind in KINDS:
            for family in (
                self.last_success,
                self.rows_loaded,
                self.rows_rejected,
                self.duration,
                self.banned_rows,
            ):
                family.labels(kind)
        for outcome in Outcome:
            if outcome is not Outcome.USAGE:
                self.files.labels(outcome.name.lower())

    def observe(self, result: SyncResult, now: float) -> None:
        self.files.labels(result.outcome.name.lower()).inc()
        if result.kind is None:
            return
        self.rows_rejected.labels(result.kind).inc(result.rejected)
        self.banned_rows.labels(result.kind).inc(result.banned)
        if result.outcome in (Outcome.PUBLISHED, Outcome.PUBLISHED_WITH_REJECTS):
            self.last_success.labels(result.kind).set(now)
            if not result.unchanged:
                self.rows_loaded.labels(result.kind).inc(result.accepted)
                self.duration.labels(result.kind).observe(result.seconds)
