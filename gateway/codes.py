"""National code shapes (国家医保信息业务编码), validated before any lookup.

A malformed code is a HIS mapping fault, not an unknown person: it gets its own reason so the
hospital fixes its mapping table instead of the agency chasing a ghost registration. Shapes
differ slightly by region, so both patterns are configuration with these defaults.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Doctor D, nurse N, hospital pharmacist HY, technician HJ: 6-digit division + 6-digit sequence.
DEFAULT_STAFF_CODE_PATTERN = r"(?:D|N|HY|HJ)\d{12}"
# Hospital H or retail pharmacy P: 11 digits.
DEFAULT_INSTITUTION_CODE_PATTERN = r"[HP]\d{11}"


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
            return cls(re.compile(staff), re.compile(institution))
        except re.error as exc:
            raise ValueError(f"invalid code pattern: {exc}") from exc

    def is_staff_code(self, code: str) -> bool:
        return self.staff.fullmatch(code) is not None

    def is_institution_code(self, code: str) -> bool:
        return self.institution.fullmatch(code) is not None


DEFAULT_SHAPES = CodeShapes.from_patterns()
