"""Gauges computed at scrape time from each serving process's state: which data version it
serves and how old that is, what the loader put into that version, and the busiest staff
codes per institution.

These describe a process rather than count events, and some carry label values that come
and go (a data version, a staff code). Plain gauges cannot drop a label value in
prometheus-client's multiprocess mode, so instead every process publishes a small
``ProcessState`` (in memory, or as ``sgw_state_<pid>.json`` beside the multiprocess files)
on each status refresh, and ``StateCollector`` merges the states of the live processes when
Prometheus scrapes. A series disappears as soon as no live process reports it, and the data
age is computed at the scrape, so it keeps growing even if a process stops refreshing.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.code_share import WindowSummary
from gateway.versions import Source, VersionMeta

STATE_FILE_PREFIX = "sgw_state_"


@dataclass(frozen=True, slots=True)
class ProcessState:
    """What one serving process reports about itself."""

    version: str = ""
    as_of: float = 0.0
    sources: tuple[Source, ...] = ()
    counts: Mapping[str, int] = field(default_factory=dict)
    windows: Mapping[str, WindowSummary] = field(default_factory=dict)

    @classmethod
    def of(cls, meta: VersionMeta | None, windows: Mapping[str, WindowSummary]) -> ProcessState:
        if meta is None:
            return cls(windows=windows)
        return cls(meta.version, meta.as_of, meta.sources, dict(meta.counts), windows)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "version": self.version,
                "as_of": self.as_of,
                "sources": [s.to_json() for s in self.sources],
                "counts": dict(self.counts),
                "windows": {
                    inst: [w.lines, w.distinct_codes, [list(t) for t in w.top]]
                    for inst, w in self.windows.items()
                },
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> ProcessState:
        doc: dict[str, Any] = orjson.loads(raw)
        return cls(
            version=str(doc["version"]),
            as_of=float(doc["as_of"]),
            sources=tuple(Source.from_json(s) for s in doc["sources"]),
            counts={str(k): int(v) for k, v in doc["counts"].items()},
            windows={
                inst: WindowSummary(int(w[0]), int(w[1]), tuple((str(c), int(n)) for c, n in w[2]))
                for inst, w in doc["windows"].items()
            },
        )


STATE_FILE_SUFFIX = ".json"
# A state file being written, renamed to its final name once complete.
STATE_TMP_SUFFIX = ".tmp"


def state_file(directory: Path, pid: int) -> Path:
    return directory / f"{STATE_FILE_PREFIX}{pid}{STATE_FILE_SUFFIX}"


def written_state_files(directory: Path) -> list[Path]:
    """Every file this module may have left in ``directory``, complete or half-written, so
    a new run can remove exactly those and nothing an operator put there."""
    return [
        path
        for suffix in (STATE_FILE_SUFFIX, STATE_TMP_SUFFIX)
        for path in directory.glob(f"{STATE_FILE_PREFIX}*{suffix}")
    ]


def write_state_file(directory: Path, pid: int, state: ProcessState) -> None:
    """Replace the process's state file atomically (a scrape never reads half a file)."""
    target = state_file(directory, pid)
    tmp = target.with_suffix(STATE_TMP_SUFFIX)
    tmp.write_bytes(state.to_json())
    os.replace(tmp, target)


def read_state_files(directory: Path) -> list[ProcessState]:
    states = []
    for path in sorted(directory.glob(f"{STATE_FILE_PREFIX}*{STATE_FILE_SUFFIX}")):
        # A worker may be marked dead between the glob and the read.
        with contextlib.suppress(FileNotFoundError):
            states.append(ProcessState.from_json(path.read_bytes()))
    return states


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _latest_sources(sources: Iterable[Source]) -> dict[str, tuple[Source, int]]:
    """kind -> (its most recent source file, how many files built that kind)."""
    latest: dict[str, tuple[Source, int]] = {}
    for source in sources:
        current = latest.get(source.kind)
        files = current[1] + 1 if current else 1
        if current is None or source.loaded_at >= current[0].loaded_at:
            latest[source.kind] = (source, files)
        else:
            latest[source.kind] = (current[0], files)
    return latest


def _merge_windows(states: Iterable[ProcessState]) -> dict[str, tuple[int, int, dict[str, int]]]:
    """institution -> (lines, distinct codes, code -> lines) summed over processes.

    Each process reports only its own busiest codes, so a code busy in one process and
    not in another is slightly undercounted; the number of distinct codes is the largest
    any one process saw.
    """
    merged: dict[str, tuple[int, int, dict[str, int]]] = {}
    for state in states:
        for institution, window in state.windows.items():
            lines, distinct, codes = merged.get(institution, (0, 0, {}))
            for code, n in window.top:
                codes[code] = codes.get(code, 0) + n
            merged[institution] = (lines + window.lines, max(distinct, window.distinct_codes), codes)
    return merged


