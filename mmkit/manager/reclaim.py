"""Giving memory back: only what no view reaches, and only in a state known to be clean.

Two rules hold everywhere. Memory is decommitted, or returned to the pool, only once its
lease is closed (no view of it is left). And a span whose decommit failed is in an unknown
state (old bytes, or inaccessible): it stays here, counted as committed, and nobody uses it
until a later decommit succeeds; a load settles its region first.
"""

from __future__ import annotations

from mmkit.memory.lease import Lease
from mmkit.memory.pool import PoolAllocator
from mmkit.memory.shared import SharedArena
from mmkit.platform import PlatformError, Protection, VirtualMemory
from mmkit.values.errors import InvalidState, from_os_error


class Spans:
    """Region spans waiting to be given back, and layer copies waiting to go back to the pool.

    Not thread-safe by itself: the manager calls it under its lock.
    """

    __slots__ = ("arena", "pool", "stray", "unfreed", "vm")

    def __init__(self, vm: VirtualMemory, arena: SharedArena | None = None) -> None:
        self.vm = vm
        self.arena = arena
        self.pool: PoolAllocator | None = None
        # address -> (size, the lease that must close first, if any)
        self.stray: dict[int, tuple[int, Lease | None]] = {}
        # closed layer copies the pool could not take back yet (still read-only)
        self.unfreed: list[Lease] = []

    def give_back(self, address: int, size: int, lease: Lease | None = None) -> None:
        """Decommit a span now if no view reaches it, else as soon as none does."""
        if lease is not None and not lease.close():
            self.stray[address] = (size, lease)
            return
        try:
            self.vm.decommit(address, size)
        except PlatformError:
            self.stray[address] = (size, None)
        else:
            self.stray.pop(address, None)

    def settle(self, address: int, size: int, action: str) -> None:
        """Make a span known-clean before it is used again; the OS error if it cannot be."""
        entry = self.stray.get(address)
        if entry is None:
            return
        lease = entry[1]
        if lease is not None and not lease.close():
            raise InvalidState(f"{action}: the memory of an earlier attempt is still in use")
        try:
            self.vm.decommit(address, size)
        except PlatformError as exc:
            self.stray[address] = (size, None)
            raise from_os_error(
                exc, f"{action}: giving back what an earlier failure left"
            ) from None
        del self.stray[address]

    def pinned(self, leases: list[Lease], *, published: bool = True) -> bool:
        """Whether a reader in another process may still reach any of these spans (see
        ``SharedArena.pinned``)."""
        arena = self.arena
        return arena is not None and any(
            arena.pinned(lease.address, published=published) for lease in leases
        )

    def reclaim(self, copy: Lease) -> None:
        """Return a closed layer copy to the pool (writable again, then freed and zeroed), or
        a spare layer of shared memory to the free ones."""
        arena = self.arena
        if arena is not None and arena.owns(copy.address):
            try:
                arena.free(copy.address)
            except PlatformError:
                self.unfreed.append(copy)
            return
        pool = self.pool
        if pool is None:
            return
        try:
            self.vm.protect(copy.address, copy.size, Protection.READ_WRITE)
        except PlatformError:
            self.unfreed.append(copy)  # still read-only: the pool cannot zero it yet
            return
        pool.free(copy.address)

    def retry(self) -> None:
        """Try again what failed before: decommits, copies that could not be made writable."""
        for address, (size, lease) in list(self.stray.items()):
            if lease is None or lease.close():
                self.give_back(address, size)
        if self.unfreed:
            copies, self.unfreed = self.unfreed, []
            for copy in copies:
                self.reclaim(copy)
        if self.pool is not None and self.pool.pending:
            self.pool.retry()

    def stray_bytes(self) -> int:
        return sum(size for size, _ in self.stray.values())

    def leases(self) -> list[Lease]:
        return [lease for _, lease in self.stray.values() if lease is not None]

    def regions(self) -> list[tuple[int, int]]:
        return [(address, size) for address, (size, _) in self.stray.items()]
