"""Code shapes are ASCII; department codes have one canonical form (CONTRACT §4)."""

from __future__ import annotations

import pytest

from gateway.codes import DEFAULT_SHAPES, CodeShapes, canonical_department, is_blank


@pytest.mark.parametrize(
    "code",
    [
        "D３３０９０２００１２３４",  # full-width digits, as a Chinese input method types them
        "D٣٣٠٩٠٢٠٠١٢٣٤",  # Arabic-Indic digits
        "Ｄ330902001234",  # full-width letter
        "D330902001234\u200b",  # a zero-width space after a good code
    ],
)
def test_staff_shape_matches_ascii_only(code: str) -> None:
    assert not DEFAULT_SHAPES.is_staff_code(code)
    assert DEFAULT_SHAPES.is_staff_code("D330902001234")


def test_institution_shape_matches_ascii_only() -> None:
    assert DEFAULT_SHAPES.is_institution_code("H33090200017")
    assert not DEFAULT_SHAPES.is_institution_code("H３３０９０２０００１７")


def test_a_configured_pattern_is_ascii_too() -> None:
    """A region's own pattern with ``\\d`` or ``.`` still admits ASCII only."""
    shapes = CodeShapes.from_patterns(staff=r"D\d{12}", institution=r"H.{11}")
    assert shapes.is_staff_code("D330902001234")
    assert not shapes.is_staff_code("D３３０９０２００１２３４")
    assert shapes.is_institution_code("H33090200017")
    assert not shapes.is_institution_code("H３３０９０２０００１７")
    assert not shapes.is_institution_code("H3309020001 ")


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("A05", "A05"),
        ("a05", "A05"),
        ("Ａ05", "A05"),  # full-width letter
        ("Ａ０５", "A05"),
        ("A05\u200b", "A05"),  # zero-width space
        ("\ufeffA05", "A05"),  # byte-order mark
        ("A\u200d05", "A05"),  # zero-width joiner inside
        (" A05\t", "A05"),
        ("A05\u3000", "A05"),  # ideographic space
        ("A05\x00", "A05"),
        ("a-05", "A-05"),
        ("内科01", "内科01"),  # other scripts are kept as written
        ("\u200b", ""),
        ("", ""),
    ],
)
def test_canonical_department(raw: str, canonical: str) -> None:
    assert canonical_department(raw) == canonical
    assert canonical_department(canonical) == canonical  # idempotent


@pytest.mark.parametrize(
    ("text", "blank"),
    [
        ("", True),
        ("   ", True),
        ("\u200b", True),
        ("\u200b\u2060\ufeff", True),
        ("\x00\x01", True),
        ("\u3000", True),
        ("XA01", False),
        ("XA01\u200b", False),
        (" 甲 ", False),
    ],
)
def test_is_blank(text: str, blank: bool) -> None:
    assert is_blank(text) is blank
