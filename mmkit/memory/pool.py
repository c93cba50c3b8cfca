"""The pool allocator: dynamic blocks inside the budget, committed as they are needed.

Two levels, as in most general-purpose allocators:

- *pages* (``pages``): best fit over free page runs, merged with their free neighbours as
  they are released, so after everything is freed the pool is one free run again;
- *slabs* (``slabs``): blocks smaller than a page come from slabs carved into one size
  class each, popped from and pushed onto a free list in O(1).

Size classes below a page step by 1/8 of each power of two, so a block wastes at most 1/9
of itself on rounding; blocks of a page or more are whole, page-aligned pages. Spans the
caller will make read-only (layer copies) are placed from the top of the pool down, away
from ordinary blocks, so neighbouring copies share one kernel mapping.

Physical memory follows use (``commit``): pages are committed when a block first needs
them, freed blocks are zeroed (so no owner ever sees another's bytes), and free pages beyond
a small retained amount are decommitted, which gives their memory back to the OS.
"""

from __future__ import annotations

import bisect
import ctypes
import functools
from dataclasses import dataclass

from mmkit.memory.commit import CommitMap
from mmkit.memory.pages import PageRuns
from mmkit.memory.slabs import SLAB_BYTES, Slab, Slabs
from mmkit.memory.views import scratch_view
from mmkit.platform import PlatformError, VirtualMemory, align_up
from mmkit.values.errors import LimitExceeded, from_os_error
from mmkit.values.units import MiB, format_size

ALIGNMENT = 16
RETAINED_BYTES = 8 * MiB
QUICK_PAGES = 4
QUICK_DEPTH = 32


