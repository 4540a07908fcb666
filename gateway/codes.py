"""National code shapes (国家医保信息业务编码), validated before any lookup, and the one
canonical form of department codes.

A malformed code is a HIS mapping fault, not an unknown person: it gets its own reason so the
hospital fixes its mapping table instead of the agency chasing a ghost registration. Shapes
differ slightly by region, so both patterns are configuration with these defaults.

Codes are ASCII. Python's ``\\d`` matches any Unicode digit, so ``D３３０９…`` (full-width
digits, typed with a Chinese input method) would pass a naive shape and then match no record
ever published: every pattern is compiled with ``re.ASCII`` and behind a guard admitting only
printable ASCII, whatever the configured pattern says.

Department codes are free text typed at two ends (the agency's stop list, the hospital's
HIS), so ``a05``, ``Ａ05`` and ``A05`` followed by a zero-width space all mean ``A05``: both the
loader and the gateway compare them in ``canonical_department`` form only, so a department
stop cannot be slipped past by spelling.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Doctor D, nurse N, hospital pharmacist HY, technician HJ: 6-digit division + 6-digit sequence.
DEFAULT_STAFF_CODE_PATTERN = r"(?:D|N|HY|HJ)[0-9]{12}"
# Hospital H or retail pharmacy P: 11 digits.
DEFAULT_INSTITUTION_CODE_PATTERN = r"[HP][0-9]{11}"
# Whatever a region configures, a code is made of printable, non-blank ASCII characters.
_ASCII_GUARD = r"(?=[!-~]*\Z)"
# The longest code, id or med_type a request may carry (national codes are 13-20 characters).
MAX_FIELD_CHARS = 64


def compile_shape(pattern: str) -> re.Pattern[str]:
    """A full-match pattern that matches ASCII codes only (``\\d`` is [0-9], ``\\w`` ASCII)."""
    return re.compile(f"{_ASCII_GUARD}(?:{pattern})", re.ASCII)


@dataclass(frozen=True, slots=True)
class CodeShapes:
    """Compiled full-match patterns for staff and institution codes."""

    staff: re.Pattern[str]
    institution: re.Pattern[str]

    @classmethod
    def from_patterns(
        cls,
        staff: str = DEFAULT_STAFF_CODE_PATTERN,
        institution: str = DEFAULT_INSTITUTION_CODE_PATTERN,
    ) -> CodeShapes:
        try:
            return cls(compile_shape(staff), compile_shape(institution))
        except re.error as exc:
            raise ValueError(f"invalid code pattern: {exc}") from exc

    def is_staff_code(self, code: str) -> bool:
        return self.staff.fullmatch(code) is not None

    def is_institution_code(self, code: str) -> bool:
        return self.institution.fullmatch(code) is not None


DEFAULT_SHAPES = CodeShapes.from_patterns()

# Unicode categories nobody can see on a receipt: controls, format characters (zero-width
# space and joiners, BOM, soft hyphen…), separators (every kind of space, line, paragraph).
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})
_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _visible(text: str) -> str:
    return "".join(
        ch for ch in text if unicodedata.category(ch) not in _INVISIBLE_CATEGORIES and not ch.isspace()
    )


def canonical_department(code: str) -> str:
    """The one form department codes are stored and compared in: Unicode NFKC (full-width
    ``Ａ０５`` is ``A05``), without whitespace, control or invisible characters, ASCII letters
    upper-cased (other scripts are left as written). Empty when nothing visible is left."""
    if not code:
        return code
    if code.isascii() and code.isalnum():  # nearly every line: ``A05``, ``a05``
        return code.upper()
    return _visible(unicodedata.normalize("NFKC", code)).translate(_ASCII_UPPER)


# Canonical forms already computed: a bill repeats a handful of department codes, and the
# hot loop of a request should not normalise ``A03`` once per line. Bounded: emptied when full.
DEPARTMENT_FORMS: dict[str, str] = {}
_DEPARTMENT_FORMS_MAX = 4096


def canonical_department_cached(code: str) -> str:
    """``canonical_department``, memoised (the request parser calls it once per line)."""
    found = DEPARTMENT_FORMS.get(code)
    if found is None:
        if len(DEPARTMENT_FORMS) >= _DEPARTMENT_FORMS_MAX:
            DEPARTMENT_FORMS.clear()
        found = DEPARTMENT_FORMS[code] = canonical_department(code)
    return found


def is_blank(text: str) -> bool:
    """True when ``text`` holds nothing visible (empty, spaces, or only control and invisible
    characters such as a zero-width space): such an item code is a missing one."""
    if text.isprintable():  # no control or invisible character: only spaces can hide
        return not text.strip()
    return not _visible(text)
