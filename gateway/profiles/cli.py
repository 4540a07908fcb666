"""``settlement-gateway profile show NAME|FILE`` and ``profile check FILE``.

``show`` prints the profile resolved (every knob, every reason's citations, defaults filled
in) as TOML that ``check`` accepts again; ``check`` prints each fault as ``file:line: message``
and exits 1, so a region's profile is reviewed before a gateway is started with it.
"""

from __future__ import annotations

import argparse
import json
import sys

from gateway.profiles.loading import SHIPPED, Profile, ProfileError, load
from gateway.rules import CHECK_ORDER


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("profile", help="print or validate a policy profile")
    actions = p.add_subparsers(dest="profile_command", required=True)
    show = actions.add_parser("show", help="print a profile, resolved")
    show.add_argument("profile", help=f"a shipped profile ({', '.join(SHIPPED)}) or a TOML file")
    check = actions.add_parser("check", help="validate a profile file")
    check.add_argument("profile", help="a TOML file (or a shipped profile's name)")


def _toml(value: object) -> str:
    # TOML basic strings and JSON strings escape alike for the characters profiles hold.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple | frozenset):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def render(profile: Profile) -> str:
    """The resolved profile as TOML."""
    overrides = [r.name for r in CHECK_ORDER if r in profile.emergency_overrides]
    tables: list[tuple[str, list[tuple[str, object]]]] = [
        ("", [("name", profile.name), ("title", profile.title)]),
        ("sites", [("cancellation", profile.cancellation_scope), ("suspension", profile.suspension_scope),
                   ("termination", profile.termination_scope), ("lock", profile.lock_scope)]),
        ("suspension", [("lifts", profile.suspension_lifts)]),
        ("emergency", [("med_types", sorted(profile.emergency_med_types)),
                       ("inpatient_after_emergency", profile.inpatient_after_emergency),
                       ("overrides", overrides)]),
        ("department", [("code_required", profile.department_code_required)]),
        ("bans", [("enforce", profile.enforce_bans),
                  ("staff_terminated_years", profile.staff_terminated_ban_years),
                  ("staff_cancelled_years", profile.staff_cancelled_ban_years),
                  ("institution_terminated_years", profile.institution_terminated_ban_years)]),
        ("external_prescriptions", [("pharmacy_prefix", profile.external_prescription_prefix)]),
    ]  # fmt: skip
    for reason in CHECK_ORDER:
        spec = profile.specs[reason]
        entries: list[tuple[str, object]] = [("article", spec.article), ("detail", spec.detail)]
        if spec.emergency_article is not None:
            entries.append(("emergency_article", spec.emergency_article))
        tables.append((f"reasons.{reason.name}", entries))
    out = [f"# policy profile {profile.name!r} ({profile.origin}), resolved"]
    for name, entries in tables:
        if name:
            out.append(f"\n[{name}]")
        out.extend(f"{key} = {_toml(value)}" for key, value in entries)
    return "\n".join(out) + "\n"


def main(args: argparse.Namespace) -> int:
    try:
        profile = load(args.profile)
    except ProfileError as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return 1
    if args.profile_command == "show":
        sys.stdout.write(render(profile))
    else:
        print(f"{args.profile}: profile {profile.name!r} is valid")
    return 0
