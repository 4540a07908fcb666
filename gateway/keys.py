"""Every Redis key the loader writes and the gateway reads, in one place.

All keys of one namespace share the hash tag ``{<namespace>}``, so on a Redis Cluster they
live in one slot: the gateway's read script, the loader's MULTI/EXEC publish and its COPY of
unchanged tables are single-slot operations a cluster accepts. Reference data for a whole
province (a million staff records, ~150 MB) fits one node comfortably; replicas scale reads.
A deployment serving several regions gives each its own namespace (its own slot).

Layout (``{ns}`` below is the hash-tagged namespace, e.g. ``{sgw}``):

- ``{ns}:live``              string: the id of the version the gateway must serve.
- ``{ns}:ver:<version>``     hash: one version's metadata (as_of, tables, sources, counts).
- ``{ns}:staff:<table>``        hash: staff code -> encoded staff record (all institutions).
- ``{ns}:institution:<table>``  hash: institution code -> encoded institution record.
- ``{ns}:department:<table>``   hash: institution code -> encoded department actions there.
- ``{ns}:retired``           zset: tables no longer referenced, scored by retirement time.
- ``{ns}:staging``           zset: tables being written by a publish, scored by start time
                             (a killed loader's leftovers, removed by the next run).
- ``{ns}:history``           list: version ids, newest first (provenance for disputes).
- ``{ns}:lock``              string: the loader's publish lock (one writer at a time).
- ``{ns}:switching``         string: set by the loader from ``SWITCH_WAIT_SECONDS`` before it
                             moves ``live`` until it has; while it exists gateways take no
                             version lease (see below).
- ``{ns}:published``         pub/sub channel: a new version id, for prompt pickup.
- ``{ns}:audit``             stream: audited lines (rejections, exemptions, outage payments),
                             capped; written by the gateway, the only key it writes.

A version never changes once readers can see it, except by one MULTI/EXEC that also moves
``live``: readers pass the version they expect and the read script refuses a mismatch, so a
reply is always computed from exactly one version.

Version leases let a gateway answer from its record cache without a round trip. A gateway
that reads ``live`` = V with no ``switching`` mark, in a call it sent at time t, may treat V
as live until t + ``VERSION_LEASE_SECONDS`` (its own monotonic clock). The loader sets the
mark, waits ``SWITCH_WAIT_SECONDS`` (longer than any lease), and only then moves ``live``, in
a script that refuses to unless its mark is still there. So every lease granted before the
mark has run out before ``live`` moves, and none is granted while the mark stands: an answer
from the cache under a lease comes from the version live at that moment, never a superseded
one. Only durations are compared, never two hosts' clocks.
"""

from __future__ import annotations

DEFAULT_NAMESPACE = "sgw"

# Staging tables of an unfinished publish expire by themselves if the loader dies.
STAGING_TTL_SECONDS = 3600
# Old versions' metadata stays readable this long, so a dispute can name its version.
VERSION_META_TTL_SECONDS = 400 * 86400
# History keeps this many version ids.
HISTORY_LENGTH = 1000
# Retired tables are unlinked after this grace period.
RETIRE_GRACE_SECONDS = 60

# A gateway's version lease, and how often it renews one (a few times per lease).
VERSION_LEASE_SECONDS = 0.25
VERSION_LEASE_RENEW_SECONDS = 0.08
# The loader's wait between setting the switching mark and moving ``live``: a whole lease,
# plus a margin for two hosts' clocks ticking at slightly different rates.
SWITCH_WAIT_SECONDS = VERSION_LEASE_SECONDS + 0.05
# The mark expires by itself if its loader dies (gateways meanwhile read through Redis).
SWITCH_MARK_TTL_SECONDS = 30

TABLE_KINDS = ("staff", "institution", "department")


class Keys:
    """Key names for one namespace."""

    __slots__ = ("namespace", "prefix")

    def __init__(self, namespace: str = DEFAULT_NAMESPACE) -> None:
        if not namespace or any(ch in namespace for ch in "{}: "):
            raise ValueError(f"invalid key namespace {namespace!r}")
        self.namespace = namespace
        self.prefix = "{" + namespace + "}"

    @property
    def live(self) -> str:
        return f"{self.prefix}:live"

    @property
    def retired(self) -> str:
        return f"{self.prefix}:retired"

    @property
    def staging(self) -> str:
        return f"{self.prefix}:staging"

    @property
    def history(self) -> str:
        return f"{self.prefix}:history"

    @property
    def lock(self) -> str:
        return f"{self.prefix}:lock"

    @property
    def switching(self) -> str:
        return f"{self.prefix}:switching"

    @property
    def audit(self) -> str:
        return f"{self.prefix}:audit"

    @property
    def published_channel(self) -> str:
        return f"{self.prefix}:published"

    def version_meta(self, version: str) -> str:
        return f"{self.prefix}:ver:{version}"

    def table(self, kind: str, table_id: str) -> str:
        if kind not in TABLE_KINDS:
            raise ValueError(f"unknown table kind {kind!r}")
        return f"{self.prefix}:{kind}:{table_id}"
