"""``settlement-loader status``: which version is live, when and from which files it was built.

The first thing an operator (or an auditor with a contested rejection) asks is "what data is
the gateway judging on?": the version, its age, its record counts, and every file behind it
with its hash, row count and rejections.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, cast

from loader.publish import Publisher

RECENT_VERSIONS = 5


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds")


def live_status(publisher: Publisher, now: float | None = None) -> dict[str, Any] | None:
    """The live version's provenance as a JSON-ready document; None when nothing is live."""
    meta = publisher.live_meta()
    if meta is None:
        return None
    client, keys = publisher.client, publisher.keys
    recent = cast(list[bytes], client.lrange(keys.history, 0, RECENT_VERSIONS - 1))
    return {
        "data_version": meta.version,
        "as_of": _iso(meta.as_of),
        "age_seconds": round((now or time.time()) - meta.as_of, 1),
        "counts": dict(meta.counts),
        # Kinds the version lacks: gateways do not serve it (only a forced publish makes one).
        "missing_kinds": list(meta.missing_kinds()),
        "tables": dict(meta.tables),
        "sources": [{**s.to_json(), "loaded_at": _iso(s.loaded_at)} for s in meta.sources],
        "rows": sum(s.rows for s in meta.sources),
        "rejected": sum(s.rejected for s in meta.sources),
        "previous": meta.previous,
        "recent_versions": [v.decode() for v in recent],
        "retired_tables_pending": int(client.zcard(keys.retired)),
        "unfinished_publishes": int(client.zcard(keys.staging)),
    }


def render_status(status: dict[str, Any] | None) -> str:
    if status is None:
        return "no data version is live"
    lines = [
        f"version   {status['data_version']}  (as of {status['as_of']}, {status['age_seconds']:.0f}s ago)",
        "counts    " + "  ".join(f"{kind} {count:,}" for kind, count in status["counts"].items()),
        f"rows      {status['rows']:,} from {len(status['sources'])} file(s), {status['rejected']:,} rejected",
    ]
    if status.get("missing_kinds"):
        lines.append(
            f"INCOMPLETE no {' and '.join(status['missing_kinds'])} records: gateways do not serve this "
            "version and answer from their caches; publish the missing kind"
        )
    for s in status["sources"]:
        # Files loaded with other options (mapping, code shapes, names) show other fingerprints;
        # "-" marks a file recorded before fingerprints were.
        options = s["options"][:8] or "-"
        lines.append(
            f"source    {s['kind']:11s} {s['mode']:5s} {s['loaded_at']}  rows {s['rows']:>9,}  "
            f"rejected {s['rejected']:>7,}  sha256 {s['sha256'][:12]}  options {options:8s}  {s['path']}"
        )
    if status["previous"]:
        lines.append(f"previous  {status['previous']}")
    if status["retired_tables_pending"] or status["unfinished_publishes"]:
        lines.append(
            f"pending   {status['retired_tables_pending']} retired table(s) to remove, "
            f"{status['unfinished_publishes']} unfinished publish(es)"
        )
    return "\n".join(lines)
