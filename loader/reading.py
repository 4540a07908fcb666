"""Read an export file into (line number, cells) rows, whatever its format and encoding.

CSV arrives as UTF-8 (with or without BOM) or GB18030/GBK: the encoding is decided by a
strict UTF-8 pass over the bytes (GBK text is almost never valid UTF-8), streaming so a
100 MB file is not held twice. XLSX is read from its first sheet with python-calamine, a
maintained Rust reader many times faster than pure-Python alternatives. Line numbers count
the header as line 1, as a person opening the file sees them.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20


class FileFormatError(ValueError):
    """The file cannot be read as an export at all."""


@dataclass
class Table:
    """A header row and an iterator over the data rows after it."""

    headers: list[str]
    rows: Iterator[tuple[int, list[str]]]
    encoding: str
    format: str


def detect_encoding(path: Path) -> str:
    with path.open("rb") as fh:
        head = fh.read(4)
        if head.startswith(codecs.BOM_UTF8):
            return "utf-8-sig"
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            return "utf-16"
        fh.seek(0)
        decoder = codecs.getincrementaldecoder("utf-8")()
        try:
            while chunk := fh.read(CHUNK):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return "gb18030"
    return "utf-8"


def _csv_rows(path: Path, encoding: str) -> Iterator[tuple[int, list[str]]]:
    with path.open(encoding=encoding, newline="", errors="strict") as fh:
        sample = fh.readline()
        delimiter = "\t" if sample.count("\t") > sample.count(",") else ","
        fh.seek(0)
        reader = csv.reader(fh, delimiter=delimiter)
        try:
            for row in reader:
                yield reader.line_num, row
        except (UnicodeDecodeError, csv.Error) as exc:
            raise FileFormatError(f"{path}: line {reader.line_num + 1}: {exc}") from exc


def _cell_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _xlsx_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    from python_calamine import CalamineError, CalamineWorkbook

    try:
        workbook = CalamineWorkbook.from_path(str(path))
        sheet = workbook.get_sheet_by_index(0)
    except CalamineError as exc:
        raise FileFormatError(f"{path}: not a readable XLSX workbook: {exc}") from exc
    with contextlib.closing(workbook):
        # calamine starts at the first used row; blank leading rows shift the numbering.
        first = (sheet.start or (0, 0))[0] + 1
        for offset, row in enumerate(sheet.iter_rows()):
            yield first + offset, [_cell_text(v) for v in row]


def open_table(path: Path) -> Table:
    """The header and rows of an export; FileFormatError if it has no header row."""
    if not path.is_file():
        raise FileFormatError(f"{path}: no such file")
    if path.suffix.lower() in {".xlsx", ".xlsm"}:
        encoding, fmt, rows = "xlsx", "xlsx", _xlsx_rows(path)
    else:
        encoding = detect_encoding(path)
        fmt, rows = "csv", _csv_rows(path, encoding)
    for _, header in rows:
        if any(cell.strip() for cell in header):
            return Table(header, rows, encoding, fmt)
    raise FileFormatError(f"{path}: the file is empty (no header row)")
