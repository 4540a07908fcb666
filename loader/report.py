"""The rejected-rows report: file, line (header = line 1), column, reason and the bad value.

CSV by default (``<input>.rejects.csv``, with a BOM so Excel opens it as UTF-8); JSON Lines
when the report path ends in ``.jsonl`` or ``.ndjson``, for scripts. A bad value that looks
like an ID number (an 18-character 证件号码 typed into the wrong column) is masked: the
report is for fixing the export, not a second copy of personal data.
"""

from __future__ import annotations

import collections
import csv
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import orjson

from loader.rows import RowError

FIELDS = ("file", "line", "column", "reason", "value")
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})
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


def mask_personal(value: str) -> str:
    """An ID number inside a cell becomes ``330902**********34`` (full-width digits and spaced
    groups alike, separators kept); anything else is kept."""
    return _ID_LIKE.sub(_mask_id, value)


def default_path(source: Path) -> Path:
    return source.with_name(source.name + ".rejects.csv")


def write(path: Path, source: Path, errors: Iterable[RowError]) -> None:
    """Write the report (format by suffix); the previous report of that path is replaced."""
    rows = ((str(source), e.line, e.column, e.reason, mask_personal(e.value)) for e in errors)
    if path.suffix.lower() in JSONL_SUFFIXES:
        with path.open("wb") as fh:
            for row in rows:
                fh.write(orjson.dumps(dict(zip(FIELDS, row, strict=True))) + b"\n")
        return
    with path.open("w", encoding="utf-8-sig", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(FIELDS)
        writer.writerows(rows)


def by_reason(errors: Iterable[RowError]) -> Mapping[str, int]:
    """Counts per (column, reason), most frequent first, for the summary."""
    counts = collections.Counter(f"{e.column}: {e.reason}" for e in errors)
    return dict(counts.most_common())
