"""Export parsing: encodings, headers and aliases, dates, and every kind of bad row."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from gateway.codes import DEFAULT_SHAPES
from gateway.days import OPEN_END, day_of_date
from gateway.records import StaffRecord, Status
from loader import build
from loader.columns import ColumnMapping, detect_kind
from loader.dates import DateError, parse_day
from loader.reading import FileFormatError, detect_encoding, open_table
from loader.rows import DepartmentEntry, RowError, RowValidator, StaffEntry
from tests.exports import HEADERS, department_row, staff_row, write_csv


def day(text: str) -> int:
    return day_of_date(dt.date.fromisoformat(text))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-01", "2026-03-01"),
        ("2026/3/1", "2026-03-01"),
        ("2026-03-01 10:31:00", "2026-03-01"),
        ("2026-03-01T10:31", "2026-03-01"),
        ("20260301", "2026-03-01"),
        ("2026年3月1日", "2026-03-01"),
        ("46082", "2026-03-01"),  # Excel serial
        ("46082.0", "2026-03-01"),
    ],
)
def test_dates(text: str, expected: str) -> None:
    assert parse_day(text) == day(expected)


@pytest.mark.parametrize("text", ["2026-02-30", "tomorrow", "12", "2026-13-01", "99999999"])
def test_bad_dates(text: str) -> None:
    with pytest.raises(DateError):
        parse_day(text)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gb18030", "gbk"])
def test_encodings_are_detected(tmp_path: Path, encoding: str) -> None:
    path = write_csv(tmp_path / "s.csv", HEADERS["staff"], [staff_row(name="欧阳娜娜")], encoding)
    table = open_table(path)
    mapping = ColumnMapping()
    assert [mapping.canonical(h) for h in table.headers] == list(HEADERS["staff"])
    ((_, row),) = list(table.rows)
    assert row[1] == "欧阳娜娜"
    assert detect_encoding(path) == {"gbk": "gb18030"}.get(encoding, encoding)


def test_xlsx_first_sheet(tmp_path: Path) -> None:
    import xlsxwriter

    path = tmp_path / "s.xlsx"
    book = xlsxwriter.Workbook(str(path))
    sheet = book.add_worksheet("导出")
    sheet.write_row(0, 0, HEADERS["staff"])
    row = staff_row()
    sheet.write_row(1, 0, row[:6])
    sheet.write_datetime(1, 6, dt.datetime(2026, 3, 1), book.add_format({"num_format": "yyyy-mm-dd"}))
    sheet.write_number(1, 7, 46172)  # 2026-05-30 as a bare serial
    book.add_worksheet("其他").write_row(0, 0, ["ignored"])
    book.close()
    table = open_table(path)
    ((line, cells),) = list(table.rows)
    assert line == 2 and cells[0] == row[0]
    assert parse_day(cells[6]) == day("2026-03-01") and parse_day(cells[7]) == day("2026-05-30")


def test_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(b"\n\n")
    with pytest.raises(FileFormatError, match="empty"):
        open_table(path)


def test_aliases_and_kind_detection() -> None:
    mapping = ColumnMapping()
    headers = [
        mapping.canonical(h)
        for h in [
            "医保医师代码",
            " 医疗机构编码 ",
            "人员状态",
            "合同起始时间",
            "合同截止时间",
            "身份证件号码",
        ]
    ]
    assert headers == ["人员代码", "定点机构代码", "协议状态", "开始日期", "结束日期", "证件号码"]
    assert detect_kind(headers) == "staff"
    assert detect_kind(["定点机构代码", "科室编码", "协议状态", "开始日期"]) == "department"
    assert detect_kind(["定点机构代码", "机构名称", "统筹区", "协议状态", "开始日期"]) == "institution"
    assert detect_kind(["a", "b"]) is None


def test_mapping_file_adds_a_province(tmp_path: Path) -> None:
    toml = tmp_path / "m.toml"
    toml.write_text('[headers]\n"医师编号" = "人员代码"\n[statuses]\n"停用" = "中止"\n', encoding="utf-8")
    mapping = ColumnMapping.from_toml(toml)
    assert mapping.canonical("医师编号") == "人员代码"
    assert mapping.statuses["停用"] is Status.SUSPENDED
    toml.write_text('[headers]\n"x" = "不存在"\n', encoding="utf-8")
    with pytest.raises(ValueError, match="unknown column"):
        ColumnMapping.from_toml(toml)


def validate(row: list[str], delta: bool = False, keep_names: bool = False) -> StaffEntry | RowError:
    validator = RowValidator("staff", HEADERS["staff"], DEFAULT_SHAPES, ColumnMapping(), delta, keep_names)
    result = validator.check(7, list(row))
    assert isinstance(result, StaffEntry | RowError)
    return result


@pytest.mark.parametrize(
    ("row", "column", "reason"),
    [
        (staff_row(code=""), "人员代码", "为空"),
        (staff_row(code="D3309"), "人员代码", "不符合"),
        (staff_row(institution=""), "定点机构代码", "为空"),
        (staff_row(institution="X1"), "定点机构代码", "不符合"),
        (staff_row(status=""), "协议状态", "为空"),
        (staff_row(status="停诊"), "协议状态", "无法识别"),
        (staff_row(status="删除"), "协议状态", "增量"),
        (staff_row(start=""), "开始日期", "为空"),
        (staff_row(start="2026-02-30"), "开始日期", "不存在"),
        (staff_row(end="someday"), "结束日期", "无法识别"),
        (staff_row(start="2026-03-01", end="2026-02-01"), "结束日期", "早于"),
        (staff_row(category="主任"), "人员类别", "无法识别"),
        (staff_row(code="D３３０９０２００１２３４"), "人员代码", "不符合"),  # full-width digits
        (staff_row(code="D٣٣٠٩٠٢٠٠١٢٣٤"), "人员代码", "不符合"),  # Arabic-Indic digits
        (staff_row(institution="H３３０９０２０００１７"), "定点机构代码", "不符合"),
    ],
)
def test_bad_rows_say_line_column_and_reason(row: list[str], column: str, reason: str) -> None:
    result = validate(row)
    assert isinstance(result, RowError)
    assert (result.line, result.column) == (7, column) and reason in result.reason


@pytest.mark.parametrize(
    ("spelling", "status"), [("暂停", Status.SUSPENDED), ("终止", Status.TERMINATED), ("有效", Status.NORMAL)]
)
def test_status_synonyms(spelling: str, status: Status) -> None:
    entry = validate(staff_row(status=spelling))
    assert isinstance(entry, StaffEntry) and entry.status is status


def test_good_row_drops_id_number_and_name() -> None:
    entry = validate(staff_row(end="2026-05-31"))
    assert isinstance(entry, StaffEntry)
    assert (entry.start, entry.end) == (day("2024-01-01"), day("2026-05-31"))
    assert entry.name is None
    assert "330902198001011234" not in repr(entry)
    named = validate(staff_row(), keep_names=True)
    assert isinstance(named, StaffEntry) and named.name == "张三"


def test_delta_delete_row_needs_no_dates() -> None:
    entry = validate(staff_row(status="删除", start="", institution=""), delta=True)
    assert isinstance(entry, StaffEntry) and entry.status is None and entry.institution == ""


def entries(*rows: list[str], delta: bool = False) -> list[StaffEntry]:
    out = [validate(r, delta) for r in rows]
    assert all(isinstance(e, StaffEntry) for e in out)
    return out  # type: ignore[return-value]


def test_full_records_group_periods_per_person() -> None:
    records = build.full_records(
        "staff",
        entries(staff_row(), staff_row(institution="H33090300021"), staff_row(code="N330902000008")),
    )
    doctor = StaffRecord.decode(records["D330902001234"])
    assert sorted(doctor.by_institution) == ["H33090200017", "H33090300021"]
    assert doctor.periods[0].end == OPEN_END
    assert b"330902198001011234" not in records["D330902001234"]


def test_delta_replaces_everything_of_a_mentioned_person() -> None:
    live = build.full_records("staff", entries(staff_row(), staff_row(institution="H33090300021")))
    changes = build.delta_records(
        "staff",
        build.grouped(entries(staff_row(status="中止", start="2026-03-01", end="2026-05-31"), delta=True)),
        live,
    )
    record = StaffRecord.decode(changes["D330902001234"] or b"")
    assert [(p.institution, p.status) for p in record.periods] == [("H33090200017", Status.SUSPENDED)]


def test_delta_delete_at_one_or_every_institution() -> None:
    live = build.full_records("staff", entries(staff_row(), staff_row(institution="H33090300021")))
    one = build.delta_records(
        "staff", build.grouped(entries(staff_row(status="删除", start=""), delta=True)), live
    )
    record = StaffRecord.decode(one["D330902001234"] or b"")
    assert list(record.by_institution) == ["H33090300021"]
    every = build.delta_records(
        "staff", build.grouped(entries(staff_row(status="删除", institution="", start=""), delta=True)), live
    )
    assert every == {"D330902001234": None}


# -- delta rows apply in file order ---------------------------------------------------------

H1, H2, H99 = "H33090200017", "H33090300021", "H33090200099"


def staff_delta(*rows: list[str]) -> bytes | None:
    """The doctor's record after a delta of ``rows`` over a live record at H1 and H2."""
    live = build.full_records("staff", entries(staff_row(institution=H1), staff_row(institution=H2)))
    return build.delta_records("staff", build.grouped(entries(*rows, delta=True)), live)["D330902001234"]


