"""One ``settlement-loader sync``: read a file, validate every row, apply the guards, publish.

Outcomes map to the contract's exit codes: 0 published cleanly, 3 published with some rows
rejected, 4 refused by a guard (live data untouched). Rejected rows go to a report beside
the input with the line number (header = line 1), the column and the reason.
"""

from __future__ import annotations

import csv
import enum
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gateway.codes import DEFAULT_SHAPES, CodeShapes
from gateway.versions import Source, VersionMeta
from loader import build
from loader.columns import CANONICAL, KINDS, REQUIRED, ColumnMapping, detect_kind
from loader.publish import Publisher
from loader.reading import FileFormatError, open_table
from loader.rows import Entry, RowError, RowValidator

log = logging.getLogger(__name__)


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


@dataclass
class SyncResult:
    path: str
    outcome: Outcome
    message: str
    kind: str | None = None
    mode: str = "full"
    rows: int = 0
    accepted: int = 0
    rejected: int = 0
    records: int = 0
    live_records_before: int | None = None
    report: str | None = None
    data_version: str | None = None
    unchanged: bool = False
    seconds: float = 0.0
    encoding: str | None = None

    def to_json(self) -> dict[str, object]:
        doc = {k: v for k, v in vars(self).items() if k != "outcome"}
        doc["outcome"] = self.outcome.name.lower()
        doc["exit_code"] = int(self.outcome)
        return doc


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def already_loaded(meta: VersionMeta | None, kind: str, mode: str, sha256: str) -> bool:
    """Whether the live version already reflects this very file (idempotent re-runs)."""
    if meta is None:
        return False
    of_kind = [s for s in meta.sources if s.kind == kind]
    if mode == "full":
        return bool(of_kind) and of_kind[-1].sha256 == sha256 and of_kind[-1].mode == "full"
    return any(s.sha256 == sha256 for s in of_kind)


def write_report(path: Path, source: Path, errors: list[RowError]) -> None:
    with path.open("w", encoding="utf-8-sig", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "line", "column", "reason", "value"])
        for e in errors:
            writer.writerow([str(source), e.line, e.column, e.reason, e.value])


def default_report_path(path: Path) -> Path:
    return path.with_name(path.name + ".rejects.csv")


def _rows_as_dicts(
    headers: list[str], rows: Iterator[tuple[int, list[str]]]
) -> Iterator[tuple[int, dict[str, str]]]:
    width = len(headers)
    for line, cells in rows:
        if not any(c.strip() for c in cells):
            continue  # blank line: not a row
        if len(cells) < width:
            cells = cells + [""] * (width - len(cells))
        yield line, dict(zip(headers, cells, strict=False))


def sync_file(
    path: Path,
    publisher: Publisher,
    options: SyncOptions,
    progress: Callable[[int], None] | None = None,
) -> SyncResult:
    started = time.monotonic()
    mode = "delta" if options.delta else "full"
    result = SyncResult(str(path), Outcome.FAILED, "", mode=mode)

    def finish(outcome: Outcome, message: str) -> SyncResult:
        result.outcome = outcome
        result.message = message
        result.seconds = round(time.monotonic() - started, 3)
        return result

    try:
        table = open_table(path)
    except FileFormatError as exc:
        return finish(Outcome.REFUSED, f"cannot read the file: {exc}")
    result.encoding = table.encoding
    headers = [options.mapping.canonical(h) for h in table.headers]
    kind = options.kind or detect_kind(headers)
    if kind is None or kind not in KINDS:
        return finish(
            Outcome.REFUSED,
            "cannot tell the file kind from its header row "
            f"({', '.join(h for h in headers if h)}); pass --kind staff|institution|department",
        )
    result.kind = kind
    missing = [h for h in REQUIRED[kind] if h not in headers]
    if missing:
        return finish(Outcome.REFUSED, f"the header row lacks required column(s): {', '.join(missing)}")
    duplicated = sorted({h for h in headers if h and headers.count(h) > 1})
    if duplicated:
        return finish(Outcome.REFUSED, f"columns appear twice (after aliases): {', '.join(duplicated)}")
    unknown = [h for h in headers if h and h not in CANONICAL[kind]]
    if unknown:
        log.info("ignoring unknown columns", extra={"columns": unknown})

    sha256 = file_sha256(path)
    base = publisher.live_meta()
    if already_loaded(base, kind, mode, sha256):
        result.unchanged = True
        result.data_version = base.version if base else None
        return finish(Outcome.PUBLISHED, f"already loaded (sha256 {sha256[:12]}…): nothing changed")

    validator = RowValidator(kind, options.shapes, options.mapping, options.delta, options.keep_names)
    entries: list[Entry] = []
    errors: list[RowError] = []
    try:
        for line, row in _rows_as_dicts(headers, table.rows):
            checked = validator.validate(line, row)
            (errors if isinstance(checked, RowError) else entries).append(checked)  # type: ignore[arg-type]
    except FileFormatError as exc:
        return finish(Outcome.REFUSED, f"cannot read the file: {exc}")
    result.accepted, result.rejected = len(entries), len(errors)
    result.rows = len(entries) + len(errors)
    if errors:
        report = options.report or default_report_path(path)
        write_report(report, path, errors)
        result.report = str(report)

    if result.rows == 0:
        return finish(Outcome.REFUSED, "the file has a header but no data rows")
    bad_ratio = len(errors) / result.rows
    if bad_ratio > options.max_bad_ratio and not options.force:
        return finish(
            Outcome.REFUSED,
            f"{len(errors)} of {result.rows} rows are bad ({bad_ratio:.1%} > "
            f"{options.max_bad_ratio:.0%}); see {result.report}; --force publishes anyway",
        )

    source = Source(kind, str(path.resolve()), sha256, mode, result.rows, len(errors), time.time())
    with publisher.lock():
        base = publisher.live_meta()
        if options.delta:
            live = publisher.live_records(kind, build.mentioned_keys(entries))
            changes = build.delta_records(kind, entries, live)
            result.records = len(changes)
            meta = publisher.publish_delta(kind, changes, source, base)
        else:
            records = build.full_records(kind, entries)
            result.records = len(records)
            live_count = base.counts.get(kind) if base else None
            result.live_records_before = live_count
            if (
                kind != "department"
                and live_count
                and len(records) < live_count * (1 - options.max_shrink_ratio)
                and not options.force
            ):
                return finish(
                    Outcome.REFUSED,
                    f"a full {kind} export with {len(records)} records would replace {live_count} "
                    f"live ones (a drop of more than {options.max_shrink_ratio:.0%}): truncated "
                    "download? --force publishes anyway",
                )
            if options.force:
                log.warning("publishing with --force: guards overridden", extra={"path": str(path)})
            meta = publisher.publish_full(kind, records, source, base, progress)
        publisher.collect_garbage()
    result.data_version = meta.version
    if errors:
        return finish(
            Outcome.PUBLISHED_WITH_REJECTS,
            f"published {meta.version}; {len(errors)} row(s) rejected, see {result.report}",
        )
    return finish(Outcome.PUBLISHED, f"published {meta.version}")
