"""Read an export file into (line number, cells) rows, whatever its format and encoding.

CSV arrives as UTF-8 (with or without BOM) or GB18030/GBK. One streaming pass over the bytes
computes the file's sha256 (for idempotent re-runs) and decides the encoding: a header row
with Chinese text that is valid UTF-8 means UTF-8 (GBK text is almost never valid UTF-8);
otherwise the whole file must be valid UTF-8, else it is GB18030 (a superset of GBK). A file
with a few undecodable bytes — a hand-edited export, a truncated copy — is still read: the
rows holding them are rejected (``damaged_lines``) and the rest load.

XLSX is read from its first sheet with python-calamine, a maintained Rust reader many times
faster than pure-Python alternatives. Line numbers count the header as line 1, as a person
opening the file sees them.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import datetime as dt
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

CHUNK = 1 << 20
XLSX_SUFFIXES = frozenset({".xlsx", ".xlsm"})
REPLACEMENT = "\ufffd"


class FileFormatError(ValueError):
    """The file cannot be read as an export at all."""


@dataclass(frozen=True)
class FileFacts:
    """What one pass over the bytes tells: content hash, text encoding, whether it decodes."""

    sha256: str
    encoding: str
    clean: bool  # every byte decodes in ``encoding``


class Cursor:
    """How far the row iterator has got, in bytes (CSV) or rows (XLSX), for a progress bar."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self._file: IO[bytes] | None = None

    def follow(self, fh: IO[bytes]) -> None:
        self._file = fh

    def position(self) -> tuple[int, int]:
        if self._file is not None and not self._file.closed:
            self.done = self._file.tell()
        return self.done, self.total


@dataclass
class Table:
    """A header row and an iterator over the data rows after it."""

    headers: list[str]
    rows: Iterator[tuple[int, list[str]]]
    encoding: str
    format: str
    cursor: Cursor
    # Rows (by line number) holding undecodable bytes; filled while ``rows`` is consumed.
    damaged_rows: set[int] = field(default_factory=set)


def _decodes(path: Path, encoding: str) -> bool:
    decoder = codecs.getincrementaldecoder(encoding)()
    with path.open("rb") as fh:
        try:
            while chunk := fh.read(CHUNK):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return False
    return True


def scan_file(path: Path) -> FileFacts:
    """sha256 and encoding of an export in one streaming pass (two for a damaged GBK file)."""
    digest = hashlib.sha256()
    utf8 = codecs.getincrementaldecoder("utf-8")()
    valid_utf8 = True
    header = b""
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            if len(header) < 4096 and b"\n" not in header:
                header += chunk[:4096]
            if valid_utf8:
                try:
                    utf8.decode(chunk)
                except UnicodeDecodeError:
                    valid_utf8 = False
    if valid_utf8:
        with contextlib.suppress(UnicodeDecodeError):
            utf8.decode(b"", final=True)
            return FileFacts(digest.hexdigest(), _utf8_name(header), clean=True)
    if path.suffix.lower() in XLSX_SUFFIXES:
        return FileFacts(digest.hexdigest(), "xlsx", clean=True)
    if header.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return FileFacts(digest.hexdigest(), "utf-16", clean=_decodes(path, "utf-16"))
    first_line = header.split(b"\n", 1)[0]
    try:
        if not first_line.isascii() and first_line.decode("utf-8"):
            return FileFacts(digest.hexdigest(), _utf8_name(header), clean=False)
    except UnicodeDecodeError:
        pass
    return FileFacts(digest.hexdigest(), "gb18030", clean=_decodes(path, "gb18030"))


def _utf8_name(header: bytes) -> str:
    return "utf-8-sig" if header.startswith(codecs.BOM_UTF8) else "utf-8"


def _marking_damage(lines: Iterable[str], damaged: set[int]) -> Iterator[str]:
    """Pass lines through, noting the numbers of those with undecodable bytes."""
    for number, text in enumerate(lines, start=1):
        if REPLACEMENT in text:
            damaged.add(number)
        yield text


def _csv_rows(
    path: Path, facts: FileFacts, damaged_rows: set[int], cursor: Cursor
) -> Iterator[tuple[int, list[str]]]:
    """Rows numbered by the physical line they start on (a quoted cell may span lines)."""
    errors = "strict" if facts.clean else "replace"
    damaged_lines: set[int] = set()
    with path.open(encoding=facts.encoding, newline="", errors=errors) as fh:
        sample = fh.readline()
        delimiter = "\t" if sample.count("\t") > sample.count(",") else ","
        fh.seek(0)
        cursor.follow(fh.buffer)  # type: ignore[arg-type]
        lines: Iterable[str] = fh if facts.clean else _marking_damage(fh, damaged_lines)
        reader = csv.reader(lines, delimiter=delimiter)
        start = 1
        try:
            for row in reader:
                end = reader.line_num
                if damaged_lines and any(n in damaged_lines for n in range(start, end + 1)):
                    damaged_rows.add(start)
                yield start, row
                start = end + 1
        except (UnicodeDecodeError, csv.Error) as exc:
            raise FileFormatError(f"{path}: line {reader.line_num + 1}: {exc}") from exc


def _cell_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _xlsx_rows(path: Path, cursor: Cursor) -> Iterator[tuple[int, list[str]]]:
    from python_calamine import CalamineError, CalamineWorkbook

    try:
        workbook = CalamineWorkbook.from_path(str(path))
        sheet = workbook.get_sheet_by_index(0)
    except (CalamineError, ValueError, OSError) as exc:
        raise FileFormatError(f"{path}: not a readable XLSX workbook: {exc}") from exc
    with contextlib.closing(workbook):
        # calamine starts at the first used row; blank leading rows shift the numbering.
        first = (sheet.start or (0, 0))[0] + 1
        cursor.total = sheet.height
        for offset, row in enumerate(sheet.iter_rows()):
            cursor.done = offset
            yield first + offset, [_cell_text(v) for v in row]


def open_table(path: Path, facts: FileFacts | None = None) -> Table:
    """The header and rows of an export; FileFormatError if it has no header row."""
    if not path.is_file():
        raise FileFormatError(f"{path}: no such file")
    damaged: set[int] = set()
    cursor = Cursor(path.stat().st_size)
    if path.suffix.lower() in XLSX_SUFFIXES:
        encoding, fmt, rows = "xlsx", "xlsx", _xlsx_rows(path, cursor)
    else:
        facts = facts or scan_file(path)
        encoding, fmt, rows = facts.encoding, "csv", _csv_rows(path, facts, damaged, cursor)
    for _, header in rows:
        if any(cell.strip() for cell in header):
            return Table(header, rows, encoding, fmt, cursor, damaged)
    raise FileFormatError(f"{path}: the file is empty (no header row)")


def detect_encoding(path: Path) -> str:
    return scan_file(path).encoding
