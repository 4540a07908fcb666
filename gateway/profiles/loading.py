"""Read, validate and resolve a policy profile (a TOML file) into the rules' configuration.

A profile is reviewed next to the documents it rests on, so it is data: knobs with the
article behind each, and per reason the article and zh-CN sentence the region cites. Errors
name the file and the line (``tomllib`` reports lines only for syntax errors, so the line of a
bad key or value is found in the text), and all of a file's errors are reported at once.
"""

from __future__ import annotations

import re
import string
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from gateway.codes import CodeShapes
from gateway.policy import RULE_BY_REASON, Reason, RuleSpec
from gateway.records import Status
from gateway.rules import CHECK_ORDER, DEFAULT_EMERGENCY_MED_TYPES, RulesConfig

DEFAULT_PROFILE = "default"
SHIPPED = ("default", "zhoushan", "jining", "foshan", "nantong", "national-2024")

# 急诊转住院: the one med_type ``inpatient_after_emergency = "emergency-part"`` takes out.
EMERGENCY_ADMISSION_MED_TYPE = "24"
DETAIL_FIELDS = frozenset({"code", "institution", "department", "date", "start", "end"})
NEVER_OVERRIDDEN = frozenset({Reason.ITEM_CODE_MISSING})  # 004 §60: an uncoded item is never paid
OVERRIDABLE = tuple(r for r in CHECK_ORDER if r not in NEVER_OVERRIDDEN)

SCOPES = ("national", "institution")
SITE_STATUS = {
    "suspension": Status.SUSPENDED,
    "termination": Status.TERMINATED,
    "lock": Status.LOCKED,
}


