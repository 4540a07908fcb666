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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from gateway.codes import DEFAULT_SHAPES, CodeShapes
from gateway.versions import Source, VersionMeta
from loader import bans, build, report
from loader.bans import BanYears
from loader.columns import CANONICAL, KINDS, ColumnMapping, detect_kind, required_columns
from loader.departures import Departures
from loader.progress import NoProgress, Progress
from loader.publish import Publisher
from loader.reading import FileFormatError, Table, open_table, scan_file
from loader.rows import WHOLE_ROW, RowError, RowValidator

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
    # Refuse a full export that would drop more than this share of the live records.
    max_shrink_ratio: float = 0.20
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
            errors.append(RowError(line, WHOLE_ROW, f"含无法按 {table.encoding} 解码的字符"))
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


def sync_file(
    path: Path,
    publisher: Publisher,
    options: SyncOptions,
    progress: Progress | None = None,
) -> SyncResult:
    with _collector_paused():
        return _sync(path, publisher, options, progress)


def _sync(
    path: Path,
    publisher: Publisher,
    options: SyncOptions,
    progress: Progress | None,
) -> SyncResult:
    started = time.monotonic()
    bar = progress or NoProgress()
    mode = "delta" if options.delta else "full"
    result = SyncResult(str(path), Outcome.FAILED, "", mode=mode)
    lap = started

    def phase_done(name: str) -> None:
        nonlocal lap
        now = time.monotonic()
        result.phases[name] = round(now - lap, 3)
        lap = now

    def finish(outcome: Outcome, message: str) -> SyncResult:
        bar.close()
        result.outcome = outcome
        result.message = message
        result.seconds = round(time.monotonic() - started, 3)
        level = logging.WARNING if outcome in (Outcome.REFUSED, Outcome.FAILED) else logging.INFO
        log.log(
            level,
            "sync finished",
            extra={"path": str(path), "outcome": outcome.name.lower(), "detail": message},
        )
        return result

    try:
        if not path.is_file():
            raise FileFormatError(f"{path}: no such file")
        facts = scan_file(path)
        table = open_table(path, facts)
    except (FileFormatError, OSError) as exc:
        return finish(Outcome.REFUSED, f"cannot read the file: {exc}")
    result.encoding, result.format, result.sha256 = table.encoding, table.format, facts.sha256
    headers = [options.mapping.canonical(h) for h in table.headers]
    kind = options.kind or detect_kind(headers)
    if kind is None or kind not in KINDS:
        return finish(
            Outcome.REFUSED,
            "cannot tell the file kind from its header row "
            f"({', '.join(h for h in headers if h)}); pass --kind staff|institution|department",
        )
    detected = detect_kind(headers)
    if options.kind and detected and detected != options.kind:
        return finish(
            Outcome.REFUSED,
            f"--kind {options.kind} given, but the header row is a {detected} export's; nothing loaded",
        )
    result.kind = kind
    missing = [h for h in required_columns(kind, options.delta) if h not in headers]
    if missing:
        return finish(Outcome.REFUSED, f"the header row lacks required column(s): {', '.join(missing)}")
    duplicated = sorted({h for h in headers if h and headers.count(h) > 1})
    if duplicated:
        return finish(Outcome.REFUSED, f"columns appear twice (after aliases): {', '.join(duplicated)}")
    unknown = [h for h in headers if h and h not in CANONICAL[kind]]
    if unknown:
        log.info("ignoring unknown columns", extra={"columns": unknown})

    fingerprint = result.options = options_fingerprint(kind, options)
    base = publisher.live_meta()
    if already_loaded(base, kind, mode, facts.sha256, fingerprint):
        result.unchanged = True
        result.data_version = base.version if base else None
        log.info("file already loaded", extra={"path": str(path), "sha256": facts.sha256})
        return finish(
            Outcome.PUBLISHED,
            f"already loaded (sha256 {facts.sha256[:12]}…, same options): nothing changed",
        )
    if _loaded_otherwise(base, kind, facts.sha256):
        log.info(
            "file loaded before with other options: loading it again",
            extra={"path": str(path), "sha256": facts.sha256},
        )

    validator = RowValidator(
        kind, headers, options.shapes, options.mapping, options.delta, options.keep_names
    )
    departures = Departures.for_headers(table.headers) if kind == "staff" else None
    try:
        groups, errors = _validate(table, validator, bar, departures)
    except FileFormatError as exc:
        return finish(Outcome.REFUSED, f"cannot read the file: {exc}")
    phase_done("read")
    result.rejected = len(errors)
    result.accepted = sum(map(len, groups.values())) - (departures.derived if departures else 0)
    result.rows = result.accepted + result.rejected
    report_path = options.report or report.default_path(path)
    if errors:
        report.write(report_path, path, errors)
        result.report = str(report_path)
        result.rejected_by_reason = report.by_reason(errors)
    elif options.report is None:
        report_path.unlink(missing_ok=True)  # an earlier run's report of this file is stale now

    result.banned, result.bans_report = bans.report(kind, groups, options.ban_years, path)
    if result.rows == 0:
        return finish(Outcome.REFUSED, "the file has a header but no data rows")
    bad_ratio = len(errors) / result.rows
    if bad_ratio > options.max_bad_ratio:
        if not options.force:
            return finish(
                Outcome.REFUSED,
                f"{len(errors)} of {result.rows} rows are bad ({bad_ratio:.1%} > "
                f"{options.max_bad_ratio:.0%}); see {result.report}; --force publishes anyway",
            )
        result.forced.append(f"bad rows {bad_ratio:.1%} > {options.max_bad_ratio:.0%}")

    source = Source(
        kind, str(path.resolve()), facts.sha256, mode, result.rows, len(errors), time.time(), fingerprint
    )
    with publisher.lock():
        base = publisher.live_meta()
        if already_loaded(base, kind, mode, facts.sha256, fingerprint):  # loaded meanwhile by another run
            result.unchanged = True
            result.data_version = base.version if base else None
            return finish(Outcome.PUBLISHED, "already loaded by another run: nothing changed")
        if options.delta:
            live = publisher.live_records(kind, list(groups), base)
            changes = build.delta_records(kind, groups, live)
            del groups
            result.records = len(changes)
            phase_done("build")
            meta = publisher.publish_delta(kind, changes, live, source, base, _writing(bar))
        else:
            refusal = _shrink_refusal(kind, len(groups), base, options, result)
            if refusal:
                return finish(Outcome.REFUSED, refusal)
            result.records = len(groups)
            meta = publisher.publish_full(
                kind, build.encode_full(kind, groups), source, base, len(groups), _writing(bar)
            )
            del groups
        phase_done("publish")
        publisher.collect_garbage()
    if result.forced:
        log.warning(
            "published with --force: guards overridden",
            extra={"path": str(path), "overridden": result.forced},
        )
    result.data_version = meta.version
    forced = f" (FORCED past: {'; '.join(result.forced)})" if result.forced else ""
    if errors:
        return finish(
            Outcome.PUBLISHED_WITH_REJECTS,
            f"published {meta.version}{forced}; {len(errors)} row(s) rejected, see {result.report}",
        )
    return finish(Outcome.PUBLISHED, f"published {meta.version}{forced}")


def _shrink_refusal(
    kind: str, records: int, base: VersionMeta | None, options: SyncOptions, result: SyncResult
) -> str | None:
    """Why a full export must not replace the live table (a truncated download), if it must not."""
    live_count = base.counts.get(kind) if base else None
    result.live_records_before = live_count
    if kind == "department" or not live_count or records >= live_count * (1 - options.max_shrink_ratio):
        return None
    drop = f"a drop of more than {options.max_shrink_ratio:.0%}"
    if options.force:
        result.forced.append(f"{kind} records {live_count} -> {records} ({drop})")
        return None
    return (
        f"a full {kind} export with {records} records would replace {live_count} "
        f"live ones ({drop}): truncated download? --force publishes anyway"
    )


def _writing(bar: Progress) -> Callable[[int, int], None]:
    return lambda done, total: bar.update("writing", done, total)
