"""Builders for export files and settlement requests used across the tests."""

from __future__ import annotations

import csv
import datetime as dt
import zipfile
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

import redis

from gateway.days import CST
from gateway.keys import Keys
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from loader.demo import DEPARTMENT_HEADERS, INSTITUTION_HEADERS, STAFF_HEADERS
from loader.publish import Publisher
from loader.sync import SyncOptions, sync_file

HEADERS = {"staff": STAFF_HEADERS, "institution": INSTITUTION_HEADERS, "department": DEPARTMENT_HEADERS}

HOSPITAL = "H33090200017"
OTHER_HOSPITAL = "H33090300021"
DOCTOR = "D330902001234"


def write_csv(
    path: Path, headers: Sequence[str], rows: Sequence[Sequence[str]], encoding: str = "utf-8"
) -> Path:
    with path.open("w", encoding=encoding, newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(headers)
        writer.writerows(rows)
    return path


def write_xlsx(path: Path, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> Path:
    """An Office Open XML workbook (a ZIP of XML parts), every cell text."""
    import xlsxwriter

    book = xlsxwriter.Workbook(str(path))
    sheet = book.add_worksheet("导出数据")
    for r, row in enumerate([headers, *rows]):
        sheet.write_row(r, 0, row)
    book.close()
    return path


def write_xls(path: Path, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> Path:
    """An Excel 97-2003 workbook (BIFF8 in an OLE2 container), as older HIS exports are."""
    import xlwt  # type: ignore[import-untyped]

    book = xlwt.Workbook(encoding="utf-8")
    sheet = book.add_sheet("导出数据")
    for r, row in enumerate([headers, *rows]):
        for c, value in enumerate(row):
            sheet.write(r, c, value)
    book.save(str(path))
    return path


_ODS_NS = (
    'xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
    'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" '
    'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0"'
)


def write_ods(path: Path, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> Path:
    """An OpenDocument spreadsheet as LibreOffice/WPS save one: ``mimetype`` first and stored,
    then the manifest and the content (string cells)."""

    def cell(value: str) -> str:
        if not value:
            return "<table:table-cell/>"
        return f'<table:table-cell office:value-type="string"><text:p>{escape(value)}</text:p></table:table-cell>'

    body = "".join(
        "<table:table-row>" + "".join(cell(v) for v in row) + "</table:table-row>" for row in [headers, *rows]
    )
    content = (
        f'<?xml version="1.0" encoding="UTF-8"?><office:document-content {_ODS_NS} office:version="1.2">'
        f'<office:body><office:spreadsheet><table:table table:name="导出数据">{body}</table:table>'
        "</office:spreadsheet></office:body></office:document-content>"
    )
    manifest = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<manifest:manifest xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0" '
        'manifest:version="1.2"><manifest:file-entry manifest:full-path="/" manifest:version="1.2" '
        'manifest:media-type="application/vnd.oasis.opendocument.spreadsheet"/>'
        '<manifest:file-entry manifest:full-path="content.xml" manifest:media-type="text/xml"/>'
        "</manifest:manifest>"
    )
    with zipfile.ZipFile(path, "w") as book:
        book.writestr("mimetype", "application/vnd.oasis.opendocument.spreadsheet", zipfile.ZIP_STORED)
        book.writestr("META-INF/manifest.xml", manifest, zipfile.ZIP_DEFLATED)
        book.writestr("content.xml", content, zipfile.ZIP_DEFLATED)
    return path


def load_into(url: str, tmp_path: Path, kind: str, rows: list[list[str]]) -> str:
    """Write ``rows`` as a ``kind`` export and sync it into the Redis at ``url``; the version.
    Tests build versions one kind at a time: the completeness guard is waived."""
    client = redis.Redis.from_url(url)
    try:
        path = write_csv(tmp_path / f"{kind}.csv", HEADERS[kind], rows)
        result = sync_file(path, Publisher(client, Keys()), SyncOptions(kind=kind, allow_incomplete=True))  # type: ignore[arg-type]
        assert result.outcome == 0, result.message
        return str(result.data_version)
    finally:
        client.close()


def staff_row(
    code: str = DOCTOR,
    institution: str = HOSPITAL,
    status: str = "正常",
    start: str = "2024-01-01",
    end: str = "",
    department: str = "A03",
    category: str = "医师",
    name: str = "张三",
    id_number: str = "330902198001011234",
) -> list[str]:
    return [
        code,
        name,
        category,
        institution,
        department,
        status,
        start,
        end,
        id_number,
        "2026-02-27 10:31:00",
    ]


def institution_row(
    code: str = HOSPITAL,
    status: str = "正常",
    start: str = "2020-01-01",
    end: str = "",
    region: str = "330902",
) -> list[str]:
    return [code, "舟山市测试医院", region, status, start, end, "2026-01-01 09:00:00"]


def department_row(
    department: str,
    status: str = "中止",
    start: str = "2026-03-01",
    end: str = "",
    institution: str = HOSPITAL,
) -> list[str]:
    return [institution, department, status, start, end]


def at_cst(year: int, month: int, day: int, hour: int = 10) -> dt.datetime:
    return dt.datetime(year, month, day, hour, tzinfo=CST)


def line(
    line_id: str = "1",
    staff_code: str = DOCTOR,
    when: dt.datetime | None = None,
    amount_fen: int = 1000,
    item_code: str = "XA01AAA001",
    department_code: str = "A03",
    emergency: bool = False,
) -> pb.SettlementLine:
    msg = pb.SettlementLine(
        line_id=line_id,
        staff_code=staff_code,
        department_code=department_code,
        item_code=item_code,
        amount_fen=amount_fen,
        emergency=emergency,
    )
    msg.service_time.FromDatetime(when or at_cst(2026, 4, 1))
    return msg


def request(
    *lines: pb.SettlementLine,
    institution_code: str = HOSPITAL,
    encounter: int = pb.OUTPATIENT,
    med_type: str = "11",
    request_id: str = "req-1",
) -> pb.ValidateRequest:
    return pb.ValidateRequest(
        request_id=request_id,
        institution_code=institution_code,
        settlement_id="mdtrt-1",
        encounter=encounter,  # type: ignore[arg-type]
        med_type=med_type,
        lines=list(lines),
    )
