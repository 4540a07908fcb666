"""``settlement-loader watch DIR``: load exports as they land in a directory.

Downloads land by atomic rename, so a file that is visible under its final name is whole;
names a download tool uses while writing (a leading ``.``, ``.tmp``, ``.part``,
``.crdownload``) are skipped until renamed. Pending files load oldest first (modification
time, then name), one at a time, through the same ``sync_file`` as ``sync``. A file that was
handled moves, with its rejects report, to ``loaded/`` or ``refused/`` under a name
prefixed with the time, so a restarted watcher never loads it again and an operator sees at
a glance what was refused. A failure that is not the file's fault (store unreachable,
another loader publishing) leaves it in place and the watcher retries, keeping the order.

Files that land together are published together, as one data version (a version needs staff
and institutions: loaded one by one after Redis lost its data, the first would be refused).
Two ways to say what belongs together:

- a manifest: ``NAME.manifest`` lists file names, one a line (``#`` starts a comment); once
  every named file is there, they load as one version, at once, and the manifest is filed
  away with them;
- otherwise the settle window: files load once no new file has appeared for ``settle``
  seconds (counted from when the watcher first saw each name, not the file's modification
  time, which a rename keeps); all pending files then make one version, except that a kind
  already in the set starts the next one (a delta after its full export, in landing order),
  and a file whose kind its header does not tell loads alone (to be refused).

A set is published or refused whole: one file refused means none is published.

The directory is polled (every ``interval`` seconds): it is portable, works on network
mounts where inotify does not, and costs one ``scandir`` per poll.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import fnmatch
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import redis.exceptions

from loader import report
from loader.columns import detect_kind
from loader.lock import LockBusy
from loader.metrics import LoaderMetrics
from loader.publish import PublishConflict, Publisher, StagingError
from loader.reading import SPREADSHEET_SUFFIXES, FileFormatError, open_table
from loader.sync import FileSpec, Outcome, SyncOptions, SyncResult, sync_files

log = logging.getLogger(__name__)

LOADED_DIR = "loaded"
REFUSED_DIR = "refused"
EXPORT_SUFFIXES = frozenset({".csv", ".txt", *SPREADSHEET_SUFFIXES})
PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".download")
DEFAULT_DELTA_PATTERNS = ("*delta*", "*增量*")
WATCH_LOCK = ".settlement-loader-watch.lock"
MANIFEST_SUFFIX = ".manifest"


class WatchBusy(RuntimeError):
    """Another watcher has the directory."""


class UnsafeInbox(WatchBusy):
    """A link or special file sits where the watcher keeps its own files (its lock,
    ``loaded/``, ``refused/``): following it would write or move files elsewhere."""


RETRYABLE = (redis.exceptions.RedisError, LockBusy, PublishConflict, StagingError, OSError)
# Waiting after a failure that is not the file's fault doubles up to this.
MAX_BACKOFF_SECONDS = 60.0


@dataclass(frozen=True)
class WatchOptions:
    directory: Path
    sync: SyncOptions
    interval: float = 2.0
    # File names (fnmatch, case-insensitive) loaded as deltas; all others are full exports.
    delta_patterns: Sequence[str] = DEFAULT_DELTA_PATTERNS
    # Seconds without a new file before the pending ones load (as one version).
    settle: float = 5.0


def is_candidate(path: Path) -> bool:
    """An export under its final name (not a partial download, not a report)."""
    name = path.name.lower()
    if name.startswith(".") or name.endswith(PARTIAL_SUFFIXES):
        return False
    if name.endswith((".rejects.csv", ".rejects.jsonl")):
        return False
    return path.suffix.lower() in EXPORT_SUFFIXES


class Watcher:
    def __init__(
        self,
        publisher: Publisher,
        options: WatchOptions,
        metrics: LoaderMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.publisher = publisher
        self.options = options
        self.metrics = metrics
        self.clock = clock
        # When each pending name was first seen (the settle window counts from the newest).
        self._first_seen: dict[Path, float] = {}
        self._waiting_logged: set[Path] = set()
        for sub in (LOADED_DIR, REFUSED_DIR):
            (options.directory / sub).mkdir(parents=True, exist_ok=True)
            if not stat.S_ISDIR(os.lstat(options.directory / sub).st_mode):
                raise UnsafeInbox(f"{options.directory / sub} is not a directory of its own (a link?)")

    def pending(self) -> list[Path]:
        """Whole export files waiting, oldest first. A link, FIFO, device or directory under an
        export's name is among them: ``sync_file`` refuses it unread, and it moves to
        ``refused/`` (the link itself, never its target), so an operator sees it."""
        found: list[tuple[float, str, Path]] = []
        with os.scandir(self.options.directory) as entries:
            for entry in entries:
                path = Path(entry.path)
                if is_candidate(path):
                    try:
                        found.append((entry.stat(follow_symlinks=False).st_mtime, entry.name, path))
                    except FileNotFoundError:
                        continue  # renamed away meanwhile
        return [path for _, _, path in sorted(found)]

    def is_delta(self, path: Path) -> bool:
        name = path.name.lower()
        return any(fnmatch.fnmatch(name, pattern.lower()) for pattern in self.options.delta_patterns)

    def manifests(self) -> list[Path]:
        """Manifest files waiting, by name."""
        return sorted(
            p
            for p in self.options.directory.iterdir()
            if p.is_file() and p.name.endswith(MANIFEST_SUFFIX) and not p.name.startswith(".")
        )

    def _manifest_files(self, manifest: Path) -> list[Path]:
        names = []
        for line in manifest.read_text(encoding="utf-8-sig").splitlines():
            name = line.split("#", 1)[0].strip()
            if name:
                names.append(self.options.directory / Path(name).name)
        return names

    def _kind(self, path: Path) -> str | None:
        if self.options.sync.kind:
            return self.options.sync.kind
        try:
            table = open_table(path)
        except (FileFormatError, OSError):
            return None
        return detect_kind([self.options.sync.mapping.canonical(h) for h in table.headers])

    def ready_sets(self) -> list[tuple[list[Path], Path | None]]:
        """Sets of files ready to load as one version each, in order, with their manifest."""
        now = self.clock()
        pending = self.pending()
        for path in pending:
            self._first_seen.setdefault(path, now)
        self._first_seen = {p: t for p, t in self._first_seen.items() if p in pending}
        sets: list[tuple[list[Path], Path | None]] = []
        claimed: set[Path] = set()
        for manifest in self.manifests():
            try:
                named = self._manifest_files(manifest)
            except (OSError, UnicodeDecodeError) as exc:
                log.warning("unreadable manifest", extra={"path": str(manifest), "error": str(exc)})
                continue
            claimed.update(named)
            if named and all(p.is_file() for p in named):
                sets.append((named, manifest))
            elif manifest not in self._waiting_logged:
                self._waiting_logged.add(manifest)
                log.info(
                    "manifest waits for its files",
                    extra={"path": str(manifest), "missing": [p.name for p in named if not p.is_file()]},
                )
        rest = [p for p in pending if p not in claimed]
        if rest and now - max(self._first_seen[p] for p in rest) >= self.options.settle:
            current: list[Path] = []
            kinds: set[str] = set()
            for path in rest:
                kind = self._kind(path)
                if kind is None or kind in kinds:
                    if current:
                        sets.append((current, None))
                    current, kinds = [], set()
                if kind is None:
                    sets.append(([path], None))
                    continue
                current.append(path)
                kinds.add(kind)
            if current:
                sets.append((current, None))
        return sets

    def run_once(self) -> list[SyncResult]:
        """Load every set of files that is ready, in order; stop at the first failure that is
        not the files' fault."""
        ready = self.ready_sets()
        waiting = len(self.pending())
        self.metrics.pending.set(waiting)
        self.metrics.last_scan.set(self.clock())
        results: list[SyncResult] = []
        for paths, manifest in ready:
            handled = self._load(paths, manifest)
            results.extend(handled)
            if handled and handled[-1].outcome is Outcome.FAILED:
                break
            waiting -= len(paths)
            self.metrics.pending.set(max(waiting, 0))
        return results

    def _load(self, paths: list[Path], manifest: Path | None) -> list[SyncResult]:
        specs = [FileSpec(path, self.is_delta(path)) for path in paths]
        options = replace(self.options.sync, report=None)
        try:
            files = sync_files(specs, self.publisher, options).files
        except RETRYABLE as exc:  # not the file's fault: retry later, keep the order
            log.warning(
                "load failed; will retry", extra={"paths": [str(p) for p in paths], "error": str(exc)}
            )
            files = [SyncResult(str(path), Outcome.FAILED, f"{type(exc).__name__}: {exc}") for path in paths]
        for path, result in zip(paths, files, strict=True):
            self.metrics.observe(result, self.clock())
            if result.outcome is not Outcome.FAILED:
                self._file_away(path, result)
            log.info(
                "watched file handled",
                extra={
                    "path": str(path),
                    "outcome": result.outcome.name.lower(),
                    "rows": result.rows,
                    "rejected": result.rejected,
                    "data_version": result.data_version,
                    "seconds": result.seconds,
                    "detail": result.message,
                },
            )
        if manifest is not None and files and files[0].outcome is not Outcome.FAILED:
            self._file_away(manifest, files[0])
            self._waiting_logged.discard(manifest)
        return files

    def _file_away(self, path: Path, result: SyncResult) -> None:
        sub = REFUSED_DIR if result.outcome in (Outcome.REFUSED, Outcome.USAGE) else LOADED_DIR
        stamp = dt.datetime.fromtimestamp(self.clock(), dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        target = self.options.directory / sub / f"{stamp}_{path.name}"
        try:
            path.replace(target)
        except FileNotFoundError:
            log.warning("the file vanished while it was loading", extra={"path": str(path)})
            return
        if path.name.endswith(MANIFEST_SUFFIX):
            return
        rejects = report.default_path(path)
        if result.report == str(rejects) and rejects.exists():
            moved = report.default_path(target)
            rejects.replace(moved)
            result.report = str(moved)
        result.path = str(target)

    @contextlib.contextmanager
    def sole_watcher(self) -> Iterator[None]:
        """One watcher per directory (two would race to load and move the same file)."""
        path = self.options.directory / WATCH_LOCK
        try:  # never through a link planted under the lock's name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise UnsafeInbox(f"cannot use {path} as the watch lock: {exc.strerror}") from None
        with os.fdopen(fd, "w") as lock:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UnsafeInbox(f"{path} is not a regular file: cannot use it as the watch lock")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise WatchBusy(f"another settlement-loader watches {self.options.directory}") from None
            yield

    def run(self, stop: threading.Event) -> None:
        """Poll until ``stop`` is set; a load in progress finishes first."""
        log.info("watching for exports", extra={"directory": str(self.options.directory)})
        backoff = self.options.interval
        while not stop.is_set():
            results = self.run_once()
            if results and results[-1].outcome is Outcome.FAILED:
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
            else:
                backoff = self.options.interval
                self._collect_garbage()
            stop.wait(backoff)
        log.info("watch stopped")

    def _collect_garbage(self) -> None:
        try:
            self.publisher.collect_garbage()
        except redis.exceptions.RedisError as exc:
            log.warning("could not remove retired tables", extra={"error": str(exc)})
