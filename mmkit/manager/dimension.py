"""A loaded dimension: the leases behind its bytes, what readers read, its provenance.

A layer's bytes live in its *home*, its span of the dimension's region, until the layer is
updated; then they live in a copy in the pool, or in a spare layer of shared memory
(read-copy-update). Each home and each copy is a ``Lease``, so what views reach is known layer
by layer. The manager publishes one view per layer, and each layer's span (its lease, offset
and size). Under a GIL readers get
slices of the published views; on free-threaded builds each read is an export of its own
from the span (see ``layer_view``). Either way, withdrawing the published views and then
finding every lease without exports is the exact test that no reader can reach the memory.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mmkit.memory.lease import Lease, another_view
from mmkit.memory.region import Region
from mmkit.platform import FREE_THREADED
from mmkit.values.config import DimensionSpec

ZERO: Literal["zero"] = "zero"

SHARED_VIEWS = not FREE_THREADED
"""Whether readers may all slice one published view. Under a GIL, CPython's memoryview export
counts change one thread at a time. Free-threaded CPython changes them without atomics
(gh-127716): threads that slice and drop views of one memoryview at once lose counts, and a
view can be released under its readers, or memory given back under them. There, every read
is a fresh export, and readers share no CPython object on the way to their bytes."""

Span = tuple[Lease, int, int]
"""A layer's bytes: the lease that holds them, the offset in it and the size."""


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where a dimension's bytes can be loaded again from, and what proves they still are.

    ``checksums`` are each layer's CRC-32, which a reload must bring back exactly;
    ``identity`` is the file's (``storage.FileHeader.identity``) when it was read or
    written, which must be unchanged for the dimension to be dropped at all: a file that was
    written to, renamed or replaced since is not trusted to hold these bytes.
    """

    source: Path | Literal["zero"]
    checksums: tuple[int, ...]
    identity: tuple[int, ...] = ()


@functools.cache
def zero_checksums(count: int, layer_size: int) -> tuple[int, ...]:
    """The checksums of a zero-filled dimension."""
    return (zlib.crc32(bytes(layer_size)),) * count


class LoadedDimension:
    """A dimension whose bytes are committed and whose per-layer views are published.

    ``provenance`` is None when the bytes cannot be loaded again as they are (loaded from a
    buffer, or updated since the last save); ``version`` counts updates, so a save can tell
    whether what it wrote is still what is in memory.
    """

    __slots__ = (
        "copies",
        "homes",
        "provenance",
        "region",
        "spans",
        "spec",
        "version",
        "views",
    )

    def __init__(self, spec: DimensionSpec, region: Region, provenance: Provenance | None) -> None:
        self.spec = spec
        self.region = region
        self.homes = [self._home(index) for index in range(region.layer_count)]
        self.copies: dict[int, Lease] = {}
        self.provenance = provenance
        self.version = 0
        self.views: tuple[memoryview, ...] = ()
        self.spans: tuple[Span, ...] = ()
        self.publish()

    @property
    def data_bytes(self) -> int:
        """Bytes of memory the dimension's data takes: its region and its layer copies."""
        return self.region.size + sum(copy.size for copy in self.copies.values())

    def _home(self, index: int) -> Lease:
        return Lease(self.region.layer_address(index), self.region.layer_size)

    def leases(self) -> list[Lease]:
        return [*self.homes, *self.copies.values()]

    def current(self, index: int) -> Lease:
        """The lease of a layer's current bytes: its copy if it has one, else its home."""
        return self.copies.get(index) or self.homes[index]

    def publish(self) -> None:
        """Make the per-layer views readers slice (one export of each layer's current lease)
        and the per-layer spans."""
        count, size = self.region.layer_count, self.region.layer_size
        self.views = tuple(self.current(index).view() for index in range(count))
        self.spans = tuple((self.current(index), 0, size) for index in range(count))

    def layer_view(self, index: int) -> memoryview:
        """A reader's view of one layer (``ValueError`` if its published view was released)."""
        if SHARED_VIEWS:
            return another_view(self.views[index])
        lease, start, size = self.spans[index]
        return lease.view(start, size)

    def withdraw(self) -> None:
        """Release the published views; readers holding an old table get ``ValueError``."""
        for view in self.views:
            view.release()
        self.views = ()
        self.spans = ()

    def close(self) -> bool:
        """End every lease if no reader holds a view of any (after ``withdraw``).

        If one is still held, the dimension stays whole: the leases that did close are
        replaced by fresh ones over the same memory, ready to be published again.
        """
        if all([lease.close() for lease in self.leases()]):
            return True
        self.reopen()
        return False

    def reopen(self) -> None:
        """Replace each closed lease with a fresh one over the same memory."""
        for index, home in enumerate(self.homes):
            if not home.open:
                self.homes[index] = self._home(index)
        for index, copy in list(self.copies.items()):
            if not copy.open:
                self.copies[index] = Lease(copy.address, copy.size)

    def replace_layer(self, index: int, copy: Lease) -> tuple[Lease | None, memoryview]:
        """Make ``copy`` layer ``index``; return the copy it replaces and the view to release.

        ``copy`` is a new copy, or the layer's home written again (a fresh lease over it).
        The caller publishes the new table first, then releases the old view, so readers
        move to the new bytes without ever meeting a released view in the current table.
        """
        old = self.copies.pop(index, None)
        if copy.address == self.region.layer_address(index):
            self.homes[index] = copy
        else:
            self.copies[index] = copy
        views = list(self.views)
        retired = views[index]
        views[index] = copy.view()
        self.views = tuple(views)
        spans = list(self.spans)
        spans[index] = (copy, 0, copy.size)
        self.spans = tuple(spans)
        self.provenance = None
        self.version += 1
        return old, retired
