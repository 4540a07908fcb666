"""The guards a new data version must pass before it goes live (pure: counts in, refusals out).

Completeness: a version needs staff and institutions (``gateway.versions.REQUIRED_KINDS``);
one without either would have the gateway reject every line for a reason that is not true.

Shrink: no change — a full export, a delta, a department file — may make more than
``max_shrink_ratio`` of the reference records go at once. A truncated download, a delta of
删除 rows built from the wrong list, or a department file of another institution look like
that; a real change of that size is rare enough to ask for ``--force``. The reference is the
live version, or, for each kind the store has no live table of (it lost its data), the
counts the last publish left (``loader.state``).

Department stops are counted as (institution, department) pairs with actions: one
department file row stands for one stop, and the institution count would not move when a
file for one institution replaces another's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass

from gateway.records import DepartmentActions
from gateway.versions import REQUIRED_KINDS

Stop = tuple[str, str]


@dataclass(frozen=True)
class Reference:
    """What a change is measured against: records per kind (department: stops)."""

    counts: Mapping[str, int]
    # Where each kind's count comes from, for the message: "the live version …" or the
    # state file's last published version.
    origins: Mapping[str, str]


@dataclass(frozen=True)
class Change:
    """One kind's change in a publish: how many records (department: stops) it leaves, and
    how many of the reference ones it removes for certain (a delta's 删除 rows, a department
    file's missing stops); for a full export of staff or institutions only the count is
    known, and the drop in count stands for what goes."""

    kind: str
    mode: str  # "full", "delta", or "absent": a kind the reference has and the version would not
    after: int
    removed: int = 0
    examples: tuple[str, ...] = ()


def stops_of(records: Iterable[tuple[str, bytes | None]]) -> set[Stop]:
    """(institution, department) pairs with actions in encoded department records."""
    stops: set[Stop] = set()
    for institution, raw in records:
        if raw:
            stops.update((institution, dept) for dept in DepartmentActions.decode(raw).by_department)
    return stops


def stops_gone(live: Set[Stop], after: Set[Stop]) -> tuple[int, tuple[str, ...]]:
    """How many live stops are not in ``after``, and a few of them to name."""
    gone = sorted(live - after)
    return len(gone), tuple(f"{i}/{d}" for i, d in gone[:3])


def shrink_refusal(change: Change, reference: Reference, max_ratio: float) -> tuple[str, str] | None:
    """Why ``change`` takes away too much of the reference, if it does: the refusal, and the
    short note a forced publish records."""
    before = reference.counts.get(change.kind, 0)
    if before <= 0:
        return None
    gone = max(before - change.after, change.removed, 0)
    if gone <= before * max_ratio:
        return None
    what = "department stops" if change.kind == "department" else f"{change.kind} records"
    named = (
        f" ({', '.join(change.examples)}{', …' if gone > len(change.examples) else ''})"
        if change.examples
        else ""
    )
    note = (
        f"{change.kind} records {before} -> {change.after} (a drop of more than {max_ratio:.0%})"
        if change.kind != "department" and not change.removed
        else f"{change.kind}: {gone} of {before} {what} removed (more than {max_ratio:.0%})"
    )
    if change.mode == "absent":
        return note, (
            f"the new version would have no {what}, where {reference.origins.get(change.kind, 'the reference')} "
            f"had {before:,}: load the {change.kind} file with the others"
        )
    return note, (
        f"the {change.mode} {change.kind} file would take away {gone:,} of {before:,} {what}{named} "
        f"in {reference.origins.get(change.kind, 'the reference')} (more than {max_ratio:.0%}): truncated download? wrong file?"
    )


def missing_kinds(before: Mapping[str, int], changes: Iterable[Change]) -> list[str]:
    """Required kinds the new version would have no records of (``before``: records per kind
    in the version it is built on, kinds without a table left out)."""
    after = dict(before)
    for change in changes:
        after[change.kind] = change.after
    return [kind for kind in REQUIRED_KINDS if after.get(kind, 0) <= 0]


def completeness_refusal(missing: list[str]) -> tuple[str, str]:
    """The refusal of an incomplete version, and the note a forced publish records."""
    kinds = " and ".join(missing)
    return f"incomplete version: no {kinds} records", (
        f"the new version would have no {kinds} records, and the gateway judges every line on "
        "staff and institutions: publish them together, e.g. settlement-loader sync "
        "institutions.csv departments.csv staff.csv"
    )
