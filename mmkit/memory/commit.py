"""Which pages of the pool hold memory, and the commit and decommit calls that change that.

Each page is in one of three states:

- *uncommitted*: reserved and inaccessible; committing it makes it read-write and zero;
- *committed*: accessible, and zero whenever it is free (the pool zeroes what it frees);
- *unsettled*: its last decommit failed, so it may still be committed or may already be
  inaccessible. Such a page is never handed out, nor counted as committed, until a later
  decommit of it succeeds: using it could fault, trusting it to be zero could leak bytes.

Unsettled pages are always free: only free pages are decommitted, and a page is settled
before it is used.
"""

from __future__ import annotations

from collections.abc import Iterable

from mmkit.platform import PlatformError, VirtualMemory

UNCOMMITTED = 0
COMMITTED = 1
UNSETTLED = 2
_STATES = (UNCOMMITTED, COMMITTED, UNSETTLED)


def _first(state: bytearray, values: tuple[int, ...], start: int, end: int) -> int:
    """The first index from ``start`` to ``end`` whose state is one of ``values``, or ``end``."""
    first = end
    for value in values:
        found = state.find(value, start, first)
        if found != -1:
            first = found
    return first


def runs_of(
    state: bytearray, values: tuple[int, ...], start: int = 0, end: int | None = None
) -> list[tuple[int, int]]:
    """The maximal runs, as (start, end), of pages whose state is one of ``values``."""
    end = len(state) if end is None else end
    others = tuple(s for s in _STATES if s not in values)
    runs = []
    index = _first(state, values, start, end)
    while index < end:
        stop = _first(state, others, index, end)
        runs.append((index, stop))
        index = _first(state, values, stop, end)
    return runs


class CommitMap:
    """One state byte per page of the pool, and counts of committed and unsettled pages."""

    __slots__ = ("_base", "_page", "_vm", "committed", "state", "unsettled")

    def __init__(self, vm: VirtualMemory, base: int, pages: int, *, committed: bool) -> None:
        self._vm = vm
        self._base = base
        self._page = vm.page_size
        self.state = bytearray(bytes([COMMITTED]) * pages if committed else pages)
        self.committed = pages if committed else 0
        self.unsettled = 0

    def usable(self, start: int, count: int) -> bool:
        """Whether every one of the ``count`` pages at ``start`` is committed."""
        state, end = self.state, start + count
        return state.find(UNCOMMITTED, start, end) == -1 and state.find(UNSETTLED, start, end) == -1

    def prepare(self, start: int, count: int) -> bytes:
        """Commit the ``count`` pages at ``start``, decommitting unsettled ones first.

        Returns each page's state before, for undoing; a ``PlatformError`` commits nothing new.
        """
        state = self.state
        end = start + count
        if state.find(UNSETTLED, start, end) != -1:
            for first, stop in runs_of(state, (UNSETTLED,), start, end):
                error = self._decommit_run(first, stop)
                if error is not None:
                    raise error
        before = bytes(state[start:end])
        self._vm.commit(self._base + start * self._page, count * self._page)
        self.committed += before.count(UNCOMMITTED)
        state[start:end] = bytes([COMMITTED]) * count
        return before

    def decommit(self, start: int, count: int) -> None:
        """Decommit the committed pages among ``count`` free pages; failed ones become unsettled."""
        for first, stop in runs_of(self.state, (COMMITTED,), start, start + count):
            if self._decommit_run(first, stop) is not None:
                return

    def trim(self, runs: Iterable[tuple[int, int]], pages: int) -> None:
        """Decommit committed pages of the free ``runs``, in order, until ``pages`` are given back.

        Stops at the first failed decommit, whose pages are unsettled from then.
        """
        for start, count in runs:
            for first, stop in runs_of(self.state, (COMMITTED,), start, start + count):
                if self._decommit_run(first, stop) is not None:
                    return
                pages -= stop - first
                if pages <= 0:
                    return

    def settle(self) -> None:
        """Decommit the unsettled pages again; those whose decommit succeeds are uncommitted."""
        for first, stop in runs_of(self.state, (UNSETTLED,)):
            self._decommit_run(first, stop)

    def held_spans(self) -> list[tuple[int, int]]:
        """The runs that are or may be committed, as (address, size), for giving back at close."""
        base, page = self._base, self._page
        return [
            (base + first * page, (stop - first) * page)
            for first, stop in runs_of(self.state, (COMMITTED, UNSETTLED))
        ]

    def _decommit_run(self, start: int, end: int) -> PlatformError | None:
        """Decommit the pages ``start`` to ``end``, all in one state; the OS's refusal, if any."""
        state = self.state
        count = end - start
        was = state[start]
        try:
            self._vm.decommit(self._base + start * self._page, count * self._page)
        except PlatformError as exc:
            if was == COMMITTED:
                self.committed -= count
                self.unsettled += count
                state[start:end] = bytes([UNSETTLED]) * count
            return exc
        if was == COMMITTED:
            self.committed -= count
        else:
            self.unsettled -= count
        state[start:end] = bytes(count)
        return None
