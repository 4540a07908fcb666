"""ID numbers in the loader's rejected-rows report are masked however they were typed."""

from __future__ import annotations

import pytest

from loader.report import mask_personal


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("330902198001011234", "330902**********34"),
        ("33090219800101123X", "330902**********3X"),
        ("ID 330902198001011234 typed here", "ID 330902**********34 typed here"),
        # Full-width digits (an IME left in full-width mode).
        ("３３０９０２１９８００１０１１２３４", "３３０９０２**********３４"),
        ("３３０９０２１９８００１０１１２３Ｘ", "３３０９０２**********３Ｘ"),
        # Spaced and hyphenated groups: separators kept, digits hidden.
        ("330902 19800101 1234", "330902 ******** **34"),
        ("330902-1980-0101-1234", "330902-****-****-**34"),
        ("３３０９０２　１９８００１０１　１２３４", "３３０９０２　********　**３４"),
    ],
)
def test_id_numbers_are_masked(value: str, masked: str) -> None:
    assert mask_personal(value) == masked


@pytest.mark.parametrize(
    "value",
    ["D330902000001", "1234567890123456789012", "330902000000000000", "2026-11-24", "H33090200017", ""],
)
def test_other_values_are_kept(value: str) -> None:
    assert mask_personal(value) == value
