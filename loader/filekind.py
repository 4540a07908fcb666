"""What an export file is, told from its first bytes, never from its name.

A hospital renames files by hand: an XLSX saved as ``.xls``, a ``.csv`` that is really a
spreadsheet, a screenshot dropped in the export folder. Trusting the suffix read an XLSX as
GB18030 text and printed its compressed bytes as a header row. So the loader looks at the
magic numbers: a ZIP holding ``xl/workbook.xml`` (or ``.bin``) is an Office Open XML workbook,
a ZIP whose first member ``mimetype`` names an OpenDocument spreadsheet is ODS, an OLE2
compound file is an Excel 97-2003 workbook, and bytes free of NUL and control characters are
text (CSV/TXT in UTF-8, GB18030 or UTF-16 with a BOM). Anything else is refused by a name of
what it seems to be, never by quoting its bytes.
"""

from __future__ import annotations

import codecs
import zipfile
from typing import IO, Final

# How much of a file is looked at to call it text: enough for a header row and many rows.
HEAD_BYTES: Final = 64 * 1024
# The most a workbook may unpack to, by its ZIP directory: a sheet holds at most 1,048,576
# rows, a few hundred megabytes of XML; more is a ZIP bomb, refused before calamine would
# inflate it into memory.
MAX_UNPACKED_BYTES: Final = 2 << 30
# Spreadsheet formats python-calamine reads, by the name ``Table.format`` reports.
SPREADSHEETS: Final = frozenset({"xlsx", "xlsb", "xls", "ods"})

_ZIP = b"PK\x03\x04"
_OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ODS_MIMETYPE = b"mimetype" + b"application/vnd.oasis.opendocument.spreadsheet"
# Control bytes no text export holds (tab, LF, FF and CR excepted); GB18030 and UTF-8 never
# use them inside a multi-byte character, so they mean binary content.
_CONTROL: Final = frozenset(range(0x20)) - {0x09, 0x0A, 0x0C, 0x0D} | {0x7F}
# A text export may carry a stray control byte in a hand-edited cell (its row is then
# rejected); more than this share of them is binary.
_MAX_CONTROL_SHARE: Final = 0.01

_KNOWN_BINARY: Final = (
    (b"%PDF-", "a PDF document"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"BZh", "a bzip2 archive"),
    (b"\xfd7zXZ\x00", "an xz archive"),
    (b"\x7fELF", "an executable"),
    (b"MZ", "a Windows executable"),
    (b"SQLite format 3\x00", "an SQLite database"),
)


class NotAnExport(ValueError):
    """The bytes are not an export the loader reads; the message names what they seem to be."""


def sniff(head: bytes, file: IO[bytes] | None = None, max_unpacked: int = MAX_UNPACKED_BYTES) -> str:
    """``"csv"`` (text), ``"xlsx"``, ``"xlsb"``, ``"xls"`` or ``"ods"`` for the first bytes of a
    file (``HEAD_BYTES`` of them); ``file``, the whole file, lets a ZIP's directory be read
    (and a workbook unpacking to more than ``max_unpacked`` bytes be refused). NotAnExport
    for anything else."""
    if head.startswith(_ZIP):
        return _zip_kind(head, file, max_unpacked)
    if head.startswith(_OLE2):
        return "xls"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "csv"
    for magic, what in _KNOWN_BINARY:
        if head.startswith(magic) and not _is_text(head):
            raise NotAnExport(f"its bytes are {what}, not an export")
    if not _is_text(head):
        raise NotAnExport("its bytes are binary (NUL or control characters), not CSV or TXT text")
    return "csv"


def _is_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    controls = sum(1 for byte in head if byte in _CONTROL)
    return controls <= max(1, len(head) * _MAX_CONTROL_SHARE)


def _zip_kind(head: bytes, file: IO[bytes] | None, max_unpacked: int) -> str:
    names: set[str] = set()
    if file is not None:
        try:
            file.seek(0)
            with zipfile.ZipFile(file) as archive:  # reads the directory only
                members = archive.infolist()
        except (zipfile.BadZipFile, OSError, ValueError):
            raise NotAnExport("its bytes are a damaged ZIP archive, not a workbook") from None
        names = {member.filename for member in members}
        unpacked = sum(member.file_size for member in members)
        if unpacked > max_unpacked:
            raise NotAnExport(
                f"its bytes are a ZIP archive unpacking to {unpacked:,} bytes, over the cap of "
                f"{max_unpacked:,}: refused unpacked"
            )
    # OpenDocument puts an uncompressed ``mimetype`` member first, its content at byte 38.
    if head[30:84] == _ODS_MIMETYPE:
        return "ods"
    if "xl/workbook.xml" in names:
        return "xlsx"
    if "xl/workbook.bin" in names:
        return "xlsb"
    if "mimetype" in names and "content.xml" in names:
        return "ods"
    raise NotAnExport("its bytes are a ZIP archive that holds no spreadsheet, not an export")
