"""Export column names: the canonical headers of each file kind and the aliases provinces use.

Pure data plus a normaliser. The contract's aliases are built in; a TOML mapping file adds a
province's own spellings (``[headers]`` alias = canonical, ``[statuses]`` spelling =
canonical status).
"""

from __future__ import annotations

import tomllib
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.records import STATUS_SYNONYMS, Status

CODE = "人员代码"
NAME = "姓名"
CATEGORY = "人员类别"
INSTITUTION = "定点机构代码"
DEPARTMENT = "科室编码"
STATUS = "协议状态"
START = "开始日期"
END = "结束日期"
ID_NUMBER = "证件号码"
UPDATED = "更新时间"
INSTITUTION_NAME = "机构名称"
REGION = "统筹区"

KINDS = ("staff", "institution", "department")

CANONICAL: Mapping[str, tuple[str, ...]] = {
    "staff": (CODE, NAME, CATEGORY, INSTITUTION, DEPARTMENT, STATUS, START, END, ID_NUMBER, UPDATED),
    "institution": (INSTITUTION, INSTITUTION_NAME, REGION, STATUS, START, END, UPDATED),
    "department": (INSTITUTION, DEPARTMENT, STATUS, START, END),
}

REQUIRED: Mapping[str, tuple[str, ...]] = {
    "staff": (CODE, INSTITUTION, STATUS, START),
    "institution": (INSTITUTION, STATUS, START),
    "department": (INSTITUTION, DEPARTMENT, STATUS, START),
}

# A 删除 row's dates are ignored, so a delta (a delete-only one, say) may come without them;
# its rows that need a date are then rejected one by one, not the whole file.
DATE_COLUMNS = frozenset({START, END})


def required_columns(kind: str, delta: bool) -> tuple[str, ...]:
    """The columns a file of this kind must have to be read at all."""
    if not delta:
        return REQUIRED[kind]
    return tuple(name for name in REQUIRED[kind] if name not in DATE_COLUMNS)


BUILTIN_ALIASES: Mapping[str, str] = {
    "医保医师代码": CODE,
    "医保医生代码": CODE,
    "医保对应代码": CODE,
    "医疗机构编码": INSTITUTION,
    "人员状态": STATUS,
    "合同起始时间": START,
    "备案开始日期": START,
    "合同截止时间": END,
    "备案结束日期": END,
    "身份证件号码": ID_NUMBER,
}

# A delta row with this status removes what it names at its place in the file: a person's
# periods at one or every institution, an institution's record, a department's actions.
DELETE = "删除"

STAFF_CATEGORIES = frozenset({"医师", "护士", "药师", "技师", "照护员"})


def clean_header(raw: str) -> str:
    """Headers as typed by hand: strip BOM, spaces (incl. full-width), NFKC, a leading ``*``."""
    text = unicodedata.normalize("NFKC", raw).replace("\ufeff", "").strip()
    return text.lstrip("*").strip()


@dataclass(frozen=True)
class ColumnMapping:
    """Header aliases and status spellings in force for one load."""

    aliases: Mapping[str, str] = field(default_factory=lambda: dict(BUILTIN_ALIASES))
    statuses: Mapping[str, Status] = field(default_factory=lambda: dict(STATUS_SYNONYMS))

    @classmethod
    def from_toml(cls, path: Path) -> ColumnMapping:
        """Built-ins plus a province's mapping file; unknown targets are an error."""
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
        aliases = dict(BUILTIN_ALIASES)
        every_canonical = {name for names in CANONICAL.values() for name in names}
        for alias, target in doc.get("headers", {}).items():
            if target not in every_canonical:
                raise ValueError(f"{path}: [headers] {alias!r} maps to unknown column {target!r}")
            aliases[clean_header(alias)] = target
        statuses = dict(STATUS_SYNONYMS)
        for spelling, target in doc.get("statuses", {}).items():
            if target not in STATUS_SYNONYMS:
                raise ValueError(f"{path}: [statuses] {spelling!r} maps to unknown status {target!r}")
            statuses[spelling.strip()] = STATUS_SYNONYMS[target]
        return cls(aliases, statuses)

    def canonical(self, raw_header: str) -> str:
        header = clean_header(raw_header)
        return self.aliases.get(header, header)


def detect_kind(headers: list[str]) -> str | None:
    """Which file kind a canonical header row belongs to (None: cannot tell)."""
    present = set(headers)
    if CODE in present:
        return "staff"
    if DEPARTMENT in present and INSTITUTION in present:
        return "department"
    if INSTITUTION in present and STATUS in present:
        return "institution"
    return None
