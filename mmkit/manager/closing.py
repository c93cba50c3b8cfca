"""Closing a manager: all of its memory back now, or all that no view reaches.

Each lease a view still holds keeps the reservation until its last view is gone; then the
address space goes back to the OS, exactly when nothing can reach it any more.
"""

from __future__ import annotations

import contextlib

from mmkit.manager.blocks import Blocks
from mmkit.manager.publication import Publication
from mmkit.manager.reclaim import Spans
from mmkit.memory.lease import Lease
from mmkit.memory.locks import WriteGuard
from mmkit.memory.region import Reservation
from mmkit.platform import PlatformError, VirtualMemory, align_down, align_up
from mmkit.values.errors import InvalidState
from mmkit.values.state import ManagerState


def shutdown(
    published: Publication, blocks: Blocks, spans: Spans, reservation: Reservation
) -> None:
    """Give a manager's memory back: all of it now, or all that no view reaches.

    Each lease a view still holds keeps the reservation until its last view is gone; then
    the address space goes back to the OS, exactly when nothing can reach it any more.
    """
    if spans.arena is not None:
        spans.arena.finish()  # readers keep what is published; nothing is given back under them
    pool, spans.pool = spans.pool, None
    regions = [(d.region.address, d.region.size) for d in published.loaded.values()]
    leases = published.withdraw_all(ManagerState.CLOSED) + blocks.close() + spans.leases()
    held = [lease for lease in leases if not lease.close()]
    for lease in held:
        reservation.hold()
        lease.close_when_idle(reservation.drop)
    if held:
        unheld = regions + spans.regions() + (pool.committed_spans() if pool is not None else [])
        _decommit_around(spans, unheld, held)
    reservation.drop()


def abandon(
    guard: WriteGuard,
    published: Publication,
    blocks: Blocks,
    spans: Spans,
    reservation: Reservation,
) -> None:
    """``shutdown`` for a manager collected without ``close()``, once no write is under way.

    Collected inside one of its own writes (the collector ran in the middle of a block's
    first view), it leaves the memory to the OS rather than pull it from under that write.
    """
    try:
        with guard:
            shutdown(published, blocks, spans, reservation)
    except InvalidState:
        pass


def _decommit_around(spans: Spans, candidates: list[tuple[int, int]], held: list[Lease]) -> None:
    """Decommit the candidate spans except the pages a held lease touches (best effort)."""
    page = spans.vm.page_size
    keep = sorted(
        (align_down(lease.address, page), align_up(lease.address + lease.size, page))
        for lease in held
    )
    for address, size in candidates:
        start, end = address, address + size
        for low, high in keep:
            if high <= start or low >= end:
                continue
            if low > start:
                _decommit(spans.vm, start, low)
            start = max(start, high)
        if start < end:
            _decommit(spans.vm, start, end)


def _decommit(vm: VirtualMemory, start: int, end: int) -> None:
    with contextlib.suppress(PlatformError):
        vm.decommit(start, end - start)
