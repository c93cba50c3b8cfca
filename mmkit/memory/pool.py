"""The pool allocator: dynamic blocks inside the budget, committed as they are needed.

Two levels, as in most general-purpose allocators:

- *pages*: best-fit over free page runs, kept by size (for the fit) and by both ends (so a
  freed run merges with its free neighbours at once); after everything is freed the pool
  is one free run again;
- *slabs*: blocks smaller than a page come from 64 KiB slabs carved into one size class
  each, popped from and pushed onto a free list in O(1).

Size classes below a page step by 1/8 of each power of two, so a block wastes at most 1/9
of itself on rounding; blocks of a page or more are whole, page-aligned pages.

Physical memory follows use: pages are committed when a block first needs them, freed
blocks are zeroed (so no owner ever sees another's bytes), and free pages beyond a small
retained amount are decommitted, which gives their memory back to the OS.
"""

from __future__ import annotations

import bisect
import ctypes
import functools
from dataclasses import dataclass

from mmkit.memory.views import scratch_view
from mmkit.platform import PlatformError, VirtualMemory, align_up
from mmkit.values.errors import LimitExceeded, from_os_error
from mmkit.values.units import MiB, format_size

ALIGNMENT = 16
SLAB_BYTES = 64 * 1024
RETAINED_BYTES = 8 * MiB
QUICK_PAGES = 4
QUICK_DEPTH = 32
_ZEROS = memoryview(bytes(SLAB_BYTES))


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