def periods_of(raw: bytes | None) -> list[tuple[str, Status, int]]:
    assert raw is not None
    return [(p.institution, p.status, p.start) for p in StaffRecord.decode(raw).periods]


def deleted(institution: str = H1) -> list[str]:
    return staff_row(institution=institution, status="删除", start="")


def test_delta_delete_everywhere_then_a_new_row_keeps_the_new_row() -> None:
    raw = staff_delta(deleted(""), staff_row(institution=H99))
    assert periods_of(raw) == [(H99, Status.NORMAL, day("2024-01-01"))]
    assert StaffRecord.decode(raw or b"").category == "医师"


def test_delta_delete_at_an_institution_then_a_row_there_keeps_the_row() -> None:
    raw = staff_delta(deleted(H1), staff_row(institution=H1, status="中止", start="2026-03-01"))
    assert periods_of(raw) == [(H1, Status.SUSPENDED, day("2026-03-01"))]  # H2: replaced by the row


def test_delta_row_then_its_delete_removes_the_person() -> None:
    assert staff_delta(staff_row(institution=H1, status="中止", start="2026-03-01"), deleted(H1)) is None
    assert staff_delta(staff_row(institution=H99), deleted("")) is None


def test_delta_rows_after_the_first_add_and_a_later_delete_removes_only_its_institution() -> None:
    raw = staff_delta(
        staff_row(institution=H1, status="中止", start="2026-03-01"),
        staff_row(institution=H99),
        staff_row(institution=H2, start="2025-01-01"),
        deleted(H2),
    )
    assert periods_of(raw) == [
        (H1, Status.SUSPENDED, day("2026-03-01")),
        (H99, Status.NORMAL, day("2024-01-01")),
    ]


