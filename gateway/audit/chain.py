"""Checking the hash chains: every record's ``prev`` must be its predecessor's hash, and each
instance's sequence numbers must run without a gap.

Works on any ordered stream of stored records (the archive's, or a stream's read), so
``audit verify`` and ``audit explain`` share it. A chain proves order and completeness between
records it holds: a record altered in place breaks the next one's link, a record removed
leaves a gap. What it cannot show is the loss of an instance's very last records; the spool
and the archive's at-least-once delivery are there so that does not happen.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from gateway.audit.record import GENESIS, record_hash


@dataclass(frozen=True, slots=True)
class Stored:
    """One stored record: its chain position, answer time, exact bytes and their hash as stored."""

    instance: str
    seq: int
    time: str
    raw: bytes
    stored_hash: str
    doc: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding: ``kind`` is ``missing`` (sequence numbers ``first..last`` absent),
    ``broken-link`` (``prev`` is not the previous record's hash) or ``altered`` (the bytes no
    longer hash to what was stored, or the indexed columns disagree with them)."""

    kind: str
    instance: str
    first: int
    last: int
    time: str
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {
            "problem": self.kind, "instance": self.instance, "first_seq": self.first,
            "last_seq": self.last, "time": self.time, "detail": self.detail,
        }  # fmt: skip


@dataclass
class Summary:
    instances: int = 0
    records: int = 0


def check(records: Iterable[Stored], summary: Summary | None = None) -> Iterator[Problem]:
    """Problems in ``records``, which come ordered by (instance, seq)."""
    summary = summary if summary is not None else Summary()
    instance: str | None = None
    prev_seq = 0
    prev_hash = GENESIS
    prev_time = ""
    for r in records:
        summary.records += 1
        if r.instance != instance:
            instance, prev_seq, prev_hash, prev_time = r.instance, 0, GENESIS, ""
            summary.instances += 1
        actual = record_hash(r.raw)
        if r.stored_hash and actual != r.stored_hash:
            yield Problem(
                "altered", r.instance, r.seq, r.seq, r.time, "the record's bytes do not match its stored hash"
            )
        if r.seq > prev_seq + 1:
            yield Problem(
                "missing", r.instance, prev_seq + 1, r.seq - 1, r.time,
                f"sequence numbers {prev_seq + 1}..{r.seq - 1} are absent (between {prev_time or 'the start'} and {r.time})",
            )  # fmt: skip
        elif r.seq == prev_seq + 1 and r.doc.get("prev") != prev_hash:
            yield Problem(
                "broken-link", r.instance, r.seq, r.seq, r.time,
                "prev is not the hash of the record before it: that record or this one was altered",
            )  # fmt: skip
        prev_seq, prev_hash, prev_time = r.seq, actual, r.time
