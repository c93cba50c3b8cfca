"""Slabs: runs of pages cut into equal slots of one size class, for blocks below a page.

A slab is usually ``SLAB_BYTES``; when the pool has no free run that long, a shorter one
(down to a single page) is made from what is free, so small blocks fit while pages do.
"""

from __future__ import annotations

SLAB_BYTES = 64 * 1024


class Slab:
    """One slab: a run of pages cut into items of one size class.

    Items never handed out are taken in address order (``fresh``); freed ones are reused
    first, last in first out (``free``), so making a slab costs nothing per item.
    """

    __slots__ = ("base", "capacity", "first", "free", "fresh", "item", "klass", "live", "pages")

    def __init__(
        self, base: int, first: int, pages: int, item: int, klass: int, *, page: int
    ) -> None:
        self.base = base
        self.first = first
        self.pages = pages
        self.item = item
        self.klass = klass
        self.capacity = pages * page // item
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


class Slabs:
    """The slabs of all size classes: those with room, per class, and the slab of each page.

    Each class keeps one empty slab for reuse (``empty`` counts them); the pool counts
    those as free and gives them back when it needs their pages.
    """

    __slots__ = ("empty", "of_page", "partial")

    def __init__(self, classes: int) -> None:
        self.partial: list[list[Slab]] = [[] for _ in range(classes)]
        self.of_page: dict[int, Slab] = {}
        self.empty = 0

    def add(self, slab: Slab) -> None:
        """A new slab, with room in all its slots."""
        of_page = self.of_page
        for index in range(slab.first, slab.first + slab.pages):
            of_page[index] = slab
        self.partial[slab.klass].append(slab)

    def put_back(self, slab: Slab, address: int) -> bool:
        """Return a slot to its slab; True when the slab is empty and should go back as pages."""
        partial = self.partial[slab.klass]
        if slab.live == slab.capacity:
            partial.append(slab)
        slab.free.append(address)
        slab.live -= 1
        if slab.live:
            return False
        if len(partial) > 1:
            return True
        self.empty += 1
        return False

    def remove(self, slab: Slab) -> None:
        """Forget an empty slab whose pages go back to the pool."""
        self.partial[slab.klass].remove(slab)
        of_page = self.of_page
        for index in range(slab.first, slab.first + slab.pages):
            del of_page[index]

    def empties(self) -> list[Slab]:
        """The empty slabs kept for reuse."""
        if not self.empty:
            return []
        return [slab for partial in self.partial for slab in partial if slab.live == 0]