def test_delta_deletes_alone_edit_the_live_periods() -> None:
    assert periods_of(staff_delta(deleted(H2))) == [(H1, Status.NORMAL, day("2024-01-01"))]
    assert staff_delta(deleted(H1), deleted(H2)) is None
    unknown = build.delta_records("staff", build.grouped(entries(deleted(""), delta=True)), {})
    assert unknown == {"D330902001234": None}


def test_grouping_keeps_each_persons_rows_in_file_order() -> None:
    rows = [deleted(""), staff_row(code="N330902000008"), staff_row(institution=H99), deleted(H99)]
    groups = build.grouped(entries(*rows, delta=True))
    assert [[e.status for e in group] for group in groups.values()] == [
        [None, Status.NORMAL, None],
        [Status.NORMAL],
    ]


@pytest.mark.parametrize("spelling", ["A05", "a05", "Ａ０５", "A05\u200b", " a05\u3000"])
def test_department_codes_are_read_in_canonical_form(spelling: str) -> None:
    entry = validate(staff_row(department=spelling))
    assert isinstance(entry, StaffEntry) and entry.department == "A05"
    departments = RowValidator("department", HEADERS["department"], DEFAULT_SHAPES, ColumnMapping())
    stop = departments.check(2, department_row(spelling))
    assert isinstance(stop, DepartmentEntry) and stop.department == "A05"


def test_a_department_code_of_invisible_characters_is_empty() -> None:
    departments = RowValidator("department", HEADERS["department"], DEFAULT_SHAPES, ColumnMapping())
    result = departments.check(2, department_row("\u200b"))
    assert isinstance(result, RowError) and result.column == "科室编码" and "为空" in result.reason
