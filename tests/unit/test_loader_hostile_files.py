"""The parts that keep hostile export files harmless, one by one: what a file is from its bytes,
what is opened, what a report may replace, which report cells are neutralised, which cells
are too long. The end-to-end behaviour is in ``tests/integration/test_loader_hostile.py``."""

from __future__ import annotations

import csv
import os
import zipfile
from pathlib import Path

import orjson
import pytest

from gateway.codes import DEFAULT_SHAPES
from loader import report
from loader.columns import ColumnMapping
from loader.filekind import NotAnExport, sniff
from loader.reading import MAX_LINE_CHARS, UNREADABLE_ROW, FileFormatError, open_export, open_table, scan_file
from loader.rows import MAX_TEXT_CHARS, RowError, RowValidator, StaffEntry
from tests.exports import HEADERS, institution_row, staff_row, write_csv, write_ods, write_xls, write_xlsx

# -- file kinds -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        ("人员代码,姓名\nD330902001234,张三\n".encode(), "csv"),
        ("人员代码,姓名\n".encode("gb18030"), "csv"),
        ("人员代码\t姓名\r\n".encode("utf-16"), "csv"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(512), "xls"),
        (b"", "csv"),  # empty: refused later as having no header row
        (b"code,name\n1,a\x1bb\n" + b"2,c\n" * 200, "csv"),  # one stray control byte: its row fails
    ],
)
def test_sniff_tells_text_and_spreadsheets(head: bytes, kind: str) -> None:
    assert sniff(head) == kind


@pytest.mark.parametrize(
    ("head", "what"),
    [
        (b"%PDF-1.7\n\x00\x01", "a PDF document"),
        (b"\x1f\x8b\x08\x00" + bytes(100), "a gzip archive"),
        (b"\x7fELF\x02\x01\x01" + bytes(100), "an executable"),
        (b"a,b\n" + b"\x1b[31m" * 50, "binary"),
        ("人员代码,姓名".encode("utf-16-le"), "binary"),  # UTF-16 without a BOM: NUL bytes
    ],
)
def test_sniff_names_binary_content_without_quoting_it(head: bytes, what: str) -> None:
    with pytest.raises(NotAnExport) as refused:
        sniff(head)
    assert what in str(refused.value) and str(refused.value).isprintable()


def test_zip_kinds_come_from_the_archive_directory(tmp_path: Path) -> None:
    rows = [staff_row()]
    for path, kind in (
        (write_xlsx(tmp_path / "a.bin", HEADERS["staff"], rows), "xlsx"),
        (write_ods(tmp_path / "b.bin", HEADERS["staff"], rows), "ods"),
        (write_xls(tmp_path / "c.bin", HEADERS["staff"], rows), "xls"),
    ):
        with open_export(path) as export:
            assert export.kind == kind
    other = tmp_path / "o.xlsx"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(FileFormatError, match="a ZIP archive that holds no spreadsheet"):
        open_export(other)
    broken = tmp_path / "broken.xlsx"
    broken.write_bytes(write_xlsx(tmp_path / "d.xlsx", HEADERS["staff"], rows).read_bytes()[:200])
    with pytest.raises(FileFormatError, match="damaged ZIP"):
        open_export(broken)


def test_a_workbook_unpacking_past_the_cap_is_refused_unpacked(tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "bomb.xlsx", HEADERS["staff"], [staff_row()] * 50)
    with path.open("rb") as fh:
        head = fh.read()
        assert sniff(head, fh) == "xlsx"
        with pytest.raises(NotAnExport, match=r"unpacking to [\d,]+ bytes, over the cap of 1,000"):
            sniff(head, fh, max_unpacked=1000)


# -- what is opened -------------------------------------------------------------------------


def test_only_a_regular_file_under_its_own_name_is_opened(tmp_path: Path) -> None:
    target = write_csv(tmp_path / "t.csv", HEADERS["staff"], [staff_row()])
    (tmp_path / "link.csv").symlink_to(target)
    (tmp_path / "dangling.csv").symlink_to(tmp_path / "absent.csv")
    os.mkfifo(tmp_path / "pipe.csv")
    for name, what in (("link.csv", "a symbolic link"), ("dangling.csv", "a symbolic link"),
                       ("pipe.csv", "a FIFO"), (".", "a directory")):  # fmt: skip
        with pytest.raises(FileFormatError, match=what):
            open_export(tmp_path / name)
    with pytest.raises(FileFormatError, match="a device file"):
        open_export(Path("/dev/zero"))
    with pytest.raises(FileFormatError, match="no such file"):
        open_export(tmp_path / "absent.csv")
    with pytest.raises(FileFormatError, match="a symbolic link"):
        open_table(tmp_path / "link.csv")


def test_a_header_row_with_control_characters_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text("人员代码,\x1b]0;owned\x07定点机构代码\n" + "D330902001234,H33090200017\n" * 400, "utf-8")
    with pytest.raises(FileFormatError, match="line 1: the header row cannot be read"):
        open_table(path)


