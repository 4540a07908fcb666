"""Validate export rows one by one: a typed entry, or a ``RowError`` saying which line, which
column and why. Pure: no I/O, so every kind of bad row has a unit test.

ID numbers (证件号码) are never read into an entry; names only when the operator asked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.codes import CodeShapes
from gateway.days import OPEN_END
from gateway.records import Status
from loader import columns as col
from loader.columns import ColumnMapping
from loader.dates import DateError, parse_day


@dataclass(frozen=True, slots=True)
class RowError:
    line: int
    column: str
    reason: str
    value: str = ""


@dataclass(frozen=True, slots=True)
class StaffEntry:
    line: int
    code: str
    institution: str  # empty only on a 删除 row: every institution
    department: str
    status: Status | None  # None: a 删除 row
    start: int
    end: int
    category: str
    name: str | None


@dataclass(frozen=True, slots=True)
class InstitutionEntry:
    line: int
    code: str
    name: str
    region: str
    status: Status | None
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class DepartmentEntry:
    line: int
    institution: str
    department: str
    status: Status | None
    start: int
    end: int


Entry = StaffEntry | InstitutionEntry | DepartmentEntry


class _Invalid(Exception):
    def __init__(self, column: str, reason: str, value: str = "") -> None:
        super().__init__(reason)
        self.error = (column, reason, value)


@dataclass(frozen=True)
class RowValidator:
    """Checks rows of one file kind against the code shapes and status vocabulary."""

    kind: str
    shapes: CodeShapes
    mapping: ColumnMapping
    delta: bool = False
    keep_names: bool = False

    def validate(self, line: int, row: Mapping[str, str]) -> Entry | RowError:
        try:
            if self.kind == "staff":
                return self._staff(line, row)
            if self.kind == "institution":
                return self._institution(line, row)
            return self._department(line, row)
        except _Invalid as bad:
            column, reason, value = bad.error
            return RowError(line, column, reason, value)

    # -- fields -------------------------------------------------------------------------

    def _status(self, row: Mapping[str, str]) -> Status | None:
        text = row.get(col.STATUS, "").strip()
        if not text:
            raise _Invalid(col.STATUS, "协议状态为空")
        if text == col.DELETE:
            if not self.delta:
                raise _Invalid(col.STATUS, "全量文件中不能出现“删除”，删除只用于增量文件（--delta）", text)
            return None
        status = self.mapping.statuses.get(text)
        if status is None:
            raise _Invalid(col.STATUS, "无法识别的协议状态", text)
        return status

    def _period(self, row: Mapping[str, str], status: Status | None) -> tuple[int, int]:
        if status is None:  # 删除: dates are ignored
            return 0, OPEN_END
        start_text = row.get(col.START, "").strip()
        if not start_text:
            raise _Invalid(col.START, "开始日期为空")
        try:
            start = parse_day(start_text)
        except DateError as exc:
            raise _Invalid(col.START, str(exc), start_text) from None
        end_text = row.get(col.END, "").strip()
        if not end_text:
            return start, OPEN_END
        try:
            end = parse_day(end_text)
        except DateError as exc:
            raise _Invalid(col.END, str(exc), end_text) from None
        if end < start:
            raise _Invalid(col.END, "结束日期早于开始日期", end_text)
        return start, end

    def _institution_code(self, row: Mapping[str, str], required: bool = True) -> str:
        code = row.get(col.INSTITUTION, "").strip()
        if not code:
            if required:
                raise _Invalid(col.INSTITUTION, "定点机构代码为空")
            return ""
        if not self.shapes.is_institution_code(code):
            raise _Invalid(col.INSTITUTION, "定点机构代码不符合国家编码规则", code)
        return code

    # -- kinds --------------------------------------------------------------------------

    def _staff(self, line: int, row: Mapping[str, str]) -> StaffEntry:
        code = row.get(col.CODE, "").strip()
        if not code:
            raise _Invalid(col.CODE, "人员代码为空")
        if not self.shapes.is_staff_code(code):
            raise _Invalid(col.CODE, "人员代码不符合国家编码规则", code)
        status = self._status(row)
        institution = self._institution_code(row, required=status is not None)
        start, end = self._period(row, status)
        category = row.get(col.CATEGORY, "").strip().removeprefix("医保")
        if category and category not in col.STAFF_CATEGORIES:
            raise _Invalid(col.CATEGORY, "无法识别的人员类别", category)
        name = row.get(col.NAME, "").strip() if self.keep_names else None
        return StaffEntry(
            line, code, institution, row.get(col.DEPARTMENT, "").strip(),
            status, start, end, category, name or None,
        )  # fmt: skip

    def _institution(self, line: int, row: Mapping[str, str]) -> InstitutionEntry:
        code = self._institution_code(row)
        status = self._status(row)
        start, end = self._period(row, status)
        return InstitutionEntry(
            line, code, row.get(col.INSTITUTION_NAME, "").strip(),
            row.get(col.REGION, "").strip(), status, start, end,
        )  # fmt: skip

    def _department(self, line: int, row: Mapping[str, str]) -> DepartmentEntry:
        institution = self._institution_code(row)
        department = row.get(col.DEPARTMENT, "").strip()
        if not department:
            raise _Invalid(col.DEPARTMENT, "科室编码为空")
        status = self._status(row)
        start, end = self._period(row, status)
        return DepartmentEntry(line, institution, department, status, start, end)