@functools.cache
def class_table(page_size: int) -> tuple[int, ...]:
    """For each multiple of 16 bytes up to the largest class: the index of its size class."""
    classes = size_classes(page_size)
    table = []
    klass = 0
    for units in range(classes[-1] // ALIGNMENT + 1):
        while classes[klass] < units * ALIGNMENT:
            klass += 1
        table.append(klass)
    return tuple(table)


@functools.cache
def size_classes(page_size: int) -> tuple[int, ...]:
    """Block sizes below a page: multiples of 16 to 128, then 8 steps per power of two."""
    classes = list(range(ALIGNMENT, 129, ALIGNMENT))
    power = 128
    while power < page_size:
        step = power // 8
        classes.extend(range(power + step, min(2 * power, page_size - 1) + 1, step))
        power *= 2
    return tuple(c for c in classes if c < page_size)


@dataclass(frozen=True, slots=True)
class PoolStats:
    """The pool's accounting. ``used + free == capacity`` always holds."""

    capacity: int
    used: int
    free: int
    largest_free: int
    committed: int
    block_bytes: int
    blocks: int

    @property
    def fragmentation(self) -> float:
        """1 − largest free run / free bytes: 0 when the free space is one run."""
        return 0.0 if self.free == 0 else 1.0 - self.largest_free / self.free


class PoolAllocator:
    """Hands out ``(address, size)`` spans of one region of a reservation.

    Not thread-safe by itself: the manager calls it under its write lock.
    """

    def __init__(
        self, vm: VirtualMemory, base: int, capacity: int, *, committed: bool = False
    ) -> None:
        page = vm.page_size
        if base % page or capacity % page:
            raise ValueError("the pool must be whole pages")
        self._page = page
        self._base = base
        self._capacity = capacity
        self._pages = capacity // page
        self._retained = RETAINED_BYTES // page
        self._classes = size_classes(page)
        self._largest_class = self._classes[-1]
        self._class_of = class_table(page)
        # A slab is at most an eighth of the pool, so a small pool still has room for blocks.
        self._slab_pages = max(1, min(max(SLAB_BYTES, page) // page, self._pages // 8))
        self._runs = PageRuns(self._pages)
        self._commits = CommitMap(vm, base, self._pages, committed=committed)
        self._slabs = Slabs(len(self._classes))
        self._partial = self._slabs.partial
        self._memory = scratch_view(base, capacity) if capacity else memoryview(b"")
        # Its own: threads that slice one memoryview at once lose its export counts on
        # free-threaded CPython (gh-127716), and each pool is used under its own lock.
        self._zeros = memoryview(bytes(SLAB_BYTES))
        self._large: dict[int, int] = {}
        self._readonly: dict[int, int] = {}
        self._readonly_pages: list[int] = []  # the first page of each, in order
        self._used_pages = 0
        self._undo: tuple[int, bytes] | None = None
        self._quick: list[list[int]] = [[] for _ in range(QUICK_PAGES + 1)]
        self._quick_pages = 0
        self._block_bytes = 0
        self._blocks = 0

    # -- public -----------------------------------------------------------------------

    def block_size(self, nbytes: int) -> int:
        """The size of the block that a request of ``nbytes`` gets."""
        if nbytes <= self._largest_class:
            return self._classes[self._class_of[(nbytes + ALIGNMENT - 1) // ALIGNMENT]]
        return align_up(nbytes, self._page)

    def allocate(self, nbytes: int) -> tuple[int, int]:
        """A zeroed block of at least ``nbytes``; ``LimitExceeded`` when none fits."""
        if nbytes <= 0:
            raise ValueError("a block must have a positive size")
        if nbytes <= self._largest_class:
            klass = self._class_of[(nbytes + ALIGNMENT - 1) // ALIGNMENT]
            partial = self._partial[klass]
            self._undo = None
            slab = partial[-1] if partial else self._new_slab(klass, nbytes)
            if slab.live == 0 and slab.fresh:
                self._slabs.empty -= 1
            address = slab.take()
            if slab.live == slab.capacity:
                partial.pop()
            size = slab.item
        else:
            size = align_up(nbytes, self._page)
            count = size // self._page
            quick = self._quick[count] if count <= QUICK_PAGES else None
            if quick:
                address = self._base + quick.pop() * self._page
                self._quick_pages -= count
                self._used_pages += count
                self._undo = None
            else:
                address = self._allocate_pages(count, nbytes, top=False)
            self._large[address] = size
        self._block_bytes += size
        self._blocks += 1
        return address, size

    def allocate_readonly(self, nbytes: int) -> tuple[int, int]:
        """Zeroed whole pages for a span the caller will make read-only (a layer copy).

        Carved from the top of the highest free run that fits, so such spans share mappings.
        """
        if nbytes <= 0:
            raise ValueError("a block must have a positive size")
        size = align_up(nbytes, self._page)
        address = self._allocate_pages(size // self._page, nbytes, top=True)
        self._readonly[address] = size
        bisect.insort(self._readonly_pages, (address - self._base) // self._page)
        self._block_bytes += size
        self._blocks += 1
        return address, size

    def free(self, address: int) -> None:
        """Give a block back. The caller guarantees it is live, writable and unreachable."""
        self._release(address, cache=True)
        if self._commits.committed - self._used_pages > self._retained:
            self._trim()

    def rollback(self, address: int) -> None:
        """Undo the allocation just made at ``address``, commit included: the pool ends as before.

        Pages whose decommit fails are left unsettled (see ``commit``) for ``retry``.
        """
        undo = self._undo
        self._undo = None
        small = address not in self._large and address not in self._readonly
        slab = self._slabs.of_page[(address - self._base) // self._page] if small else None
        self._release(address, cache=False)
        if undo is None:
            return
        made = slab is not None and slab.first == undo[0]
        if made and slab is not None and self._slabs.of_page.get(slab.first) is slab:
            self._slabs.empty -= 1  # the slab this allocation made, kept empty for reuse
            self._release_slab(slab)
        start, before = undo
        index = before.find(0)
        while index != -1:
            end = before.find(1, index)
            end = len(before) if end == -1 else end
            first, count = start + index, end - index
            if self._runs.contains(first, count) and self._commits.usable(first, count):
                self._commits.decommit(first, count)
            index = before.find(0, end)

    def retry(self) -> None:
        """Decommit again the pages whose last decommit failed."""
        self._commits.settle()

    @property
    def pending(self) -> bool:
        """Whether some pages are unsettled: ``retry`` has work to do."""
        return self._commits.unsettled > 0

    def stats(self) -> PoolStats:
        """The accounting, with the caches (empty slabs, recently freed runs) counted as free."""
        page = self._page
        cached = sum(slab.pages for slab in self._slabs.empties())
        used = self._used_pages - cached
        return PoolStats(
            capacity=self._capacity,
            used=used * page,
            free=(self._pages - used) * page,
            largest_free=self._largest_free_run() * page,
            committed=self._commits.committed * page,
            block_bytes=self._block_bytes,
            blocks=self._blocks,
        )

    def committed_spans(self) -> list[tuple[int, int]]:
        """The page runs that are or may be committed, as (address, size), for release at close."""
        return self._commits.held_spans()

    def _release(self, address: int, *, cache: bool) -> None:
        """Take a block back: zeroed, then cached for reuse (``cache``) or made free pages."""
        size = self._large.pop(address, None)
        if size is not None:
            self._free_pages(address, size // self._page, cache=cache)
        elif address in self._readonly:
            size = self._readonly.pop(address)
            first = self._readonly_pages
            del first[bisect.bisect_left(first, (address - self._base) // self._page)]
            self._free_pages(address, size // self._page, cache=False)
        else:
            slab = self._slabs.of_page[(address - self._base) // self._page]
            size = slab.item
            self._zero(address, size)
            if self._slabs.put_back(slab, address):
                self._release_slab(slab)
        self._block_bytes -= size
        self._blocks -= 1

    # -- slabs and caches ---------------------------------------------------------------

    def _new_slab(self, klass: int, nbytes: int) -> Slab:
        """A slab for ``klass``: of the usual size, or as long as the longest free run."""
        pages = self._slab_pages
        runs = self._runs
        if runs.largest() < pages:
            largest = self._largest_free_run()
            if largest > runs.largest():
                self._flush_caches()
            pages = min(pages, largest)
            if pages == 0:
                raise self._exhausted(nbytes, self._classes[klass])
        base = self._allocate_pages(pages, nbytes, top=False)
        first = (base - self._base) // self._page
        slab = Slab(base, first, pages, self._classes[klass], klass, page=self._page)
        self._slabs.add(slab)
        return slab

    def _release_slab(self, slab: Slab) -> None:
        self._slabs.remove(slab)
        self._used_pages -= slab.pages
        self._runs.release(slab.first, slab.pages)

    def _largest_free_run(self) -> int:
        """The longest free run, counting what the caches hold as given back (as they would be)."""
        empties = self._slabs.empties()
        if not empties and not self._quick_pages:
            return self._runs.largest()
        runs = dict(self._runs.at)
        for slab in empties:
            runs[slab.first] = slab.pages
        for count, starts in enumerate(self._quick):
            for start in starts:
                runs[start] = count
        largest = 0
        for start in sorted(runs):
            if start not in runs:
                continue  # merged into the run before it
            count = runs[start]
            end = start + count
            while end in runs:
                count += runs.pop(end)
                end = start + count
            largest = max(largest, count)
        return largest

    def _flush_caches(self) -> None:
        """Give the cached empty slabs and recently freed runs back to the free runs."""
        for slab in self._slabs.empties():
            self._release_slab(slab)
        self._slabs.empty = 0
        for count, starts in enumerate(self._quick):
            while starts:
                self._runs.release(starts.pop(), count)
        self._quick_pages = 0

    # -- pages ----------------------------------------------------------------------

    def _allocate_pages(self, count: int, nbytes: int, *, top: bool) -> int:
        """``count`` committed, zeroed pages: best fit from the bottom, or from the top."""
        start = self._take(count, top=top)
        if start is None:
            if self._largest_free_run() < count:
                raise self._exhausted(nbytes, count * self._page)
            self._flush_caches()
            start = self._take(count, top=top)
            assert start is not None
        self._undo = None
        if not self._commits.usable(start, count):
            try:
                before = self._commits.prepare(start, count)
            except PlatformError as exc:
                self._runs.release(start, count)
                raise from_os_error(
                    exc, f"committing {format_size(count * self._page)} of pool"
                ) from None
            self._undo = (start, before)
        self._used_pages += count
        return self._base + start * self._page

    def _take(self, count: int, *, top: bool) -> int | None:
        """A free run of ``count`` pages taken out of the free runs, or None if none fits."""
        if top:
            return self._runs.take_top(count)
        floor = self._readonly_pages[0] if self._readonly_pages else None
        return self._runs.take_best(count, floor)

    def _zero(self, address: int, size: int) -> None:
        if size <= SLAB_BYTES:
            offset = address - self._base
            self._memory[offset : offset + size] = self._zeros[:size]
        else:
            ctypes.memset(address, 0, size)

    def _free_pages(self, address: int, count: int, *, cache: bool) -> None:
        self._zero(address, count * self._page)
        self._used_pages -= count
        start = (address - self._base) // self._page
        if cache and count <= QUICK_PAGES and len(self._quick[count]) < QUICK_DEPTH:
            self._quick[count].append(start)
            self._quick_pages += count
            return
        self._runs.release(start, count)

    def _trim(self) -> None:
        """Decommit free pages, largest runs first, down to half the retained amount."""
        idle = self._commits.committed - self._used_pages
        self._commits.trim(self._runs.largest_first(), idle - self._retained // 2)

    def _exhausted(self, nbytes: int, size: int) -> LimitExceeded:
        """The error for a request of a ``size`` block that no free span can hold."""
        stats = self.stats()
        if size < self._page:
            needs = f"a {size}-byte block, from a new slab of at least one {self._page}-byte page"
        else:
            needs = f"a block of {size} bytes"
        return LimitExceeded(
            f"the pool cannot hold {nbytes} bytes ({needs}): "
            f"{stats.free} bytes free, the largest free span is {stats.largest_free} bytes, "
            f"capacity {stats.capacity}"
        )
