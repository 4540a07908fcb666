"""Export files as they really arrive: damaged bytes, every alias, every kind of bad row, the
demo generator's formats, and the rejects report."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import orjson
import pytest

from gateway.codes import DEFAULT_SHAPES
from gateway.days import OPEN_END, day_of_date
from gateway.records import DepartmentActions, InstitutionRecord, StaffPeriod, StaffRecord, Status
from loader import build, report
from loader.columns import BUILTIN_ALIASES, CANONICAL, ColumnMapping
from loader.demo import BAD_ROWS, STAFF_HEADERS, DemoSet
from loader.progress import NoProgress, TerminalBar, for_stderr
from loader.reading import open_table, scan_file
from loader.rows import WHOLE_ROW, DepartmentEntry, InstitutionEntry, RowError, RowValidator, StaffEntry
from tests.exports import HEADERS, department_row, institution_row, staff_row, write_csv


def day(text: str) -> int:
    return day_of_date(dt.date.fromisoformat(text))


def validator(kind: str = "staff", headers: list[str] | None = None, delta: bool = False) -> RowValidator:
    return RowValidator(kind, headers or HEADERS[kind], DEFAULT_SHAPES, ColumnMapping(), delta)


# -- encodings and damaged bytes ------------------------------------------------------------


def test_gbk_file_with_a_damaged_row_loads_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "gbk.csv"
    good = write_csv(tmp_path / "x.csv", HEADERS["staff"], [staff_row(name="欧阳娜娜")], "gbk").read_bytes()
    header, row = good.splitlines(keepends=True)
    damaged = row.replace("欧阳".encode("gbk"), b"\xff\xff")  # bytes GB18030 cannot decode
    path.write_bytes(header + row + damaged + row)
    facts = scan_file(path)
    assert (facts.encoding, facts.clean) == ("gb18030", False)
    table = open_table(path, facts)
    rows = list(table.rows)
    assert [line for line, _ in rows] == [2, 3, 4]
    assert table.damaged_rows == {3}
    assert rows[0][1][1] == rows[2][1][1] == "欧阳娜娜"


def test_utf8_file_with_a_stray_byte_stays_utf8(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "u.csv", HEADERS["staff"], [staff_row(), staff_row()], "utf-8")
    data = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(data[0] + data[1] + data[2].replace(b"2024", b"20\xe924"))
    facts = scan_file(path)
    assert (facts.encoding, facts.clean) == ("utf-8", False)
    table = open_table(path, facts)
    assert len(list(table.rows)) == 2 and table.damaged_rows == {3}


def test_multiline_cell_is_numbered_by_its_first_line(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(
        "人员代码,姓名,定点机构代码,协议状态,开始日期\n"
        'D330902000001,"张\n三",H33090200017,正常,2024-01-01\n'
        "D330902000002,李四,H33090200017,正常,2024-01-01\n",
        encoding="utf-8",
    )
    assert [line for line, _ in open_table(path).rows] == [2, 4]


def test_tab_separated_export(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("\t".join(HEADERS["staff"]) + "\n" + "\t".join(staff_row()) + "\n", encoding="utf-8")
    ((_, cells),) = list(open_table(path).rows)
    assert cells == staff_row()


# -- headers --------------------------------------------------------------------------------


@pytest.mark.parametrize(("alias", "canonical"), sorted(BUILTIN_ALIASES.items()))
def test_every_builtin_alias_reads_as_its_column(alias: str, canonical: str) -> None:
    headers = [alias if h == canonical else h for h in HEADERS["staff"]]
    mapping = ColumnMapping()
    canonical_headers = [mapping.canonical(h) for h in headers]
    assert canonical_headers == HEADERS["staff"]
    entry = validator(headers=canonical_headers).check(2, staff_row(end="2026-05-31"))
    assert isinstance(entry, StaffEntry) and entry.end == day("2026-05-31")


@pytest.mark.parametrize("kind", ["institution", "department"])
def test_aliases_apply_to_every_file_kind(kind: str) -> None:
    spelled = {
        "定点机构代码": "医疗机构编码",
        "协议状态": "人员状态",
        "开始日期": "备案开始日期",
        "结束日期": "合同截止时间",
    }
    headers = [ColumnMapping().canonical(spelled.get(h, h)) for h in HEADERS[kind]]
    assert headers == HEADERS[kind] and set(headers) <= set(CANONICAL[kind])


def test_headers_typed_by_hand_are_cleaned() -> None:
    mapping = ColumnMapping()
    assert mapping.canonical("\ufeff*人员代码 ") == "人员代码"
    assert mapping.canonical("　协议状态　") == "协议状态"  # full-width spaces


def test_missing_optional_columns_read_as_empty() -> None:
    headers = ["人员代码", "定点机构代码", "协议状态", "开始日期"]
    entry = validator(headers=headers).check(2, ["D330902001234", "H33090200017", "正常", "2024-01-01"])
    assert isinstance(entry, StaffEntry)
    assert (entry.end, entry.department, entry.category) == (OPEN_END, "", "")


# -- bad rows -------------------------------------------------------------------------------


@pytest.mark.parametrize("spoil", BAD_ROWS, ids=lambda f: getattr(f, "__name__", "spoil"))
def test_every_demo_bad_row_is_rejected_with_a_column(spoil: object) -> None:
    row = spoil(staff_row(start="2025-01-01", end="2025-06-30"))  # type: ignore[operator]
    result = validator(headers=list(STAFF_HEADERS)).check(9, row)
    assert isinstance(result, RowError) and result.line == 9
    assert result.column in STAFF_HEADERS and result.reason


def test_row_with_more_cells_than_headers_is_rejected() -> None:
    result = validator().check(5, [*staff_row(), "多余"])
    assert result == RowError(5, WHOLE_ROW, "本行有 11 列，多于表头的 10 列", "多余")
    trailing_empty = validator().check(5, [*staff_row(), "", ""])
    assert isinstance(trailing_empty, StaffEntry)


def test_short_row_reads_missing_cells_as_empty() -> None:
    result = validator().check(5, staff_row()[:4])
    assert result == RowError(5, "协议状态", "协议状态为空", "")


@pytest.mark.parametrize(
    ("row", "column"),
    [
        (["H33090200017", "", "中止", "2026-03-01", ""], "科室编码"),
        (["H3309", "A03", "中止", "2026-03-01", ""], "定点机构代码"),
        (["H33090200017", "A03", "删除", "", ""], "协议状态"),
    ],
)
def test_bad_department_rows(row: list[str], column: str) -> None:
    result = validator("department").check(3, row)
    assert isinstance(result, RowError) and result.column == column


def test_category_with_the_insurance_prefix() -> None:
    entry = validator().check(2, staff_row(category="医保护士"))
    assert isinstance(entry, StaffEntry) and entry.category == "护士"


# -- records --------------------------------------------------------------------------------


def test_the_fast_staff_encoding_is_the_gateway_encoding() -> None:
    rows = [staff_row(), staff_row(status="中止", start="2026-03-01", end="2026-05-31", department="A05")]
    entries = [validator().check(i, r) for i, r in enumerate(rows, start=2)]
    raw = build.full_records("staff", entries)  # type: ignore[arg-type]
    expected = StaffRecord(
        (
            StaffPeriod("H33090200017", "A03", Status.NORMAL, day("2024-01-01"), OPEN_END),
            StaffPeriod("H33090200017", "A05", Status.SUSPENDED, day("2026-03-01"), day("2026-05-31")),
        ),
        "医师",
    )
    assert raw == {"D330902001234": expected.encode()}
    assert StaffRecord.decode(raw["D330902001234"]) == expected


def test_duplicate_rows_of_a_person_make_one_period() -> None:
    entries = [validator().check(i, staff_row()) for i in (2, 3)]
    record = StaffRecord.decode(build.full_records("staff", entries)["D330902001234"])  # type: ignore[arg-type]
    assert len(record.periods) == 1


def _entries(
    kind: str, rows: list[list[str]], delta: bool = True
) -> list[InstitutionEntry | DepartmentEntry]:
    out = [validator(kind, delta=delta).check(i, r) for i, r in enumerate(rows, start=2)]
    assert not any(isinstance(e, RowError) for e in out), out
    return out  # type: ignore[return-value]


def test_institution_delta_replaces_and_deletes() -> None:
    live = build.full_records("institution", _entries("institution", [institution_row()], delta=False))
    changes = build.delta_records(
        "institution",
        build.grouped(
            _entries(
                "institution",
                [
                    institution_row(status="中止", start="2026-03-01", end="2026-05-31"),
                    institution_row(code="H33090300021", status="删除", start=""),
                ],
            )
        ),
        {**live, "H33090300021": live["H33090200017"]},
    )
    record = InstitutionRecord.decode(changes["H33090200017"] or b"")
    assert [p.status for p in record.periods] == [Status.SUSPENDED]
    assert changes["H33090300021"] is None


def test_department_delta_replaces_an_institutions_actions_and_deletes_one() -> None:
    live = build.full_records(
        "department", _entries("department", [department_row("A03"), department_row("A05")], delta=False)
    )
    replaced = build.delta_records(
        "department", build.grouped(_entries("department", [department_row("A07")])), live
    )
    assert set(DepartmentActions.decode(replaced["H33090200017"] or b"").by_department) == {"A07"}
    deleted = build.delta_records(
        "department", build.grouped(_entries("department", [department_row("A03", status="删除")])), live
    )
    assert set(DepartmentActions.decode(deleted["H33090200017"] or b"").by_department) == {"A05"}


def institution_delta(*rows: list[str]) -> bytes | None:
    """HOSPITAL's record after a delta of ``rows`` over a live 正常 record from 2020."""
    live = build.full_records("institution", _entries("institution", [institution_row()], delta=False))
    return build.delta_records("institution", build.grouped(_entries("institution", list(rows))), live)[
        "H33090200017"
    ]