class _Slab:
    """One slab: a run of pages cut into items of one size class.

    Items never handed out are taken in address order (``fresh``); freed ones are reused
    first, last in first out (``free``), so making a slab costs nothing per item.
    """

    __slots__ = ("base", "capacity", "free", "fresh", "item", "klass", "live", "pages")

    def __init__(self, base: int, pages: int, item: int, klass: int, capacity: int) -> None:
        self.base = base
        self.pages = pages
        self.item = item
        self.klass = klass
        self.capacity = capacity
        self.free: list[int] = []
        self.fresh = 0
        self.live = 0

    def take(self) -> int:
        self.live += 1
        if self.free:
            return self.free.pop()
        address = self.base + self.fresh * self.item
        self.fresh += 1
        return address

    @property
    def full(self) -> bool:
        return self.live == self.capacity


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
        self._vm = vm
        self._page = page
        self._base = base
        self._capacity = capacity
        self._pages = capacity // page
        self._classes = size_classes(page)
        self._class_of = class_table(page)
        # A slab is at most an eighth of the pool, so a small pool still has room for blocks.
        self._slab_pages = max(1, min(max(SLAB_BYTES, page) // page, self._pages // 8))
        self._free_at: dict[int, int] = {}
        self._free_ending: dict[int, int] = {}
        self._by_size: list[tuple[int, int]] = []
        self._memory = scratch_view(base, capacity) if capacity else memoryview(b"")
        self._committed = bytearray(b"\x01" * self._pages if committed else self._pages)
        self._committed_pages = self._pages if committed else 0
        self._large: dict[int, int] = {}
        self._slab_of_page: dict[int, _Slab] = {}
        self._partial: list[list[_Slab]] = [[] for _ in self._classes]
        self._used_pages = 0
        self._empty_slabs = 0
        self._undo: tuple[int, bytes] | None = None
        self._quick: list[list[int]] = [[] for _ in range(QUICK_PAGES + 1)]
        self._quick_pages = 0
        self._pending: list[tuple[int, int]] = []
        self._block_bytes = 0
        self._blocks = 0
        if self._pages:
            self._insert_free(0, self._pages)

    # -- public -----------------------------------------------------------------------

    def block_size(self, nbytes: int) -> int:
        """The size of the block that a request of ``nbytes`` gets."""
        if nbytes < self._page and nbytes <= self._classes[-1]:
            return self._classes[self._class_of[(nbytes + ALIGNMENT - 1) // ALIGNMENT]]
        return align_up(nbytes, self._page)

    def allocate(self, nbytes: int) -> tuple[int, int]:
        """A zeroed block of at least ``nbytes``; ``LimitExceeded`` when none fits."""
        if nbytes <= 0:
            raise ValueError("a block must have a positive size")
        if nbytes <= self._classes[-1]:
            klass = self._class_of[(nbytes + ALIGNMENT - 1) // ALIGNMENT]
            address = self._allocate_small(klass, nbytes)
            size = self._classes[klass]
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
                address = self._allocate_pages(count, nbytes)
            self._large[address] = size
        self._block_bytes += size
        self._blocks += 1
        return address, size

    def allocate_readonly(self, nbytes: int) -> tuple[int, int]:
        return self.allocate(nbytes)

    def free(self, address: int, *, cache: bool = True) -> None:
        """Give a block back. The caller guarantees it is live and nothing can reach it."""
        size = self._large.pop(address, None)
        if size is not None:
            self._free_pages(address, size // self._page, cache=cache)
        else:
            slab = self._slab_of_page[(address - self._base) // self._page]
            size = slab.item
            self._zero(address, size)
            self._free_small(slab, address)
        self._block_bytes -= size
        self._blocks -= 1
        self._trim()

    def rollback(self, address: int) -> None:
        """Undo the allocation just made at ``address``, its commit included.

        For a caller whose next step failed: the pool ends exactly as it was before.
        """
        undo = self._undo
        self._undo = None
        self.free(address, cache=False)
        if undo is None:
            return
        start, before = undo
        index = before.find(0)
        while index != -1:
            end = before.find(1, index)
            end = len(before) if end == -1 else end
            self._pending.append((start + index, end - index))
            index = before.find(0, end)
        self.retry()

    def retry(self) -> None:
        """Decommit the spans a rollback could not, if they are still free and committed."""
        pending, self._pending = self._pending, []
        for first, count in pending:
            free_run = self._free_ending.get(first + count)
            inside = free_run is not None and free_run <= first
            inside = inside or any(
                s <= first and first + count <= s + n for s, n in self._free_at.items()
            )
            if not inside or self._committed.count(1, first, first + count) != count:
                continue
            try:
                self._vm.decommit(self._base + first * self._page, count * self._page)
            except PlatformError:
                self._pending.append((first, count))
                continue
            self._committed[first : first + count] = bytes(count)
            self._committed_pages -= count

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def stats(self) -> PoolStats:
        """The accounting, with the caches (empty slabs, recently freed runs) counted as free."""
        page = self._page
        cached = sum(s.pages for partial in self._partial for s in partial if s.live == 0)
        used = self._used_pages - cached
        largest = self._largest_free_run()
        return PoolStats(
            capacity=self._capacity,
            used=used * page,
            free=(self._pages - used) * page,
            largest_free=largest * page,
            committed=self._committed_pages * page,
            block_bytes=self._block_bytes,
            blocks=self._blocks,
        )

    def committed_spans(self) -> list[tuple[int, int]]:
        """The committed page runs, as (address, size), for releasing at close."""
        spans = []
        index = self._committed.find(1)
        while index != -1:
            end = self._committed.find(0, index)
            end = self._pages if end == -1 else end
            spans.append((self._base + index * self._page, (end - index) * self._page))
            index = self._committed.find(1, end)
        return spans

    # -- small blocks -------------------------------------------------------------------

    def _allocate_small(self, klass: int, nbytes: int) -> int:
        partial = self._partial[klass]
        if not partial:
            item = self._classes[klass]
            pages = self._slab_pages
            base = self._allocate_pages(pages, nbytes)
            slab = _Slab(base, pages, item, klass, pages * self._page // item)
            first = (base - self._base) // self._page
            for index in range(first, first + pages):
                self._slab_of_page[index] = slab
            partial.append(slab)
        slab = partial[-1]
        if slab.live == 0 and slab.fresh:
            self._empty_slabs -= 1
        address = slab.take()
        if slab.full:
            partial.pop()
        return address

    def _free_small(self, slab: _Slab, address: int) -> None:
        partial = self._partial[slab.klass]
        if slab.full:
            partial.append(slab)
        slab.free.append(address)
        slab.live -= 1
        if slab.live == 0:
            if len(partial) > 1:
                self._release_slab(slab)
            else:
                self._empty_slabs += 1

    def _release_slab(self, slab: _Slab) -> None:
        self._partial[slab.klass].remove(slab)
        first = (slab.base - self._base) // self._page
        for index in range(first, first + slab.pages):
            del self._slab_of_page[index]
        self._used_pages -= slab.pages
        self._release_run(first, slab.pages)

    def _largest_free_run(self) -> int:
        """The longest free run, counting what the caches hold as given back (as they would be)."""
        if not self._empty_slabs and not self._quick_pages:
            return self._by_size[-1][0] if self._by_size else 0
        runs = dict(self._free_at)
        empty = [s for partial in self._partial for s in partial if s.live == 0]
        for slab in empty:
            runs[(slab.base - self._base) // self._page] = slab.pages
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
        self._release_empty_slabs()
        for count, starts in enumerate(self._quick):
            while starts:
                self._release_run(starts.pop(), count)
        self._quick_pages = 0

    def _release_empty_slabs(self) -> bool:
        """Give back the one empty slab each class keeps for reuse; True if there was any."""
        if not self._empty_slabs:
            return False
        empty = [slab for partial in self._partial for slab in partial if slab.live == 0]
        for slab in empty:
            self._release_slab(slab)
        self._empty_slabs = 0
        return True

    # -- pages ----------------------------------------------------------------------

    def _allocate_pages(self, count: int, nbytes: int) -> int:
        by_size = self._by_size
        slot = bisect.bisect_left(by_size, (count, -1))
        if slot == len(by_size):
            if self._largest_free_run() < count:
                raise self._exhausted(nbytes)
            self._flush_caches()
            slot = bisect.bisect_left(by_size, (count, -1))
        run, start = by_size[slot]
        self._remove_free(start, run)
        if run > count:
            self._insert_free(start + count, run - count)
        committed = self._committed
        self._undo = None
        if committed.find(0, start, start + count) != -1:
            address = self._base + start * self._page
            try:
                self._vm.commit(address, count * self._page)
            except PlatformError as exc:
                self._release_run(start, count)
                raise from_os_error(
                    exc, f"committing {format_size(count * self._page)} of pool"
                ) from None
            self._undo = (start, bytes(committed[start : start + count]))
            self._committed_pages += committed.count(0, start, start + count)
            committed[start : start + count] = b"\x01" * count
        self._used_pages += count
        return self._base + start * self._page

    def _zero(self, address: int, size: int) -> None:
        if size <= len(_ZEROS):
            offset = address - self._base
            self._memory[offset : offset + size] = _ZEROS[:size]
        else:
            ctypes.memset(address, 0, size)

    def _free_pages(self, address: int, count: int, *, cache: bool = True) -> None:
        self._zero(address, count * self._page)
        self._used_pages -= count
        start = (address - self._base) // self._page
        if cache and count <= QUICK_PAGES and len(self._quick[count]) < QUICK_DEPTH:
            self._quick[count].append(start)
            self._quick_pages += count
            return
        self._release_run(start, count)

    def _release_run(self, start: int, count: int) -> None:
        end = start + count
        after = self._free_at.get(end)
        if after is not None:
            self._remove_free(end, after)
            end += after
        before = self._free_ending.get(start)
        if before is not None:
            self._remove_free(before, start - before)
            start = before
        self._insert_free(start, end - start)

    def _insert_free(self, start: int, count: int) -> None:
        self._free_at[start] = count
        self._free_ending[start + count] = start
        bisect.insort(self._by_size, (count, start))

    def _remove_free(self, start: int, count: int) -> None:
        del self._free_at[start]
        del self._free_ending[start + count]
        slot = bisect.bisect_left(self._by_size, (count, start))
        del self._by_size[slot]

    def _trim(self) -> None:
        """Decommit free pages, largest runs first, while more than the retained amount is idle."""
        idle = (self._committed_pages - self._used_pages) * self._page
        if idle <= RETAINED_BYTES:
            return
        committed = self._committed
        for count, start in reversed(self._by_size):
            index = committed.find(1, start, start + count)
            while index != -1:
                end = committed.find(0, index, start + count)
                end = start + count if end == -1 else end
                try:
                    self._vm.decommit(self._base + index * self._page, (end - index) * self._page)
                except PlatformError:
                    return  # still committed and zeroed: correct, only less frugal
                committed[index:end] = bytes(end - index)
                self._committed_pages -= end - index
                idle -= (end - index) * self._page
                if idle <= RETAINED_BYTES // 2:
                    return
                index = committed.find(1, end, start + count)

    def _exhausted(self, nbytes: int) -> LimitExceeded:
        stats = self.stats()
        return LimitExceeded(
            f"the pool cannot hold {nbytes} bytes "
            f"(a block of {format_size(self.block_size(nbytes))}): "
            f"{stats.free} bytes free, the largest free span is {stats.largest_free} bytes, "
            f"capacity {stats.capacity}"
        )
