"""One ``settlement-loader sync``: read a file, validate every row, apply the guards, publish.

Outcomes map to the contract's exit codes: 0 published cleanly, 3 published with some rows
rejected, 4 refused by a guard (live data untouched). Rejected rows go to a report beside
the input with the line number (header = line 1), the column and the reason.

Rows are grouped by record key as they are validated (a person's rows need not be adjacent),
so a million-row export is held once, as compact tuples, and encoded straight into the
publisher's pipelined writes.
"""

from __future__ import annotations

import contextlib
import enum
import gc
import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from gateway.codes import DEFAULT_SHAPES, CodeShapes
from gateway.versions import Source, VersionMeta
from loader import bans, build, guards, report
from loader.bans import BanYears
from loader.columns import CANONICAL, KINDS, ColumnMapping, detect_kind, required_columns
from loader.departures import Departures
from loader.progress import NoProgress, Progress
from loader.publish import DeltaPart, FullPart, Publisher
from loader.reading import FileFormatError, Table, open_export, open_table, scan_file
from loader.rows import WHOLE_ROW, RowError, RowValidator
from loader.state import CountsFile, PublishedCounts

log = logging.getLogger(__name__)

# Rows validated between two progress updates.
PROGRESS_EVERY = 1 << 14


class Outcome(enum.IntEnum):
    """Exit codes of ``settlement-loader sync`` (the contract)."""

    PUBLISHED = 0
    FAILED = 1
    USAGE = 2
    PUBLISHED_WITH_REJECTS = 3
    REFUSED = 4


@dataclass(frozen=True)
class SyncOptions:
    kind: str | None = None
    delta: bool = False
    force: bool = False
    report: Path | None = None
    mapping: ColumnMapping = field(default_factory=ColumnMapping)
    shapes: CodeShapes = DEFAULT_SHAPES
    keep_names: bool = False
    # Refuse when more than this share of rows is bad.
    max_bad_ratio: float = 0.10
    # Refuse a change that would take away more than this share of the live records (of the
    # last published ones when the store has no live version); department files: stops.
    max_shrink_ratio: float = 0.20
    # Publish a version lacking staff or institutions (``--force`` does too). The gateway will
    # not serve it: for building a version one kind at a time, the other kind coming next.
    allow_incomplete: bool = False
    # Where the last published counts are kept outside the store (None: not kept).
    state: CountsFile | None = None
    # Ban lengths after 解除/注销 (the policy profile's): banned 正常 rows are reported.
    ban_years: BanYears = field(default_factory=BanYears)


@dataclass
class SyncResult:
    path: str
    outcome: Outcome
    message: str
    kind: str | None = None
    mode: str = "full"
    format: str | None = None
    encoding: str | None = None
    sha256: str | None = None
    # options_fingerprint(): with sha256, what makes a re-run of the file a no-op.
    options: str | None = None
    rows: int = 0
    accepted: int = 0
    rejected: int = 0
    rejected_by_reason: Mapping[str, int] = field(default_factory=dict)
    records: int = 0
    live_records_before: int | None = None
    report: str | None = None
    data_version: str | None = None
    unchanged: bool = False
    forced: list[str] = field(default_factory=list)
    # 正常 rows that start inside a ban (loader/bans.py), and their report.
    banned: int = 0
    bans_report: str | None = None
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc = {k: v for k, v in vars(self).items() if k != "outcome"}
        doc["rejected_by_reason"] = dict(self.rejected_by_reason)
        doc["outcome"] = self.outcome.name.lower()
        doc["exit_code"] = int(self.outcome)
        return doc


def options_fingerprint(kind: str, options: SyncOptions) -> str:
    """A hash of everything besides the file's bytes that decides what a load of it yields.

    The mapping (built-in aliases and statuses included, so a release that learns a new
    spelling counts too), the code shapes, whether names are kept, the kind and the mode:
    re-running a file with any of these changed must load it again, not report it loaded.
    Guards and ``--force`` are left out: they decide whether a load publishes, not what."""
    doc = {
        "kind": kind,
        "delta": options.delta,
        "aliases": sorted(options.mapping.aliases.items()),
        "statuses": sorted((spelling, int(status)) for spelling, status in options.mapping.statuses.items()),
        "staff_code": options.shapes.staff.pattern,
        "institution_code": options.shapes.institution.pattern,
        "keep_names": options.keep_names,
    }
    return hashlib.sha256(orjson.dumps(doc)).hexdigest()