def test_institution_delta_rows_apply_in_file_order() -> None:
    suspended = institution_row(status="中止", start="2026-03-01")
    removed = institution_row(status="删除", start="")
    assert institution_delta(suspended, removed) is None  # a row, then its 删除: gone
    after = InstitutionRecord.decode(institution_delta(removed, suspended) or b"")
    assert [(p.status, p.start) for p in after.periods] == [(Status.SUSPENDED, day("2026-03-01"))]
    both = InstitutionRecord.decode(
        institution_delta(institution_row(start="2021-01-01", end="2026-02-28"), suspended) or b""
    )
    assert [p.status for p in both.periods] == [Status.NORMAL, Status.SUSPENDED]  # later rows add
    assert institution_delta(removed) is None


def department_delta(*rows: list[str]) -> set[str] | None:
    """HOSPITAL's departments with actions after a delta of ``rows`` over live A03 and A05."""
    live = build.full_records(
        "department", _entries("department", [department_row("A03"), department_row("A05")], delta=False)
    )
    raw = build.delta_records("department", build.grouped(_entries("department", list(rows))), live)[
        "H33090200017"
    ]
    return None if raw is None else set(DepartmentActions.decode(raw).by_department)


def test_department_delta_rows_apply_in_file_order() -> None:
    removed = department_row("A03", status="删除", start="")
    again = department_row("A03", start="2026-04-01")
    assert department_delta(removed, again) == {"A03"}  # the new action stays; A05 is replaced
    assert department_delta(again, removed) is None  # no department left: the key is removed
    assert department_delta(department_row("A07"), department_row("A09"), removed) == {"A07", "A09"}
    assert department_delta(removed) == {"A05"}


