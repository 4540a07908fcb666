"""What the last publish left live, kept on disk beside the store, so the shrink guard
survives losing Redis.

The guards compare a new version with the live one. A Redis restarted without its data has
no live version, and without a record kept elsewhere the first publish after the wipe would
be compared with nothing: a truncated download (or one kind alone) would go live unopposed.
So every publish writes the counts it left live — records per kind and department stops —
to ``<SGW_STATE_DIR>/loader-<namespace>.json``, and a publish that finds no live version is
held to those counts instead.

The file is written atomically (a temporary file renamed over it), so a loader killed
mid-write leaves the previous counts, never half a document.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import orjson

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishedCounts:
    """Records per kind of the last version published, and its department stops
    ((institution, department) pairs with actions), with that version's id."""

    counts: Mapping[str, int] = field(default_factory=dict)
    department_stops: int = 0
    version: str = ""
    published_at: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "counts": dict(self.counts),
            "department_stops": self.department_stops,
            "version": self.version,
            "published_at": self.published_at,
        }


class CountsFile:
    """The last published counts of one namespace, under the state directory."""

    def __init__(self, state_dir: Path, namespace: str) -> None:
        self.path = state_dir / f"loader-{namespace}.json"

    def read(self) -> PublishedCounts | None:
        """The counts kept, or None when there are none (a first publish ever, or the file
        was removed by the operator to start afresh). A damaged file is reported, not used:
        the guard then falls back to ``--force`` being needed only by the live version."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            doc = orjson.loads(raw)
            counts = {str(k): int(v) for k, v in dict(doc["counts"]).items()}
            return PublishedCounts(
                counts=counts,
                department_stops=int(doc.get("department_stops", 0)),
                version=str(doc.get("version", "")),
                published_at=float(doc.get("published_at", 0.0)),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            log.warning(
                "ignoring an unreadable published-counts file",
                extra={"path": str(self.path), "error": str(exc)},
            )
            return None

    def write(self, published: PublishedCounts) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".loader-", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(orjson.dumps(published.to_json(), option=orjson.OPT_INDENT_2))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