def already_loaded(meta: VersionMeta | None, kind: str, mode: str, sha256: str, options: str) -> bool:
    """Whether the live version already reflects this very file read with these very options
    (``options_fingerprint``), so that a re-run is a no-op."""
    if meta is None:
        return False
    of_kind = [s for s in meta.sources if s.kind == kind]
    if mode == "full":
        last = of_kind[-1] if of_kind else None
        return last is not None and (last.sha256, last.mode, last.options) == (sha256, "full", options)
    return any((s.sha256, s.options) == (sha256, options) for s in of_kind)


def _loaded_otherwise(meta: VersionMeta | None, kind: str, sha256: str) -> bool:
    """Whether this file is behind the live version but was read with other options."""
    return meta is not None and any(s.kind == kind and s.sha256 == sha256 for s in meta.sources)


def _validate(
    table: Table, validator: RowValidator, progress: Progress, departures: Departures | None = None
) -> tuple[dict[str, list[Any]], list[RowError]]:
    """Entries grouped by record key, and the rejected rows, in file order (with the 封锁 an
    employment end date implies, ``loader.departures``)."""
    groups: dict[str, list[Any]] = {}
    errors: list[RowError] = []
    damaged = table.damaged_rows
    check = validator.check
    cursor = table.cursor
    seen = 0
    for line, cells in table.rows:
        if not cells or (not cells[0] and not "".join(cells).strip()):
            continue  # a blank line is not a row
        seen += 1
        if seen % PROGRESS_EVERY == 0:
            progress.update("reading", *cursor.position())
        if damaged and line in damaged:
            errors.append(RowError(line, WHOLE_ROW, table.fault(line)))
            continue
        checked = check(line, cells)
        if type(checked) is RowError:
            errors.append(checked)
            continue
        key = checked[1]  # the record key: staff code, institution code, or institution
        group = groups.get(key)
        if group is None:
            group = groups[key] = [checked]
        else:
            group.append(checked)
        if departures is not None:
            derived_error = departures.add(checked, cells, group)  # type: ignore[arg-type]
            if derived_error is not None:
                errors.append(derived_error)
                if not group:
                    del groups[key]
    return groups, errors


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """A full export allocates millions of long-lived tuples and lists and no reference
    cycles; the cyclic collector would traverse all of them again and again (a third of
    the load's time, measured), so it is paused for the load."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass(frozen=True)
class FileSpec:
    """One file of a publish, and whether it is a delta."""

    path: Path
    delta: bool = False


@dataclass
class SetResult:
    """The outcome of one publish of one or several files: one data version, or none."""

    outcome: Outcome
    message: str
    files: list[SyncResult]
    data_version: str | None = None
    forced: list[str] = field(default_factory=list)
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.name.lower(),
            "exit_code": int(self.outcome),
            "message": self.message,
            "data_version": self.data_version,
            "forced": list(self.forced),
            "seconds": self.seconds,
            "phases": dict(self.phases),
            "files": [f.to_json() for f in self.files],
        }


@dataclass
class _Prepared:
    """A file read and validated, waiting to be published with the others of its set."""

    result: SyncResult
    kind: str
    mode: str
    groups: dict[str, list[Any]]
    errors: int
    source: Source


def sync_file(
    path: Path,
    publisher: Publisher,
    options: SyncOptions,
    progress: Progress | None = None,
) -> SyncResult:
    """Publish one file (``options.delta`` says whether it is a delta) as a new version."""
    done = sync_files([FileSpec(path, options.delta)], publisher, options, progress)
    return done.files[0]


def sync_files(
    specs: Sequence[FileSpec],
    publisher: Publisher,
    options: SyncOptions,
    progress: Progress | None = None,
) -> SetResult:
    """Publish all ``specs`` as one data version (at most one file per kind), or nothing."""
    with _collector_paused():
        return _sync_set(specs, publisher, options, progress or NoProgress())


def _prepare(
    spec: FileSpec, base: VersionMeta | None, options: SyncOptions, bar: Progress
) -> tuple[SyncResult, _Prepared | None]:
    """Read and validate one file, write its report and apply the bad-row guard. Returns its
    result and, unless it was refused or is already live, what to publish."""
    path = spec.path
    mode = "delta" if spec.delta else "full"
    result = SyncResult(str(path), Outcome.FAILED, "", mode=mode)

    def refused(message: str) -> tuple[SyncResult, None]:
        result.outcome, result.message = Outcome.REFUSED, message
        return result, None

    try:
        with open_export(path) as export:  # a regular file only: no link, FIFO or device
            facts = scan_file(export)
            table = open_table(export, facts)
    except (FileFormatError, OSError) as exc:
        return refused(f"cannot read the file: {exc}")
    result.encoding, result.format, result.sha256 = table.encoding, table.format, facts.sha256
    headers = [options.mapping.canonical(h) for h in table.headers]
    kind = options.kind or detect_kind(headers)
    if kind is None or kind not in KINDS:
        return refused(
            "cannot tell the file kind from its header row "
            f"({', '.join(h for h in headers if h)}); pass --kind staff|institution|department"
        )
    detected = detect_kind(headers)
    if options.kind and detected and detected != options.kind:
        return refused(
            f"--kind {options.kind} given, but the header row is a {detected} export's; nothing loaded"
        )
    result.kind = kind
    missing = [h for h in required_columns(kind, spec.delta) if h not in headers]
    if missing:
        return refused(f"the header row lacks required column(s): {', '.join(missing)}")
    duplicated = sorted({h for h in headers if h and headers.count(h) > 1})
    if duplicated:
        return refused(f"columns appear twice (after aliases): {', '.join(duplicated)}")
    unknown = [h for h in headers if h and h not in CANONICAL[kind]]
    if unknown:
        log.info("ignoring unknown columns", extra={"columns": unknown})

    fingerprint = result.options = options_fingerprint(kind, replace(options, delta=spec.delta))
    if already_loaded(base, kind, mode, facts.sha256, fingerprint):
        result.unchanged = True
        result.data_version = base.version if base else None
        result.outcome = Outcome.PUBLISHED
        result.message = f"already loaded (sha256 {facts.sha256[:12]}…, same options): nothing changed"
        log.info("file already loaded", extra={"path": str(path), "sha256": facts.sha256})
        return result, None
    if _loaded_otherwise(base, kind, facts.sha256):
        log.info(
            "file loaded before with other options: loading it again",
            extra={"path": str(path), "sha256": facts.sha256},
        )

    validator = RowValidator(kind, headers, options.shapes, options.mapping, spec.delta, options.keep_names)
    departures = Departures.for_headers(table.headers) if kind == "staff" else None
    try:
        groups, errors = _validate(table, validator, bar, departures)
    except FileFormatError as exc:
        return refused(f"cannot read the file: {exc}")
    result.rejected = len(errors)
    result.accepted = sum(map(len, groups.values())) - (departures.derived if departures else 0)
    result.rows = result.accepted + result.rejected
    report_path = options.report or report.default_path(path)
    if errors:
        try:
            report.write(report_path, path, errors)
        except report.ReportRefused as exc:
            return refused(f"{exc}; nothing loaded")
        result.report = str(report_path)
        result.rejected_by_reason = report.by_reason(errors)
    elif options.report is None:
        report.remove_stale(report_path)  # an earlier run's report of this file is stale now

    result.banned, result.bans_report = bans.report(kind, groups, options.ban_years, path)
    if result.rows == 0:
        return refused("the file has a header but no data rows")
    bad_ratio = len(errors) / result.rows
    if bad_ratio > options.max_bad_ratio:
        if not options.force:
            return refused(
                f"{len(errors)} of {result.rows} rows are bad ({bad_ratio:.1%} > "
                f"{options.max_bad_ratio:.0%}); see {result.report}; --force publishes anyway"
            )
        result.forced.append(f"bad rows {bad_ratio:.1%} > {options.max_bad_ratio:.0%}")
    source = Source(
        kind, str(path.resolve()), facts.sha256, mode, result.rows, len(errors), time.time(), fingerprint
    )
    return result, _Prepared(result, kind, mode, groups, len(errors), source)


def _sync_set(
    specs: Sequence[FileSpec], publisher: Publisher, options: SyncOptions, bar: Progress
) -> SetResult:
    started = time.monotonic()
    lap = started
    phases: dict[str, float] = {}

    def phase_done(name: str) -> None:
        nonlocal lap
        now = time.monotonic()
        phases[name] = round(now - lap, 3)
        lap = now

    results: list[SyncResult] = []
    forced: list[str] = []

    def finish(outcome: Outcome, message: str, version: str | None = None) -> SetResult:
        bar.close()
        seconds = round(time.monotonic() - started, 3)
        for r in results:
            if not (r.unchanged and outcome is Outcome.PUBLISHED):
                r.outcome = (
                    outcome
                    if outcome is not Outcome.PUBLISHED_WITH_REJECTS or r.rejected
                    else Outcome.PUBLISHED
                )
            if version is not None and not r.unchanged:
                r.data_version = version
            r.message = r.message if len(results) > 1 and r.message else message
            r.seconds, r.phases = seconds, dict(phases)
            r.forced = [*r.forced, *(f for f in forced if f not in r.forced)]
        if len(results) == 1:
            results[0].message = message
        level = (
            logging.WARNING if outcome in (Outcome.REFUSED, Outcome.FAILED, Outcome.USAGE) else logging.INFO
        )
        log.log(
            level,
            "sync finished",
            extra={"paths": [r.path for r in results], "outcome": outcome.name.lower(), "detail": message},
        )
        return SetResult(outcome, message, results, version, forced, seconds, dict(phases))

    base = publisher.live_meta()
    prepared: list[_Prepared] = []
    for spec in specs:
        result, ready = _prepare(spec, base, options, bar)
        results.append(result)
        if ready is not None:
            prepared.append(ready)
    phase_done("read")

    refused = [r for r in results if r.outcome is Outcome.REFUSED]
    if refused:
        if len(results) == 1:
            return finish(Outcome.REFUSED, refused[0].message)
        return finish(
            Outcome.REFUSED,
            "; ".join(f"{Path(r.path).name}: {r.message}" for r in refused) + " — nothing was published",
        )
    by_kind: dict[str, list[str]] = {}
    for r in results:
        by_kind.setdefault(r.kind or "?", []).append(Path(r.path).name)
    repeated = {kind: names for kind, names in by_kind.items() if len(names) > 1}
    if repeated:
        named = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in repeated.items())
        return finish(
            Outcome.USAGE,
            f"one file per kind makes a version, but several were given ({named}): sync them one after another",
        )
    if not prepared:
        version = base.version if base else None
        return finish(
            Outcome.PUBLISHED,
            results[0].message if len(results) == 1 else "all files already loaded: nothing changed",
            version,
        )

    with publisher.lock():
        base = publisher.live_meta()
        still = []
        for p in prepared:
            if already_loaded(base, p.kind, p.mode, p.source.sha256, p.source.options):  # loaded meanwhile
                p.result.unchanged = True
                p.result.message = "already loaded by another run: nothing changed"
            else:
                still.append(p)
        if not still:
            return finish(
                Outcome.PUBLISHED,
                "already loaded by another run: nothing changed",
                base.version if base else None,
            )
        plan = _Plan(publisher, base, options)
        parts = [plan.part(p) for p in still]
        if any(isinstance(part, DeltaPart) for part in parts):
            phase_done("build")  # a full export is encoded as it is written: part of "publish"
        refusal = plan.refusal(forced)
        if refusal:
            return finish(Outcome.REFUSED, f"{refusal}; nothing was published; --force publishes anyway")
        writing = _writing(bar)
        if len(parts) == 1 and isinstance(parts[0], DeltaPart):
            (only,) = still
            meta = publisher.publish_delta(
                only.kind, parts[0].changes, plan.live[only.kind], only.source, base, writing
            )
        else:
            meta = publisher.publish_set(parts, base, writing)
        del parts, still, prepared, plan
        phase_done("publish")
        publisher.collect_garbage()
        _remember(publisher, options, meta)
    if forced or any(r.forced for r in results):
        log.warning(
            "published with --force: guards overridden",
            extra={
                "paths": [r.path for r in results],
                "overridden": forced + [f for r in results for f in r.forced],
            },
        )
    all_forced = forced + [f for r in results for f in r.forced if f not in forced]
    note = f" (FORCED past: {'; '.join(all_forced)})" if all_forced else ""
    rejected = [r for r in results if r.rejected]
    if rejected:
        reports = ", ".join(str(r.report) for r in rejected)
        count = sum(r.rejected for r in rejected)
        return finish(
            Outcome.PUBLISHED_WITH_REJECTS,
            f"published {meta.version}{note}; {count} row(s) rejected, see {reports}",
            meta.version,
        )
    return finish(Outcome.PUBLISHED, f"published {meta.version}{note}", meta.version)


class _Plan:
    """The changes of one publish, measured against the reference for the guards."""

    def __init__(self, publisher: Publisher, base: VersionMeta | None, options: SyncOptions) -> None:
        self.publisher = publisher
        self.base = base
        self.options = options
        self.changes: list[guards.Change] = []
        # The live records a delta replaces, by kind (for its new count).
        self.live: dict[str, dict[str, bytes | None]] = {}
        self._live_stops: set[guards.Stop] | None = None
        self.reference = self._reference()

    def _reference(self) -> guards.Reference:
        """Per kind: the live version's count when it has that kind, else the count the last
        publish left on disk (the store lost its data, or a forced publish left it out)."""
        counts: dict[str, int] = {}
        origins: dict[str, str] = {}
        state = self.options.state
        kept = state.read() if state is not None else None
        if kept is not None and state is not None:
            origin = (
                f"the last version published ({kept.version}, as kept in {state.path}; "
                "the store has no live table of this kind)"
            )
            for kind, count in kept.counts.items():
                counts[kind], origins[kind] = count, origin
            counts["department"], origins["department"] = kept.department_stops, origin
        base = self.base
        if base is not None:
            for kind in base.tables:
                counts[kind] = int(base.counts.get(kind, 0))
                origins[kind] = f"the live version {base.version}"
            if "department" in base.tables:
                counts["department"] = len(self.live_stops())
        return guards.Reference(counts, origins)

    def live_stops(self) -> set[guards.Stop]:
        if self._live_stops is None:
            table = self.base.tables.get("department") if self.base else None
            self._live_stops = guards.stops_of(self.publisher.table_records("department", table))
        return self._live_stops

    def part(self, p: _Prepared) -> FullPart | DeltaPart:
        """What ``p`` publishes, with its change noted for the guards."""
        result = p.result
        before = int(self.base.counts.get(p.kind, 0)) if self.base else 0
        result.live_records_before = before if self.base and p.kind in self.base.tables else None
        if p.mode == "delta":
            live = self.publisher.live_records(p.kind, list(p.groups), self.base)
            changes = build.delta_records(p.kind, p.groups, live)
            p.groups = {}
            self.live[p.kind] = live
            added = sum(1 for k, v in changes.items() if v is not None and live.get(k) is None)
            removed = sum(1 for k, v in changes.items() if v is None and live.get(k) is not None)
            result.records = len(changes)
            if p.kind == "department":
                was, now = guards.stops_of(live.items()), guards.stops_of(changes.items())
                gone, examples = guards.stops_gone(was, now)
                after = self.reference.counts.get("department", 0) - len(was) + len(now)
                self.changes.append(guards.Change(p.kind, "delta", after, gone, examples))
            else:
                gone_codes = tuple(k for k, v in changes.items() if v is None and live.get(k) is not None)[:3]
                self.changes.append(
                    guards.Change(p.kind, "delta", before + added - removed, removed, gone_codes)
                )
            return DeltaPart(p.kind, p.source, changes, added - removed)
        result.records = len(p.groups)
        if p.kind == "department":
            records = dict(build.encode_full(p.kind, p.groups))
            p.groups = {}
            now_stops = guards.stops_of(records.items())
            gone, examples = guards.stops_gone(self.live_stops() if self.base else set(), now_stops)
            self.changes.append(guards.Change(p.kind, "full", len(now_stops), gone, examples))
            return FullPart(p.kind, p.source, records.items(), len(records))
        self.changes.append(guards.Change(p.kind, "full", len(p.groups)))
        total = len(p.groups)
        records_stream = build.encode_full(p.kind, p.groups)
        p.groups = {}
        return FullPart(p.kind, p.source, records_stream, total)

    def refusal(self, forced: list[str]) -> str | None:
        """Why the publish must not go ahead, if it must not; with ``--force``, every guard
        overridden is noted in ``forced`` instead."""
        present = {c.kind for c in self.changes} | set(self.base.tables if self.base else ())
        absent = [guards.Change(k, "absent", 0) for k in self.reference.counts if k not in present]
        reasons = [
            r
            for change in [*self.changes, *absent]
            if (r := guards.shrink_refusal(change, self.reference, self.options.max_shrink_ratio))
        ]
        before = {k: int(self.base.counts.get(k, 0)) for k in self.base.tables} if self.base else {}
        missing = guards.missing_kinds(before, self.changes)
        if missing and self.options.allow_incomplete:
            log.info("publishing an incomplete version, as allowed", extra={"missing": missing})
        elif missing:
            reasons.append(guards.completeness_refusal(missing))
        if not reasons:
            return None
        if self.options.force:
            forced.extend(note for note, _ in reasons)
            return None
        return "; ".join(refusal for _, refusal in reasons)


def _remember(publisher: Publisher, options: SyncOptions, meta: VersionMeta) -> None:
    """Keep the counts now live outside the store (``loader.state``), for the shrink guard
    of the first publish after the store loses its data."""
    if options.state is None:
        return
    stops = guards.stops_of(publisher.table_records("department", meta.tables.get("department")))
    try:
        options.state.write(PublishedCounts(dict(meta.counts), len(stops), meta.version, meta.as_of))
    except OSError as exc:
        log.error(
            "could not keep the published counts: the shrink guard will not survive losing the store",
            extra={"path": str(options.state.path), "error": str(exc)},
        )


def _writing(bar: Progress) -> Callable[[int, int], None]:
    return lambda done, total: bar.update("writing", done, total)