# -- demo data ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "gb18030", "xlsx"])
def test_demo_formats_read_back_to_the_same_rows(tmp_path: Path, fmt: str) -> None:
    demo = DemoSet(dt.date(2026, 11, 24), 100, rows=120, bad_share=0.1)
    path = demo.write(tmp_path / fmt, fmt)["staff"]
    table = open_table(path)
    assert [ColumnMapping().canonical(h) for h in table.headers] == STAFF_HEADERS
    rows = [cells for _, cells in table.rows]
    assert len(rows) == 120
    check = validator(headers=STAFF_HEADERS).check
    results = [check(i, list(cells)) for i, cells in enumerate(rows, start=2)]
    expected = [check(i, row) for i, row in enumerate(demo.staff_rows(), start=2)]
    assert results == expected
    assert 0 < sum(isinstance(r, RowError) for r in results) < 30


def test_demo_rows_is_exact_and_codes_are_national() -> None:
    rows = list(DemoSet(dt.date(2026, 11, 24), 10, rows=40).staff_rows())
    assert len(rows) == 40 and all(DEFAULT_SHAPES.is_staff_code(r[0]) for r in rows)


# -- report and progress --------------------------------------------------------------------


def test_report_csv_and_jsonl_mask_id_numbers(tmp_path: Path) -> None:
    errors = [
        RowError(3, "人员代码", "人员代码不符合国家编码规则", "330902198001011234"),
        RowError(4, "开始日期", "不存在的日期", "2026-02-30"),
    ]
    csv_path = tmp_path / "r.csv"
    report.write(csv_path, Path("in.csv"), errors)
    text = csv_path.read_text(encoding="utf-8-sig")
    assert "330902198001011234" not in text and "330902**********34" in text
    assert text.splitlines()[2] == "in.csv,4,开始日期,不存在的日期,2026-02-30"
    jsonl = tmp_path / "r.jsonl"
    report.write(jsonl, Path("in.csv"), errors)
    docs = [orjson.loads(line) for line in jsonl.read_bytes().splitlines()]
    assert docs[1] == {
        "file": "in.csv",
        "line": 4,
        "column": "开始日期",
        "reason": "不存在的日期",
        "value": "2026-02-30",
    }
    assert report.by_reason(errors + errors[1:]) == {
        "开始日期: 不存在的日期": 2,
        "人员代码: 人员代码不符合国家编码规则": 1,
    }


