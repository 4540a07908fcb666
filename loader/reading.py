"""Read an export file into (line number, cells) rows, whatever its format and encoding.

CSV arrives as UTF-8 (with or without BOM) or GB18030/GBK. One streaming pass over the bytes
computes the file's sha256 (for idempotent re-runs) and decides the encoding: a header row
with Chinese text that is valid UTF-8 means UTF-8 (GBK text is almost never valid UTF-8);
otherwise the whole file must be valid UTF-8, else it is GB18030 (a superset of GBK). A file
with a few undecodable bytes — a hand-edited export, a truncated copy — is still read: the
rows holding them are rejected (``damaged_lines``) and the rest load.

Spreadsheets — XLSX, XLSB, XLS and ODS, told from the bytes (``loader.filekind``), never
from the suffix — are read from their first sheet with python-calamine, a maintained Rust
reader many times faster than pure-Python alternatives. Line numbers count the header as
line 1, as a person opening the file sees them.

An export came from outside, so it is opened as ``ExportFile``: only a regular file under
its own name (not a link — ``O_NOFOLLOW`` — nor a FIFO, device or directory, which are
refused before being opened), at most ``MAX_FILE_BYTES``, every pass reading that one open
file. A CSV line over ``MAX_LINE_CHARS`` or a cell over the csv module's field limit rejects
its row, not the file.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import dataclasses
import datetime as dt
import errno
import hashlib
import io
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

from loader.filekind import HEAD_BYTES, SPREADSHEETS, NotAnExport, sniff

CHUNK = 1 << 20
XLSX_SUFFIXES = frozenset({".xlsx", ".xlsm"})
# Names ``watch`` picks up as exports; what a file is comes from its bytes all the same.
SPREADSHEET_SUFFIXES = frozenset({*XLSX_SUFFIXES, ".xlsb", ".xls", ".ods"})
REPLACEMENT = "\ufffd"
# The largest export read: a national staff export of 1,000,000 rows is about 106 MB, so
# this is ten of those; a bigger file is refused before a byte of it is read.
MAX_FILE_BYTES = 1 << 30
# The longest CSV line read into memory (a row is a few hundred characters); a longer one
# is skipped and its row rejected, so one line cannot take gigabytes.
MAX_LINE_CHARS = 1 << 20
# Stands for the cells of a row the csv module could not read (``Table.faults`` says why).
UNREADABLE_ROW = "(无法读取的行)"
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class FileFormatError(ValueError):
    """The file cannot be read as an export at all."""


def _what(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def _not_regular(path: Path, mode: int) -> FileFormatError:
    advice = (
        "the loader never reads through a link (copy or move the export itself there)"
        if stat.S_ISLNK(mode)
        else "the loader reads only regular files"
    )
    return FileFormatError(f"{path} is {_what(mode)}, not a regular file: {advice}")


def printable(text: str, limit: int = 200) -> str:
    """``text`` fit for a message: control and undecodable characters as ``?``, at most
    ``limit`` characters (a reader library's error may quote the bytes it choked on)."""
    clean = "".join(ch if ch.isprintable() and ch != REPLACEMENT else "?" for ch in text)
    return clean if len(clean) <= limit else clean[:limit] + "…"


class ExportFile:
    """An export opened once, safely: a regular file reached under its own name, no larger than
    ``MAX_FILE_BYTES``, its kind told by its bytes. Every pass (hash, decode, rows) reads this
    one open file, so the bytes hashed are the bytes loaded even if the name is replaced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            before = os.lstat(path)
        except FileNotFoundError:
            raise FileFormatError(f"{path}: no such file") from None
        if not stat.S_ISREG(before.st_mode):  # refused unopened: opening a device can act
            raise _not_regular(path, before.st_mode)
        try:
            self._fd = os.open(path, _OPEN_FLAGS)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # replaced by a link since the lstat
                raise _not_regular(path, stat.S_IFLNK) from None
            raise
        try:
            now = os.fstat(self._fd)
            if not stat.S_ISREG(now.st_mode):
                raise _not_regular(path, now.st_mode)
            self.size = now.st_size
            if self.size > MAX_FILE_BYTES:
                raise FileFormatError(
                    f"{path}: {self.size:,} bytes, over the loader's cap of {MAX_FILE_BYTES:,} "
                    "bytes per file; split the export"
                )
            with self.reader() as fh:
                try:
                    self.kind = sniff(fh.read(HEAD_BYTES), fh)
                except NotAnExport as exc:
                    raise FileFormatError(f"{path}: {exc}") from None
        except BaseException:
            os.close(self._fd)
            raise

    def reader(self) -> IO[bytes]:
        """A reader of the file from its first byte (passes run one after another: they share
        the file offset)."""
        fh = os.fdopen(os.dup(self._fd), "rb")
        fh.seek(0)
        return fh

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ExportFile:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_export(path: Path) -> ExportFile:
    """The export at ``path``, opened safely; FileFormatError names why it will not be read."""
    return ExportFile(path)


@contextlib.contextmanager
def _opened(source: Path | ExportFile) -> Iterator[ExportFile]:
    if isinstance(source, ExportFile):
        yield source
    else:
        with open_export(source) as export:
            yield export


@dataclass(frozen=True)
class FileFacts:
    """What one pass over the bytes tells: content hash, text encoding, whether it decodes."""

    sha256: str
    encoding: str
    clean: bool  # every byte decodes in ``encoding``
    # Some line may be over MAX_LINE_CHARS: rows are then read line by line with a cap.
    long_lines: bool = False


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
    # Rows (by line number) that cannot be read: undecodable bytes, or a cell too long for the
    # csv module (those in ``faults`` with the reason); filled while ``rows`` is consumed.
    damaged_rows: set[int] = field(default_factory=set)
    faults: dict[int, str] = field(default_factory=dict)

    def fault(self, line: int) -> str:
        """Why a row in ``damaged_rows`` was not read."""
        return self.faults.get(line) or f"含无法按 {self.encoding} 解码的字符"


def _decodes(export: ExportFile, encoding: str) -> bool:
    decoder = codecs.getincrementaldecoder(encoding)()
    with export.reader() as fh:
        try:
            while chunk := fh.read(CHUNK):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return False
    return True


def scan_file(source: Path | ExportFile) -> FileFacts:
    """sha256 and encoding of an export in one streaming pass (two for a damaged GBK file)."""
    with _opened(source) as export:
        return _scan(export)


def _scan(export: ExportFile) -> FileFacts:
    digest = hashlib.sha256()
    utf8 = codecs.getincrementaldecoder("utf-8")()
    valid_utf8 = export.kind not in SPREADSHEETS
    long_lines = False
    header = b""
    with export.reader() as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            if len(header) < 4096 and b"\n" not in header:
                header += chunk[:4096]
            # A whole chunk without a line end: some line may be over MAX_LINE_CHARS (one
            # twice as long always leaves such a chunk); two memchr calls per megabyte.
            if len(chunk) == CHUNK and b"\n" not in chunk and b"\r" not in chunk:
                long_lines = True
            if valid_utf8:
                try:
                    utf8.decode(chunk)
                except UnicodeDecodeError:
                    valid_utf8 = False
    if valid_utf8:
        try:
            utf8.decode(b"", final=True)
        except UnicodeDecodeError:
            valid_utf8 = False  # ends inside a character
    facts = _encoding(export, digest.hexdigest(), valid_utf8, header)
    return dataclasses.replace(facts, long_lines=True) if long_lines else facts


def _encoding(export: ExportFile, sha256: str, valid_utf8: bool, header: bytes) -> FileFacts:
    """The file's text encoding, told from a pass over its bytes."""
    if export.kind in SPREADSHEETS:
        return FileFacts(sha256, export.kind, clean=True)
    if valid_utf8:
        return FileFacts(sha256, _utf8_name(header), clean=True)
    if header.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return FileFacts(sha256, "utf-16", clean=_decodes(export, "utf-16"))
    first_line = header.split(b"\n", 1)[0]
    try:
        if not first_line.isascii() and first_line.decode("utf-8"):
            return FileFacts(sha256, _utf8_name(header), clean=False)
    except UnicodeDecodeError:
        pass
    return FileFacts(sha256, "gb18030", clean=_decodes(export, "gb18030"))


def _utf8_name(header: bytes) -> str:
    return "utf-8-sig" if header.startswith(codecs.BOM_UTF8) else "utf-8"


def _marking_damage(lines: Iterable[str], damaged: set[int]) -> Iterator[str]:
    """Pass lines through, noting the numbers of those with undecodable bytes."""
    for number, text in enumerate(lines, start=1):
        if REPLACEMENT in text:
            damaged.add(number)
        yield text


def _ends_line(piece: str) -> bool:
    return len(piece) < MAX_LINE_CHARS or piece[-1] in "\r\n"


def _capped_lines(fh: IO[str], damaged: set[int], long: set[int]) -> Iterator[str]:
    """Lines as csv reads them, none held longer than ``MAX_LINE_CHARS``: a longer one is read
    and dropped piece by piece, its number noted in ``long``, and stands as one
    ``UNREADABLE_ROW`` line (numbering goes on); undecodable lines are noted in ``damaged``."""
    number = 0
    while piece := fh.readline(MAX_LINE_CHARS):
        number += 1
        if not _ends_line(piece):
            while (piece := fh.readline(MAX_LINE_CHARS)) and not _ends_line(piece):
                pass
            long.add(number)
            yield UNREADABLE_ROW + "\n"
            continue
        if REPLACEMENT in piece:
            damaged.add(number)
        yield piece


def _csv_rows(
    path: Path, raw: IO[bytes], facts: FileFacts, table: Table, cursor: Cursor
) -> Iterator[tuple[int, list[str]]]:
    """Rows numbered by the physical line they start on (a quoted cell may span lines).

    A row the csv module cannot read — a cell over its field limit (131,072 characters, far
    beyond any real cell) or a line over ``MAX_LINE_CHARS`` (only then, as ``facts`` tells,
    are lines read one by one with that cap) — is yielded as ``UNREADABLE_ROW`` and marked in
    ``table``, so it is rejected on its own: the reader goes on at the next line. (A quoted cell that long spanning lines makes the lines after it up
    to its end read as rows of their own; they do not fit the header and are rejected too.)"""
    errors = "strict" if facts.clean else "replace"
    damaged_lines: set[int] = set()
    long_lines: set[int] = set()
    with io.TextIOWrapper(raw, encoding=facts.encoding, newline="", errors=errors) as fh:
        sample = fh.readline(MAX_LINE_CHARS)
        delimiter = "\t" if sample.count("\t") > sample.count(",") else ","
        fh.seek(0)
        cursor.follow(raw)
        lines: Iterable[str] = fh
        if facts.long_lines:
            lines = _capped_lines(fh, damaged_lines, long_lines)
        elif not facts.clean:
            lines = _marking_damage(fh, damaged_lines)
        reader = csv.reader(lines, delimiter=delimiter)
        start = 1
        while True:  # one turn per unreadable row: the plain loop costs nothing extra per row
            try:
                for row in reader:
                    end = reader.line_num
                    if damaged_lines and any(n in damaged_lines for n in range(start, end + 1)):
                        table.damaged_rows.add(start)
                    if long_lines and any(n in long_lines for n in range(start, end + 1)):
                        table.damaged_rows.add(start)
                        table.faults[start] = f"本行超过 {MAX_LINE_CHARS} 个字符（读取上限），整行未读"
                    yield start, row
                    start = end + 1
                return
            except UnicodeDecodeError as exc:
                raise FileFormatError(f"{path}: line {reader.line_num + 1}: {exc.reason}") from None
            except csv.Error as exc:
                table.damaged_rows.add(start)
                table.faults[start] = _unreadable(str(exc))
                yield start, [UNREADABLE_ROW]
                start = reader.line_num + 1


def _unreadable(error: str) -> str:
    if error.startswith("field larger than field limit"):
        return f"单元格超过 {csv.field_size_limit()} 个字符（读取上限），整行未读"
    return f"本行无法按 CSV 读取（{printable(error)}）"


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


_SPREADSHEET_NAMES = {
    "xlsx": "XLSX workbook",
    "xlsb": "XLSB workbook",
    "xls": "Excel 97-2003 (XLS) workbook",
    "ods": "OpenDocument (ODS) spreadsheet",
}


def _spreadsheet_rows(
    path: Path, raw: IO[bytes], kind: str, cursor: Cursor
) -> Iterator[tuple[int, list[str]]]:
    from python_calamine import CalamineError, CalamineWorkbook

    try:
        with raw:  # calamine tells the format from the bytes too, never from the name
            workbook = CalamineWorkbook.from_filelike(raw)
        sheet = workbook.get_sheet_by_index(0)
    except (CalamineError, ValueError, OSError) as exc:
        raise FileFormatError(
            f"{path}: not a readable {_SPREADSHEET_NAMES[kind]}: {printable(str(exc))}"
        ) from None
    with contextlib.closing(workbook):
        # calamine starts at the first used row; blank leading rows shift the numbering.
        first = (sheet.start or (0, 0))[0] + 1
        cursor.total = sheet.height
        for offset, row in enumerate(sheet.iter_rows()):
            cursor.done = offset
            yield first + offset, [_cell_text(v) for v in row]


def open_table(source: Path | ExportFile, facts: FileFacts | None = None) -> Table:
    """The header and rows of an export; FileFormatError if it has no readable header row.
    The rows read a reader of their own: ``source``, if an ``ExportFile``, may be closed."""
    with _opened(source) as export:
        path = export.path
        cursor = Cursor(export.size)
        table = Table([], iter(()), export.kind, export.kind, cursor)
        if export.kind in SPREADSHEETS:
            rows = _spreadsheet_rows(path, export.reader(), export.kind, cursor)
        else:
            facts = facts or _scan(export)
            table.encoding, table.format = facts.encoding, "csv"
            rows = _csv_rows(path, export.reader(), facts, table, cursor)
        for line, header in rows:
            if any(cell.strip() for cell in header):
                if line in table.faults or any(_is_control(ch) for cell in header for ch in cell):
                    raise FileFormatError(f"{path}: line {line}: the header row cannot be read")
                table.headers, table.rows = header, rows
                return table
        raise FileFormatError(f"{path}: the file is empty (no header row)")


def _is_control(ch: str) -> bool:
    return (ch < " " and ch not in "\t\r\n") or "\x7f" <= ch <= "\x9f"


def detect_encoding(path: Path) -> str:
    return scan_file(path).encoding