class StateCollector(Collector):
    """Scrape-time gauges from the states of the live serving processes."""

    def __init__(
        self, states: Callable[[], list[ProcessState]], top_codes: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.states = states
        self.top_codes = top_codes
        self.clock = clock

    def describe(self) -> list[GaugeMetricFamily]:
        # Names only, so registering does not call collect() before the first state exists.
        return [*self._data_families([]), *self._code_families([])]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        states = self.states()
        yield from self._data_families(states)
        yield from self._code_families(states)

    def _data_families(self, states: list[ProcessState]) -> Iterator[GaugeMetricFamily]:
        now = self.clock()
        loaded = [s for s in states if s.version]
        data_loaded = _gauge(
            "sgw_data_loaded", "1 when every serving process has a data version to judge on, else 0."
        )
        as_of = _gauge(
            "sgw_data_as_of_timestamp_seconds",
            "Publish time of the oldest data version any serving process is judging on.",
        )
        age = _gauge(
            "sgw_data_age_seconds",
            "Seconds since the oldest data version any serving process is judging on was published.",
        )
        version_info = _gauge(
            "sgw_data_version_info", "Data versions being served (value 1), by version.", ["version"]
        )
        records = _gauge("sgw_data_records", "Records in the newest served version, by kind.", ["kind"])
        loaded_at = _gauge(
            "sgw_loader_last_load_timestamp_seconds",
            "When the loader read the newest file of each kind in the newest served version.",
            ["kind"],
        )
        rows = _gauge(
            "sgw_loader_rows", "Rows read from the newest file of each kind (newest version).", ["kind"]
        )
        rejected = _gauge(
            "sgw_loader_rejected_rows",
            "Rows rejected from the newest file of each kind (newest version).",
            ["kind"],
        )
        files = _gauge(
            "sgw_loader_files",
            "Files (the last full export and the deltas after it) behind each kind (newest version).",
            ["kind"],
        )
        if states:
            data_loaded.add_metric([], 1.0 if len(loaded) == len(states) else 0.0)
        if loaded:
            oldest = min(s.as_of for s in loaded)
            as_of.add_metric([], oldest)
            age.add_metric([], max(0.0, now - oldest))
            for version in sorted({s.version for s in loaded}):
                version_info.add_metric([version], 1.0)
            newest = max(loaded, key=lambda s: s.as_of)
            for kind, count in sorted(newest.counts.items()):
                records.add_metric([kind], float(count))
            for kind, (source, n_files) in sorted(_latest_sources(newest.sources).items()):
                loaded_at.add_metric([kind], source.loaded_at)
                rows.add_metric([kind], float(source.rows))
                rejected.add_metric([kind], float(source.rejected))
                files.add_metric([kind], float(n_files))
        yield from (data_loaded, as_of, age, version_info, records, loaded_at, rows, rejected, files)

    def _code_families(self, states: list[ProcessState]) -> Iterator[GaugeMetricFamily]:
        window_lines = _gauge(
            "sgw_staff_code_window_lines",
            "Recent lines per institution over which staff-code shares are computed.",
            ["institution"],
        )
        window_codes = _gauge(
            "sgw_staff_code_window_codes", "Distinct staff codes among those recent lines.", ["institution"]
        )
        top_share = _gauge(
            "sgw_staff_code_top_share",
            "Share of an institution's recent lines carried by its single busiest staff code "
            "(a fallback or borrowed code shows up as one code on a large share).",
            ["institution"],
        )
        share = _gauge(
            "sgw_staff_code_share",
            "Share of an institution's recent lines carried by each of its busiest staff codes.",
            ["institution", "staff_code"],
        )
        for institution, (lines, distinct, codes) in sorted(_merge_windows(states).items()):
            if not lines:
                continue
            busiest = sorted(codes.items(), key=lambda item: (-item[1], item[0]))[: self.top_codes]
            window_lines.add_metric([institution], float(lines))
            window_codes.add_metric([institution], float(distinct))
            top_share.add_metric([institution], busiest[0][1] / lines if busiest else 0.0)
            for code, n in busiest:
                share.add_metric([institution, code], n / lines)
        yield from (window_lines, window_codes, top_share, share)