class ProfileError(ValueError):
    """A profile that cannot be used; ``errors`` lists every fault as ``file:line: message``."""

    def __init__(self, errors: Sequence[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = tuple(errors)


@dataclass(frozen=True, slots=True)
class Profile:
    """One region's policy, resolved: every knob has a value, every reason its citations."""

    name: str
    title: str
    origin: str  # "shipped" or the file's path
    cancellation_scope: str = "national"
    suspension_scope: str = "institution"
    termination_scope: str = "institution"
    lock_scope: str = "institution"
    suspension_lifts: str = "end-date"
    emergency_med_types: frozenset[str] = DEFAULT_EMERGENCY_MED_TYPES
    inpatient_after_emergency: str = "whole-stay"
    emergency_overrides: frozenset[Reason] = frozenset(OVERRIDABLE)
    department_code_required: bool = False
    enforce_bans: bool = False
    staff_terminated_ban_years: int = 0
    staff_cancelled_ban_years: int = 0
    institution_terminated_ban_years: int = 0
    external_prescription_prefix: str = ""
    specs: Mapping[Reason, RuleSpec] = field(default_factory=lambda: RULE_BY_REASON)

    @property
    def med_types(self) -> frozenset[str]:
        """The med_types that make a whole request an emergency: 24 (急诊转住院) only when the
        emergency covers the whole stay; else only the lines HIS flags ``emergency`` are."""
        if self.inpatient_after_emergency == "emergency-part":
            return self.emergency_med_types - {EMERGENCY_ADMISSION_MED_TYPE}
        return self.emergency_med_types

    def staff_ban_years(self) -> dict[Status, int]:
        years = {
            Status.TERMINATED: self.staff_terminated_ban_years,
            Status.CANCELLED: self.staff_cancelled_ban_years,
        }
        return {status: n for status, n in years.items() if n > 0}

    def institution_ban_years(self) -> dict[Status, int]:
        # An institution's 注销 is read as its 解除 (gateway.rules: both INSTITUTION_TERMINATED).
        n = self.institution_terminated_ban_years
        return {Status.TERMINATED: n, Status.CANCELLED: n} if n > 0 else {}

    def rules_config(
        self,
        shapes: CodeShapes,
        *,
        national_cancellation: bool = True,
        emergency_med_types: frozenset[str] | None = None,
    ) -> RulesConfig:
        """The rules' configuration. ``SGW_CANCELLATION_SCOPE=institution`` narrows the
        profile's cancellation scope; ``emergency_med_types`` (an explicit
        ``SGW_EMERGENCY_MED_TYPES``) replaces the profile's list."""
        cross = frozenset(
            status for key, status in SITE_STATUS.items() if getattr(self, f"{key}_scope") == "national"
        )
        return RulesConfig(
            shapes=shapes,
            emergency_med_types=self.med_types if emergency_med_types is None else emergency_med_types,
            national_cancellation=national_cancellation and self.cancellation_scope == "national",
            specs=self.specs,
            cross_site_statuses=cross,
            suspension_lifts_on_restoration=self.suspension_lifts == "restoration",
            department_code_required=self.department_code_required,
            enforce_bans=self.enforce_bans,
            # Not enforced: the loader still reports the banned rows; the gateway pays them.
            staff_ban_years=self.staff_ban_years() if self.enforce_bans else {},
            institution_ban_years=self.institution_ban_years() if self.enforce_bans else {},
            external_prescription_prefix=self.external_prescription_prefix,
        )


# -- reading -------------------------------------------------------------------------------

_HEADER = re.compile(r"^\s*\[\s*([^\]]+?)\s*\]\s*(?:#.*)?$")
_KEY = re.compile(r"""^\s*("(?:[^"\\]|\\.)*"|'[^']*'|[A-Za-z0-9_-]+)\s*=""")


def _unquote(part: str) -> str:
    part = part.strip()
    return part[1:-1] if len(part) >= 2 and part[0] == part[-1] and part[0] in "\"'" else part


def key_line(text: str, table: Sequence[str], key: str | None) -> int | None:
    """The 1-based line of ``key`` in table ``table`` (or of the table's header when ``key``
    is None), found in the text: tomllib keeps no positions."""
    current: tuple[str, ...] = ()
    want = tuple(table)
    for number, raw in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(raw)
        if header:
            current = tuple(_unquote(p) for p in header.group(1).split("."))
            if key is None and current == want:
                return number
            continue
        if key is not None and current == want:
            found = _KEY.match(raw)
            if found and _unquote(found.group(1)) == key:
                return number
    return None


class _Reader:
    """Walks one parsed document, collecting every fault with its line."""

    def __init__(self, text: str, origin: str) -> None:
        self.text = text
        self.origin = origin
        self.errors: list[str] = []

    def error(self, table: Sequence[str], key: str | None, message: str) -> None:
        line = key_line(self.text, table, key)
        if line is None and key is not None:  # a sub-table ([reasons.X]), else its table
            line = key_line(self.text, (*table, key), None) or key_line(self.text, table, None)
        where = f"{self.origin}:{line}" if line is not None else self.origin
        name = ".".join([*table, key] if key else table) or "(top level)"
        self.errors.append(f"{where}: {name}: {message}")

    def table(
        self, doc: Mapping[str, Any], table: Sequence[str], allowed: Sequence[str]
    ) -> Mapping[str, Any]:
        for key in doc:
            if key not in allowed:
                self.error(table, key, f"unknown key (expected one of: {', '.join(allowed)})")
        return doc

    def get(
        self,
        doc: Mapping[str, Any],
        table: Sequence[str],
        key: str,
        check: Callable[[Any], str | None],
    ) -> Any:
        """``doc[key]`` if present and ``check`` finds no fault in it, else None."""
        if key not in doc:
            return None
        value = doc[key]
        fault = check(value)
        if fault is not None:
            self.error(table, key, f"{fault}, got {value!r}")
            return None
        return value


def _choice(*options: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in options else f"expected one of {', '.join(map(repr, options))}"

    return check


def _is_bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "expected true or false"


def _is_text(value: Any) -> str | None:
    return None if isinstance(value, str) and value.strip() else "expected a non-empty string"


def _is_prefix(value: Any) -> str | None:
    return (
        None
        if isinstance(value, str) and re.fullmatch(r"[A-Z]*", value)
        else 'expected capital letters or ""'
    )


def _is_years(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 10
    return None if ok else "expected a whole number of years, 0 to 10"


def _is_med_types(value: Any) -> str | None:
    ok = isinstance(value, list) and all(
        isinstance(v, str) and re.fullmatch(r"[0-9A-Za-z]{1,8}", v) for v in value
    )
    return None if ok else 'expected a list of 医疗类别 codes such as ["13", "24"]'


def _is_reasons(value: Any) -> str | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return "expected a list of reason names"
    unknown = [v for v in value if v not in Reason.__members__ or Reason[v] not in CHECK_ORDER]
    if unknown:
        return f"unknown reason {unknown[0]!r}"
    never = [v for v in value if Reason[v] in NEVER_OVERRIDDEN]
    if never:
        return f"{never[0]} is never paid in an emergency (南通 004 第六十条)"
    return None


def _is_detail(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return "expected a non-empty zh-CN sentence"
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
    except ValueError as exc:
        return f"not a valid template ({exc})"
    bad = sorted(names - DETAIL_FIELDS)
    if bad:
        return f"unknown placeholder {{{bad[0]}}} (allowed: {', '.join(sorted(DETAIL_FIELDS))})"
    return None


TOP_KEYS = ("name", "title", "sites", "suspension", "emergency", "department", "bans",
            "external_prescriptions", "reasons")  # fmt: skip
REASON_KEYS = ("article", "detail", "emergency_article")


def _line_number(error: str) -> int:
    """For reporting a file's faults top to bottom (a fault with no line first)."""
    head = error.split(": ", 1)[0]
    number = head.rsplit(":", 1)[-1]
    return int(number) if number.isdigit() else 0


def parse(text: str, origin: str) -> Profile:
    """The profile in ``text``; raises ``ProfileError`` listing every fault."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError([f"{origin}: not valid TOML: {exc}"]) from exc
    r = _Reader(text, origin)
    r.table(doc, (), TOP_KEYS)
    values: dict[str, Any] = {}

    name = r.get(doc, (), "name", _is_text)
    if "name" not in doc:
        r.errors.append(f"{origin}: name: missing (every profile names itself)")
    title = r.get(doc, (), "title", _is_text) or ""

    def section(key: str, allowed: Sequence[str]) -> Mapping[str, Any]:
        sub = doc.get(key, {})
        if not isinstance(sub, dict):
            r.error((), key, "expected a table")
            return {}
        return r.table(sub, (key,), allowed)

    sites = section("sites", ("cancellation", *SITE_STATUS))
    for key in ("cancellation", *SITE_STATUS):
        values[f"{key}_scope"] = r.get(sites, ("sites",), key, _choice(*SCOPES))
    suspension = section("suspension", ("lifts",))
    values["suspension_lifts"] = r.get(
        suspension, ("suspension",), "lifts", _choice("end-date", "restoration")
    )
    emergency = section("emergency", ("med_types", "inpatient_after_emergency", "overrides"))
    med_types = r.get(emergency, ("emergency",), "med_types", _is_med_types)
    values["emergency_med_types"] = None if med_types is None else frozenset(med_types)
    values["inpatient_after_emergency"] = r.get(
        emergency, ("emergency",), "inpatient_after_emergency", _choice("whole-stay", "emergency-part")
    )
    overrides = r.get(emergency, ("emergency",), "overrides", _is_reasons)
    values["emergency_overrides"] = None if overrides is None else frozenset(Reason[v] for v in overrides)
    department = section("department", ("code_required",))
    values["department_code_required"] = r.get(department, ("department",), "code_required", _is_bool)
    bans = section("bans", ("enforce", "staff_terminated_years", "staff_cancelled_years",
                            "institution_terminated_years"))  # fmt: skip
    values["enforce_bans"] = r.get(bans, ("bans",), "enforce", _is_bool)
    for key in ("staff_terminated", "staff_cancelled", "institution_terminated"):
        values[f"{key}_ban_years"] = r.get(bans, ("bans",), f"{key}_years", _is_years)
    external = section("external_prescriptions", ("pharmacy_prefix",))
    values["external_prescription_prefix"] = r.get(
        external, ("external_prescriptions",), "pharmacy_prefix", _is_prefix
    )

    reasons = section("reasons", [reason.name for reason in CHECK_ORDER])
    cited: dict[Reason, dict[str, str]] = {}
    for reason_name, entry in reasons.items():
        if reason_name not in Reason.__members__ or Reason[reason_name] not in CHECK_ORDER:
            continue  # reported by r.table
        if not isinstance(entry, dict):
            r.error(("reasons",), reason_name, "expected a table of article, detail, emergency_article")
            continue
        table = ("reasons", reason_name)
        r.table(entry, table, REASON_KEYS)
        got = {
            "article": r.get(entry, table, "article", _is_text),
            "detail": r.get(entry, table, "detail", _is_detail),
            "emergency_article": r.get(entry, table, "emergency_article", _is_text),
        }
        cited[Reason[reason_name]] = {k: v for k, v in got.items() if v is not None}

    if r.errors:
        raise ProfileError(sorted(r.errors, key=_line_number))
    chosen = {k: v for k, v in values.items() if v is not None}
    overridden = chosen.get("emergency_overrides", frozenset(OVERRIDABLE))
    specs: dict[Reason, RuleSpec] = {}
    for reason, base in RULE_BY_REASON.items():
        mine = cited.get(reason, {})
        emergency_article = mine.get("emergency_article", base.emergency_article)
        specs[reason] = RuleSpec(
            reason,
            mine.get("article", base.article),
            mine.get("detail", base.detail),
            emergency_article if reason in overridden else None,
        )
    missing = [reason.name for reason in overridden if specs[reason].emergency_article is None]
    if missing:
        raise ProfileError(
            [
                f"{origin}: reasons.{missing[0]}.emergency_article: missing for a reason the exemption overrides"
            ]
        )
    return Profile(name=str(name), title=str(title), origin=origin, specs=specs, **chosen)


def shipped_text(name: str) -> str:
    return resources.files("gateway.profiles").joinpath("data", f"{name}.toml").read_text("utf-8")


def load(name_or_path: str) -> Profile:
    """A shipped profile by name, or a TOML file by path."""
    if name_or_path in SHIPPED:
        return parse(shipped_text(name_or_path), "shipped")
    path = Path(name_or_path)
    if path.suffix != ".toml" and not path.exists():
        raise ProfileError(
            [f"{name_or_path}: neither a shipped profile ({', '.join(SHIPPED)}) nor a TOML file"]
        )
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError([f"{name_or_path}: cannot read the profile: {exc}"]) from exc
    return parse(text, str(path))
