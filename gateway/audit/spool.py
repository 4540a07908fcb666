"""The audit spool: audited records on local disk before the reply is sent.

The writer reaches Redis in the background, so a gateway killed (SIGKILL, OOM) while Redis was
slow or frozen would lose what it had answered but not yet written. Each answer's records are
appended to a spool file under ``SGW_STATE_DIR`` first, with one ``write`` system call and no
fsync: the kernel has them once the call returns, so a process crash loses nothing (a machine
crash may lose the last moments; that is the price of not syncing on the checkout's path).

Files: ``<state>/audit-spool/<instance>.lock`` (held with ``flock`` while the instance lives)
and ``<instance>.<n>.spool`` segments, one encoded record per line. The writer tells the spool
how far Redis has acknowledged; a segment wholly acknowledged is removed. A starting gateway
takes over the spool of every instance whose lock it can take (that process is gone) and
replays it: records Redis had in fact received come twice, and the archive keeps one (unique
instance and sequence number), as queries on the stream do.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# A segment is closed and a new one begun past this size; closed segments are removed once
# every record in them is acknowledged.
SEGMENT_BYTES = 8 * 1024 * 1024


def spool_dir(state_dir: Path) -> Path:
    return state_dir / "audit-spool"


class Spool:
    """This instance's spool: append before the reply, forget once Redis has the records."""

    def __init__(self, directory: Path, instance: str, segment_bytes: int = SEGMENT_BYTES) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.instance = instance
        self.segment_bytes = segment_bytes
        self._lock_fd = os.open(directory / f"{instance}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Closed segments: (number, last sequence number in it).
        self._closed: list[tuple[int, int]] = []
        self._number = 0
        self._fd = self._open(self._number)
        self._size = 0
        self._last_seq = 0

    def _path(self, number: int) -> Path:
        return self.directory / f"{self.instance}.{number}.spool"

    def _open(self, number: int) -> int:
        return os.open(self._path(number), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def append(self, records: list[bytes], last_seq: int) -> None:
        """One answer's records, one system call. Raises ``OSError`` (disk full…): the caller
        then still queues them for Redis, but they are no longer crash-safe."""
        data = b"\n".join(records) + b"\n"
        os.write(self._fd, data)
        self._size += len(data)
        self._last_seq = last_seq
        if self._size >= self.segment_bytes:
            os.close(self._fd)
            self._closed.append((self._number, last_seq))
            self._number += 1
            self._fd = self._open(self._number)
            self._size = 0

    def acknowledged(self, seq: int) -> None:
        """Redis has every record of this instance up to ``seq``: drop what is no longer needed."""
        while self._closed and self._closed[0][1] <= seq:
            number, _ = self._closed.pop(0)
            self._path(number).unlink(missing_ok=True)
        if self._size and seq >= self._last_seq:
            os.ftruncate(self._fd, 0)
            self._size = 0

    def close(self, remove: bool) -> None:
        """Release the spool; ``remove`` when Redis has everything (else a later start replays)."""
        os.close(self._fd)
        if remove:
            for number, _ in self._closed:
                self._path(number).unlink(missing_ok=True)
            self._path(self._number).unlink(missing_ok=True)
            (self.directory / f"{self.instance}.lock").unlink(missing_ok=True)
        os.close(self._lock_fd)


@dataclass
class Orphan:
    """The spool of an instance that is gone, locked by the instance replaying it."""

    instance: str
    lock_fd: int
    segments: list[Path] = field(default_factory=list)

    def records(self) -> Iterator[bytes]:
        for path in self.segments:
            with path.open("rb") as f:
                for text in f:
                    # A line cut short (the machine, not the process, went down) is skipped.
                    if text.endswith(b"\n") and len(text) > 1:
                        yield text[:-1]

    def remove(self) -> None:
        for path in self.segments:
            path.unlink(missing_ok=True)
        lock = self.segments[0].parent / f"{self.instance}.lock" if self.segments else None
        if lock is not None:
            lock.unlink(missing_ok=True)
        os.close(self.lock_fd)

    def release(self) -> None:
        os.close(self.lock_fd)


def orphans(directory: Path, own: str) -> list[Orphan]:
    """Spools left by instances that no longer run (their lock is free), oldest files first."""
    if not directory.is_dir():
        return []
    found = []
    for lock in sorted(directory.glob("*.lock")):
        instance = lock.name.removesuffix(".lock")
        if instance == own:
            continue
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:
            continue  # another worker replayed and removed it meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # alive: another worker of this gateway
            continue
        segments = sorted(directory.glob(f"{instance}.*.spool"), key=_segment_number)
        if not segments:
            with contextlib.suppress(OSError):
                lock.unlink()
            os.close(fd)
            continue
        found.append(Orphan(instance, fd, segments))
    return found


def _segment_number(path: Path) -> int:
    try:
        return int(path.name.rsplit(".", 2)[1])
    except (IndexError, ValueError):
        return -1
