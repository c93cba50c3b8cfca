"""The pool's free page runs: best fit from the bottom, top fit from the top, merged on release.

Runs are ``(start, count)`` in pages from the start of the pool. They are kept maximal: a
released run merges with its free neighbours at once, so after everything is released the
span is one run again.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

# Top fit picks the highest of this many runs that fit directly, and walks down from the
# top when more fit; best fit looks this many runs further for one below the top spans.
_FEW = 32


class PageRuns:
    """The free runs, by start and by end (to merge), by size (best fit), in order (top fit)."""

    __slots__ = ("at", "by_size", "ending", "starts")

    def __init__(self, pages: int) -> None:
        self.at: dict[int, int] = {}
        self.ending: dict[int, int] = {}
        self.by_size: list[tuple[int, int]] = []
        self.starts: list[int] = []
        if pages:
            self._insert(0, pages)

    def largest(self) -> int:
        """Pages in the longest free run (0 when nothing is free)."""
        by_size = self.by_size
        return by_size[-1][0] if by_size else 0

    def take_best(self, count: int, below: int | None = None) -> int | None:
        """The start of ``count`` pages carved from the bottom of the smallest run that fits.

        With ``below``, a run starting below that page is preferred among the first few that
        fit, so ordinary blocks stay out of the read-only spans packed at the top.
        """
        by_size = self.by_size
        slot = bisect.bisect_left(by_size, (count, -1))
        if slot == len(by_size):
            return None
        if below is not None and by_size[slot][1] >= below:
            for index in range(slot + 1, min(slot + _FEW, len(by_size))):
                if by_size[index][1] < below:
                    slot = index
                    break
        run, start = by_size[slot]
        self._remove(start, run)
        if run > count:
            self._insert(start + count, run - count)
        return start

    def take_top(self, count: int) -> int | None:
        """The start of ``count`` pages carved from the top of the highest run that fits."""
        by_size = self.by_size
        slot = bisect.bisect_left(by_size, (count, -1))
        fitting = len(by_size) - slot
        if fitting == 0:
            return None
        if fitting <= _FEW:
            start = max(s for _, s in by_size[slot:])
        else:
            at = self.at
            start = next(s for s in reversed(self.starts) if at[s] >= count)
        run = self.at[start]
        self._remove(start, run)
        if run > count:
            self._insert(start, run - count)
        return start + run - count

    def release(self, start: int, count: int) -> None:
        """Make ``count`` pages at ``start`` free, merged with the free runs either side."""
        end = start + count
        after = self.at.get(end)
        if after is not None:
            self._remove(end, after)
            end += after
        before = self.ending.get(start)
        if before is not None:
            self._remove(before, start - before)
            start = before
        self._insert(start, end - start)

    def contains(self, start: int, count: int) -> bool:
        """Whether the ``count`` pages at ``start`` all lie in one free run."""
        slot = bisect.bisect_right(self.starts, start) - 1
        if slot < 0:
            return False
        first = self.starts[slot]
        return first + self.at[first] >= start + count

    def largest_first(self) -> Iterator[tuple[int, int]]:
        """The runs as (start, count), longest first; the caller must not release meanwhile."""
        return ((start, count) for count, start in reversed(self.by_size))

    def _insert(self, start: int, count: int) -> None:
        self.at[start] = count
        self.ending[start + count] = start
        bisect.insort(self.by_size, (count, start))
        bisect.insort(self.starts, start)

    def _remove(self, start: int, count: int) -> None:
        del self.at[start]
        del self.ending[start + count]
        by_size = self.by_size
        del by_size[bisect.bisect_left(by_size, (count, start))]
        starts = self.starts
        del starts[bisect.bisect_left(starts, start)]
