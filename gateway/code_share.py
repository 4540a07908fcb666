"""How much of an institution's recent lines each staff code ordered, in bounded memory.

A known HIS habit is a hard-coded fallback doctor code sent whenever the local mapping is
missing, and borrowing a colleague's code is punished (001 §四(三)4): either way one code
turns up on a large share of a hospital's lines. Keeping a counter per code forever would
grow without bound, so each institution keeps only its last ``window`` lines (as
per-request batches, so the hot path does one append per request, not per line) and
reports the busiest codes of that window.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class WindowSummary:
    """One institution's window: how many lines, how many distinct codes, the busiest ones."""

    lines: int
    distinct_codes: int
    # (code, lines) for the busiest codes, busiest first.
    top: tuple[tuple[str, int], ...]


@dataclass(slots=True)
class _Window:
    batches: deque[tuple[tuple[tuple[str, int], ...], int]] = field(default_factory=deque)
    by_code: dict[str, int] = field(default_factory=dict)
    lines: int = 0


class CodeShareTracker:
    """Staff-code counts over each institution's most recent lines.

    ``add`` is called once per request with that request's per-code counts. Whole requests
    are dropped, oldest first, as long as at least ``window`` lines remain, so a window
    holds at least ``window`` lines (once that many arrived) and less than ``window`` plus
    one request.
    """

    def __init__(self, window: int, top: int) -> None:
        if window <= 0 or top <= 0:
            raise ValueError("window and top must be positive")
        self.window = window
        self.top = top
        self._windows: dict[str, _Window] = {}

    def add(self, institution: str, codes: Mapping[str, int], lines: int) -> None:
        """Record one request: ``lines`` lines, of which ``codes[c]`` carried code ``c``
        (lines without a code count in ``lines`` only)."""
        win = self._windows.get(institution)
        if win is None:
            win = self._windows[institution] = _Window()
        batch = tuple(codes.items())
        by_code = win.by_code
        for code, n in batch:
            by_code[code] = by_code.get(code, 0) + n
        win.batches.append((batch, lines))
        win.lines += lines
        while win.lines - win.batches[0][1] >= self.window:
            old, old_lines = win.batches.popleft()
            win.lines -= old_lines
            for code, n in old:
                left = by_code[code] - n
                if left:
                    by_code[code] = left
                else:
                    del by_code[code]

    def summaries(self) -> dict[str, WindowSummary]:
        """Every institution's window, for the scrape (O(distinct codes) each)."""
        out: dict[str, WindowSummary] = {}
        for institution, win in list(self._windows.items()):
            by_code = dict(win.by_code)
            top = sorted(by_code.items(), key=lambda item: (-item[1], item[0]))[: self.top]
            out[institution] = WindowSummary(win.lines, len(by_code), tuple(top))
        return out