def test_progress_bar_only_on_a_terminal() -> None:
    assert isinstance(for_stderr(), NoProgress)  # pytest captures stderr: not a TTY
    stream = io.StringIO()
    bar = TerminalBar(stream)
    bar.update("reading", 50, 100)
    bar.update("writing", 100, 100)
    bar.close()
    assert "reading" in stream.getvalue() and "100.0%" in stream.getvalue()


def test_excel_unicode_text_export_utf16_tabs(tmp_path: Path) -> None:
    """Excel's "Unicode text" save: UTF-16 with a BOM, tab separated."""
    path = tmp_path / "excel.txt"
    text = "\t".join(HEADERS["staff"]) + "\r\n" + "\t".join(staff_row(name="欧阳娜娜")) + "\r\n"
    path.write_bytes(text.encode("utf-16"))
    facts = scan_file(path)
    assert (facts.encoding, facts.clean) == ("utf-16", True)
    table = open_table(path, facts)
    assert [ColumnMapping().canonical(h) for h in table.headers] == HEADERS["staff"]
    ((line, cells),) = list(table.rows)
    assert line == 2 and cells == staff_row(name="欧阳娜娜")


def test_the_fast_path_agrees_with_the_careful_one() -> None:
    """Every row the fast path accepts gives the careful path's entry; the rest it leaves."""
    demo = DemoSet(dt.date(2026, 11, 24), 400, bad_share=0.2)
    rows = list(demo.staff_rows())
    spaced = [[f" {c}" if i % 3 == 0 else c for i, c in enumerate(r)] for r in rows[:50]]
    prefixed = [
        [("医保" + c) if h == "人员类别" else c for h, c in zip(STAFF_HEADERS, r, strict=True)]
        for r in rows[:20]
    ]
    for keep_names in (False, True):
        fast = RowValidator("staff", STAFF_HEADERS, DEFAULT_SHAPES, ColumnMapping(), keep_names=keep_names)
        careful = RowValidator("staff", STAFF_HEADERS, DEFAULT_SHAPES, ColumnMapping(), keep_names=keep_names)
        careful._fast_ok = False
        took_fast = 0
        for line, row in enumerate(rows + spaced + prefixed + rows, start=2):
            took_fast += fast._fast(line, list(row)) is not None
            assert fast.check(line, list(row)) == careful.check(line, list(row))
        assert took_fast > len(rows) // 2  # the second pass knows every date: mostly fast
