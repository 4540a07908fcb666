"""``settlement-loader watch DIR``: load exports as they land in a directory.

Downloads land by atomic rename, so a file that is visible under its final name is whole;
names a download tool uses while writing (a leading ``.``, ``.tmp``, ``.part``,
``.crdownload``) are skipped until renamed. Pending files load oldest first (modification
time, then name), one at a time, through the same ``sync_file`` as ``sync``. A file that was
handled moves, with its rejects report, to ``loaded/`` or ``refused/`` under a name
prefixed with the time, so a restarted watcher never loads it again and an operator sees at
a glance what was refused. A failure that is not the file's fault (store unreachable,
another loader publishing) leaves it in place and the watcher retries, keeping the order.

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
from loader.lock import LockBusy
from loader.metrics import LoaderMetrics
from loader.publish import PublishConflict, Publisher, StagingError
from loader.reading import SPREADSHEET_SUFFIXES
from loader.sync import Outcome, SyncOptions, SyncResult, sync_file

log = logging.getLogger(__name__)

LOADED_DIR = "loaded"
REFUSED_DIR = "refused"
EXPORT_SUFFIXES = frozenset({".csv", ".txt", *SPREADSHEET_SUFFIXES})
PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".download")
DEFAULT_DELTA_PATTERNS = ("*delta*", "*增量*")
WATCH_LOCK = ".settlement-loader-watch.lock"


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

    def run_once(self) -> list[SyncResult]:
        """Load every pending file in order; stop at the first failure that is not the file's."""
        files = self.pending()
        self.metrics.pending.set(len(files))
        self.metrics.last_scan.set(self.clock())
        results: list[SyncResult] = []
        for position, path in enumerate(files):
            result = self._load(path)
            results.append(result)
            self.metrics.pending.set(len(files) - position - 1)
            if result.outcome is Outcome.FAILED:
                self.metrics.pending.set(len(files) - position)
                break
        return results

    def _load(self, path: Path) -> SyncResult:
        options = replace(self.options.sync, delta=self.is_delta(path), report=None)
        try:
            result = sync_file(path, self.publisher, options)
        except RETRYABLE as exc:  # not the file's fault: retry later, keep the order
            log.warning("load failed; will retry", extra={"path": str(path), "error": str(exc)})
            result = SyncResult(str(path), Outcome.FAILED, f"{type(exc).__name__}: {exc}")
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
        return result

    def _file_away(self, path: Path, result: SyncResult) -> None:
        sub = REFUSED_DIR if result.outcome is Outcome.REFUSED else LOADED_DIR
        stamp = dt.datetime.fromtimestamp(self.clock(), dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        target = self.options.directory / sub / f"{stamp}_{path.name}"
        try:
            path.replace(target)
        except FileNotFoundError:
            log.warning("the file vanished while it was loading", extra={"path": str(path)})
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
