"""The rejected-rows report: file, line (header = line 1), column, reason and the bad value.

CSV by default (``<input>.rejects.csv``, with a BOM so Excel opens it as UTF-8); JSON Lines
when the report path ends in ``.jsonl`` or ``.ndjson``, for scripts. A bad value that looks
like an ID number (an 18-character 证件号码 typed into the wrong column) is masked: the
report is for fixing the export, not a second copy of personal data.

The report sits beside a file that came from outside, so it is handled as hostile ground:

- A CSV cell a spreadsheet would evaluate as a formula (starting with ``=``, ``+``, ``-``,
  ``@``, tab or carriage return) gets a leading ``'``, as OWASP advises against CSV
  injection: Excel then shows the text instead of running ``=HYPERLINK(...)`` or a DDE call.
  JSON Lines stay verbatim (no spreadsheet opens them).
- A bad value is quoted up to ``MAX_VALUE_CHARS``: a 10 MB cell is not copied whole.
- It is written to a new file (``O_CREAT | O_EXCL | O_NOFOLLOW``) renamed into place, so a
  link or a second name planted at the report's path is never written through; and what
  is already there is replaced only if it is a previous report (its first line is this
  module's header), never an operator's file, a link, a FIFO or a directory.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import io
import os
import re
import secrets
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

import orjson

from loader.rows import RowError

FIELDS = ("file", "line", "column", "reason", "value")
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})
# A bad value is quoted up to this many characters, then ``…``.
MAX_VALUE_CHARS = 200
_ID_NUMBER = re.compile(r"\d{6}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])\d{5}[\dXx]")
# An ID number as typed into a spreadsheet: ASCII or full-width digits (０-９), groups split by
# spaces (ASCII or ideographic) or hyphens. Candidates are checked against ``_ID_NUMBER`` once
# their digits are made plain, so other long numbers are kept.
_DIGIT = "[0-9\uff10-\uff19]"
_SEPARATOR = "[ \u3000-]?"
_ID_LIKE = re.compile(
    f"(?<![0-9\uff10-\uff19]){_SEPARATOR.join([_DIGIT] * 17)}{_SEPARATOR}[0-9\uff10-\uff19XxＸｘ](?![0-9\uff10-\uff19])"
)
_PLAIN = str.maketrans("０１２３４５６７８９Ｘｘ", "0123456789Xx", " \u3000-")


def _mask_id(match: re.Match[str]) -> str:
    text = match.group()
    if not _ID_NUMBER.fullmatch(text.translate(_PLAIN)):
        return text
    out, seen = [], 0
    for ch in text:
        if ch in " \u3000-":
            out.append(ch)
            continue
        seen += 1
        out.append(ch if seen <= 6 or seen > 16 else "*")
    return "".join(out)


# OWASP, "CSV Injection": cells starting with these are evaluated by spreadsheet software.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# The first bytes of every report this module writes (CSV with a BOM, or a JSON object).
_CSV_HEADER = "\ufeff" + ",".join(FIELDS) + "\r\n"
_JSONL_HEAD = b'{"file":'


class ReportRefused(Exception):
    """The report's path holds something that is not a previous report: it is left alone."""


def mask_personal(value: str) -> str:
    """An ID number inside a cell becomes ``330902**********34`` (full-width digits and spaced
    groups alike, separators kept); anything else is kept."""
    return _ID_LIKE.sub(_mask_id, value)


def neutralise(cell: str) -> str:
    """A cell a spreadsheet would evaluate, made plain text by a leading ``'`` (OWASP)."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


def _quoted(value: str) -> str:
    value = mask_personal(value)
    return value if len(value) <= MAX_VALUE_CHARS else value[:MAX_VALUE_CHARS] + "…"


def default_path(source: Path) -> Path:
    return source.with_name(source.name + ".rejects.csv")


def _describe(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a file whose first line is not a rejects report's header"
    return "a special file (FIFO, device or socket)"


def is_previous_report(path: Path) -> bool:
    """Whether ``path`` is a regular file (not a link) that this module wrote."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return False
    with os.fdopen(fd, "rb") as fh:
        head = fh.read(len(_CSV_HEADER.encode()))
    return head == _CSV_HEADER.encode() or head.startswith(_JSONL_HEAD)


def _check_replaceable(path: Path) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not is_previous_report(path):
        raise ReportRefused(
            f"will not write the rejects report to {path}: it is {_describe(mode)}, not a previous "
            "report, and is left as it is (remove it, or give --report another path)"
        )


def _render(path: Path, source: Path, errors: Iterable[RowError]) -> bytes:
    if path.suffix.lower() in JSONL_SUFFIXES:
        return b"".join(
            orjson.dumps(
                dict(zip(FIELDS, (str(source), e.line, e.column, e.reason, _quoted(e.value)), strict=True))
            )
            + b"\n"
            for e in errors
        )
    out = io.StringIO()
    out.write(_CSV_HEADER)
    writer = csv.writer(out)
    name = neutralise(str(source))
    writer.writerows(
        (name, e.line, neutralise(e.column), neutralise(e.reason), neutralise(_quoted(e.value)))
        for e in errors
    )
    return out.getvalue().encode("utf-8")


def write(path: Path, source: Path, errors: Iterable[RowError]) -> None:
    """Write the report (format by suffix) to a new file renamed over ``path``; ReportRefused
    if ``path`` holds anything but a previous report."""
    _check_replaceable(path)
    data = _render(path, source, errors)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def remove_stale(path: Path) -> None:
    """Remove an earlier run's report at ``path``; anything else there is left alone."""
    if is_previous_report(path):
        path.unlink(missing_ok=True)


def by_reason(errors: Iterable[RowError]) -> Mapping[str, int]:
    """Counts per (column, reason), most frequent first, for the summary."""
    counts = collections.Counter(f"{e.column}: {e.reason}" for e in errors)
    return dict(counts.most_common())
