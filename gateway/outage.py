"""What the gateway answers while Redis is unreachable: the outage policy.

Within ``max_age`` of the cache's newest version last being seen live, a request whose
institution and staff codes are all in the cache is judged on those records, flagged
``degraded``. Otherwise the configured policy decides:

- ``refuse`` (default): ``UNAVAILABLE``; HIS falls back to its emergency procedure (004 §58),
  so no banned physician is paid silently and the patient is still served by that procedure.
- ``accept-flagged``: the request is judged on whatever the cache's newest version does know
  (a staff member known to be banned stays rejected, an uncoded item stays unpaid); a line
  the data is missing for is paid under 004 §58, flagged degraded and audited.

Both ways the outage is never silent: each answer is ``degraded`` or a refusal.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping, Sequence

from gateway.cache import CacheLookup
from gateway.policy import OUTAGE_ARTICLE, OUTAGE_DETAIL, Reason, Verdict
from gateway.rules import CHECKS, Decision, Evidence, Line, RulesConfig, decide, decision_for


class OutagePolicy(enum.Enum):
    REFUSE = "refuse"
    ACCEPT_FLAGGED = "accept-flagged"


def parse_outage_policy(value: str) -> OutagePolicy:
    try:
        return OutagePolicy(value.strip().lower())
    except ValueError:
        raise ValueError("expected refuse or accept-flagged") from None


class StoreUnavailable(RuntimeError):
    """No usable data for this request and the policy is to refuse it."""


# A line paid under the emergency plan because its data could not be read (audited).
OUTAGE_ACCEPTED = Decision(Verdict.ACCEPT, Reason.OK, OUTAGE_DETAIL, OUTAGE_ARTICLE)

# Which data each rule check reads, by check name; a check needing nothing runs always.
INSTITUTION_DATA = "institution"
STAFF_DATA = "staff"
CHECK_NEEDS: Mapping[str, str | None] = {
    "item": None,
    "staff_code": None,
    "institution": INSTITUTION_DATA,
    "department_code_required": None,
    "department": INSTITUTION_DATA,
    "staff": STAFF_DATA,
}


def usable_lookup(
    lookup: CacheLookup | None, policy: OutagePolicy, max_age_seconds: float, cause: str
) -> CacheLookup | None:
    """The cached records to answer from while the store is down, or ``StoreUnavailable``.

    Returns a complete, fresh lookup whatever the policy; under ``accept-flagged`` also a
    partial or stale one (or None when the cache holds nothing at all).
    """
    if lookup is not None and lookup.complete and lookup.age_seconds <= max_age_seconds:
        return lookup
    if policy is OutagePolicy.ACCEPT_FLAGGED:
        return lookup
    if lookup is None:
        why = "no cached data"
    elif lookup.age_seconds > max_age_seconds:
        why = (
            f"the cached data version {lookup.meta.version} was last confirmed "
            f"{lookup.age_seconds:.0f}s ago (limit {max_age_seconds:g}s)"
        )
    elif not lookup.institution_known:
        why = "the institution is not in the cache"
    else:
        shown = ", ".join(sorted(lookup.missing_staff)[:5])
        more = len(lookup.missing_staff) - 5
        why = f"staff codes not in the cache: {shown}" + (f" and {more} more" if more > 0 else "")
    raise StoreUnavailable(
        f"the settlement data store is unreachable ({cause}); {why}; outage policy: refuse"
    )


def decide_with_gaps(
    lines: Sequence[Line],
    evidence: Evidence,
    config: RulesConfig,
    institution_known: bool,
    missing_staff: Collection[str],
) -> list[Decision]:
    """Verdicts when some of the data is missing (``accept-flagged`` during an outage).

    A line whose data is all known is decided as usual. Otherwise every check that can run on
    what is known runs, in the contract's order, and the first finding decides (so a known ban
    still rejects and the emergency exemption still applies); with no finding the line is
    paid under the emergency plan, ``OUTAGE_ACCEPTED``.
    """
    out: list[Decision] = []
    for line in lines:
        staff_known = line.staff_code not in missing_staff
        if institution_known and staff_known:
            out.append(decide(line, evidence, config))
            continue
        known = {None, STAFF_DATA if staff_known else None, INSTITUTION_DATA if institution_known else None}
        decision = OUTAGE_ACCEPTED
        for check in CHECKS:
            if CHECK_NEEDS[check.name] not in known:
                continue
            finding = check.run(line, evidence, config)
            if finding is not None:
                decision = decision_for(finding, line, evidence, config)
                break
        out.append(decision)
    return out