def test_an_overlong_csv_cell_rejects_its_row_and_numbering_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    limit = csv.field_size_limit()
    path.write_text("人员代码,姓名\nD1,a\nD2," + "x" * (limit + 1) + "\nD3,b\nD4,c\n", "utf-8", newline="")
    table = open_table(path)
    assert list(table.rows) == [(2, ["D1", "a"]), (3, [UNREADABLE_ROW]), (4, ["D3", "b"]), (5, ["D4", "c"])]
    assert table.damaged_rows == {3} and str(limit) in table.fault(3)


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\r"])
def test_a_line_over_the_cap_is_skipped_in_pieces_and_rejects_its_row(tmp_path: Path, ending: str) -> None:
    path = tmp_path / "s.csv"
    long = "D2," + "张" * (3 * MAX_LINE_CHARS)
    path.write_text(f"人员代码,姓名{ending}D1,a{ending}{long}{ending}D3,b{ending}", "utf-8", newline="")
    facts = scan_file(path)
    assert facts.long_lines and not scan_file(write_csv(tmp_path / "n.csv", ["a"], [["b"]])).long_lines
    table = open_table(path, facts)
    assert list(table.rows) == [(2, ["D1", "a"]), (3, [UNREADABLE_ROW]), (4, ["D3", "b"])]
    assert table.damaged_rows == {3} and str(MAX_LINE_CHARS) in table.fault(3)
    last = tmp_path / "last.csv"
    last.write_text(f"人员代码,姓名{ending}D1,a{ending}{long}", "utf-8", newline="")
    assert list(open_table(last).rows) == [(2, ["D1", "a"]), (3, [UNREADABLE_ROW])]


# -- the report -----------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["=1+1", "+1", "-1", "@SUM(A1)", "\t=1", "\r=1"])
def test_cells_a_spreadsheet_evaluates_get_a_quote(cell: str) -> None:
    assert report.neutralise(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["", "D330902001234", "a=1", "2026-01-01", "张三", " =1"])
def test_plain_cells_are_kept(cell: str) -> None:
    assert report.neutralise(cell) == cell


def test_csv_report_neutralises_every_text_cell_and_jsonl_stays_verbatim(tmp_path: Path) -> None:
    errors = [RowError(2, "=列", "@原因", "=cmd|' /C calc'!A0"), RowError(3, "姓名", "过长", "x" * 1000)]
    csv_path = tmp_path / "r.csv"
    report.write(csv_path, Path("-x.csv"), errors)
    with csv_path.open(encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[1] == ["'-x.csv", "2", "'=列", "'@原因", "'=cmd|' /C calc'!A0"]
    assert rows[2][4] == "x" * report.MAX_VALUE_CHARS + "…"
    jsonl = tmp_path / "r.jsonl"
    report.write(jsonl, Path("-x.csv"), errors)
    first = orjson.loads(jsonl.read_bytes().splitlines()[0])
    assert (first["file"], first["value"]) == ("-x.csv", "=cmd|' /C calc'!A0")


def test_a_report_replaces_a_previous_report_only(tmp_path: Path) -> None:
    errors = [RowError(2, "人员代码", "人员代码为空")]
    for suffix in (".csv", ".jsonl"):
        path = tmp_path / f"r{suffix}"
        report.write(path, Path("in.csv"), errors)
        report.write(path, Path("in.csv"), errors * 2)  # a previous report: replaced
        assert report.is_previous_report(path)
        assert len(path.read_bytes().splitlines()) == (3 if suffix == ".csv" else 2)
    victim = tmp_path / "victim.txt"
    victim.write_text("notes\n", "utf-8")
    (tmp_path / "link.csv").symlink_to(victim)
    os.link(victim, tmp_path / "hard.csv")
    os.mkfifo(tmp_path / "pipe.csv")
    (tmp_path / "dir.csv").mkdir()
    for name, what in (("link.csv", "a symbolic link"), ("hard.csv", "not a rejects report's header"),
                       ("pipe.csv", "a special file"), ("dir.csv", "a directory"),
                       ("victim.txt", "not a rejects report's header")):  # fmt: skip
        with pytest.raises(report.ReportRefused, match=what):
            report.write(tmp_path / name, Path("in.csv"), errors)
        report.remove_stale(tmp_path / name)  # not a report: left alone too
    assert victim.read_text("utf-8") == "notes\n" and (tmp_path / "link.csv").is_symlink()
    assert (tmp_path / "pipe.csv").exists() and (tmp_path / "dir.csv").is_dir()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary left
    report.remove_stale(tmp_path / "r.csv")
    assert not (tmp_path / "r.csv").exists()


# -- cells too long to keep -----------------------------------------------------------------


def test_a_free_text_cell_over_the_cap_rejects_its_row() -> None:
    long = "A" * (MAX_TEXT_CHARS + 1)
    for keep_names in (False, True):
        validator = RowValidator(
            "staff", HEADERS["staff"], DEFAULT_SHAPES, ColumnMapping(), keep_names=keep_names
        )
        bad = validator.check(2, staff_row(department=long))
        assert isinstance(bad, RowError) and bad.column == "科室编码" and str(MAX_TEXT_CHARS) in bad.reason
        assert isinstance(validator.check(3, staff_row(department="A" * MAX_TEXT_CHARS)), StaffEntry)
    named = RowValidator("staff", HEADERS["staff"], DEFAULT_SHAPES, ColumnMapping(), keep_names=True)
    assert named.check(2, staff_row(name=long)).column == "姓名"  # type: ignore[union-attr]
    unnamed = RowValidator("staff", HEADERS["staff"], DEFAULT_SHAPES, ColumnMapping())
    assert isinstance(unnamed.check(2, staff_row(name=long)), StaffEntry)  # names are not read
    institutions = RowValidator("institution", HEADERS["institution"], DEFAULT_SHAPES, ColumnMapping())
    row = institution_row(region=long)
    assert institutions.check(2, row).column == "统筹区"  # type: ignore[union-attr]
