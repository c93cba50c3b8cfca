"""Residency under ``resident_limit``: which dimensions stay in memory and which may go.

The cap is on dimension data in memory (regions and layer copies). Past it, the least
recently used dimensions that are provably reloadable go first; the manager drops one only
when no reader holds it, so the cap is soft against pins and the overrun shows in
``stats()`` (``pinned``). Provably reloadable means: its bytes are zeros, or a file holds
exactly the layer checksums of what is in memory now and has not been written to, renamed or
replaced since it was read or written. What was dropped keeps those checksums, and a reload
that brings back anything else is a ``DataFileError``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

from mmkit import storage
from mmkit.manager.dimension import LoadedDimension, Provenance
from mmkit.manager.publication import Publication
from mmkit.manager.reclaim import Spans
from mmkit.values.config import MemoryConfig
from mmkit.values.errors import DataFileError, MmkitError
from mmkit.values.ids import DimensionId


class Residency:
    """Use order, the cap, dropping dimensions, and proving that what goes can come back.

    Not thread-safe by itself (the manager calls it under its lock), except ``last_use`` and
    ``ticks``, which readers update without the lock: a lost update only makes the order
    slightly less recent.
    """

    __slots__ = (
        "_published",
        "_spans",
        "data",
        "dropped",
        "evictions",
        "last_use",
        "limit",
        "pinned",
        "reloads",
        "ticks",
        "tracked",
    )

    def __init__(self, config: MemoryConfig, published: Publication, spans: Spans) -> None:
        self._published = published
        self._spans = spans
        self.limit = config.resident_limit
        self.tracked = self.limit is not None
        self.last_use: dict[DimensionId, int] = {}
        self.ticks: Iterator[int] = itertools.count()
        self.dropped: dict[DimensionId, Provenance] = {}
        self.data = 0
        self.pinned = 0
        self.evictions = 0
        self.reloads = 0

    def touch(self, dimension: DimensionId) -> None:
        self.last_use[dimension] = next(self.ticks)

    def excess(self) -> int:
        """Bytes of dimension data beyond the cap (0 without one)."""
        return 0 if self.limit is None else max(0, self.data - self.limit)

    def make_room(self, *, keep: DimensionId | None) -> None:
        """Drop least recently used dimensions until the data fits under the cap.

        Called once the call that grew the data has succeeded, so a failed call drops
        nothing. Past what can go, the cap is soft: ``pinned`` says how much readers held.
        """
        self.pinned = 0
        if not self.excess():
            return
        loaded = self._published.loaded
        candidates = (d for d, dim in loaded.items() if d != keep and dim.provenance is not None)
        for dimension in sorted(candidates, key=lambda d: self.last_use.get(d, -1)):
            self.evict(dimension)
            if not self.excess():
                return

    def evict(self, dimension: DimensionId) -> bool:
        """Drop a dimension if it is provably reloadable and no reader holds any of it."""
        published, spans = self._published, self._spans
        loaded = published.loaded.get(dimension)
        if loaded is None or not self.provable(loaded):
            return False
        # Readers in other processes are asked first and last: first, so that one holding it
        # does not see it come and go (nothing changes); last, once they cannot find it any
        # more, because one may have pinned it in between.
        if spans.pinned(loaded.leases(), published=False):
            return self._refuse(loaded)
        published.withdraw(dimension, mirror=False)  # from this process's readers first
        if not loaded.close():
            published.restore(loaded, mirror=False)
            self.pinned += loaded.data_bytes
            return False
        if spans.arena is not None:
            published.publish()
            if spans.pinned(loaded.leases()):
                loaded.reopen()
                published.restore(loaded)
                return self._refuse(loaded)
        self._spans.give_back(loaded.region.address, loaded.region.size)
        for copy in loaded.copies.values():
            self._spans.reclaim(copy)
        self.dropped[dimension] = loaded.provenance  # type: ignore[assignment]
        self.data -= loaded.data_bytes
        self.evictions += 1
        return True

    def _refuse(self, loaded: LoadedDimension) -> bool:
        """Readers in other processes hold some of it: count it as pinned, and remind them to
        let go of what no view of theirs needs any more. False."""
        self.pinned += loaded.data_bytes
        if self._spans.arena is not None:
            self._spans.arena.remind()
        return False

    def provable(self, loaded: LoadedDimension) -> bool:
        """Whether the bytes in memory can be loaded back exactly as they are, checked now."""
        provenance = loaded.provenance
        if provenance is None:
            return False
        if not isinstance(provenance.source, Path):
            return True
        try:
            header = storage.read_header_file(provenance.source)
        except (MmkitError, OSError):
            return False
        return (
            header.identity == provenance.identity
            and header.dimension == loaded.spec.id
            and header.layer_size == loaded.region.layer_size
            and header.layer_checksums == provenance.checksums
        )

    def reap(self) -> None:
        """Give back what no one can reach any more (retired layer copies, stray spans)."""
        published, spans = self._published, self._spans
        pool = spans.pool
        pending = pool is not None and pool.pending
        if not (published.retired or spans.stray or spans.unfreed or pending):
            return
        for lease in published.reclaimable():
            spans.reclaim(lease)
            self.data -= lease.size
        spans.retry()

    def loaded(self, dimension: DimensionId, data_bytes: int) -> None:
        """Account for a dimension now in memory (a reload if it had been dropped)."""
        if self.dropped.pop(dimension, None) is not None:
            self.reloads += 1
        self.data += data_bytes
        self.touch(dimension)


def check_reload(
    dimension: DimensionId, path: Path, checksums: tuple[int, ...], expected: tuple[int, ...]
) -> None:
    """``DataFileError`` unless a reload brought back the bytes that were dropped."""
    if checksums == expected:
        return
    index = next(i for i, (a, b) in enumerate(zip(checksums, expected, strict=True)) if a != b)
    raise DataFileError(
        path,
        f"no longer holds what {dimension} held when it was dropped from memory: layer "
        f"{index} has checksum {checksums[index]:#010x}, the dropped bytes had "
        f"{expected[index]:#010x}",
    )
