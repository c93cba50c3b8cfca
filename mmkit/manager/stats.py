"""Snapshots of a manager's memory, as plain values, and measuring one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mmkit.manager.blocks import Blocks
from mmkit.manager.publication import Publication
from mmkit.manager.reclaim import Spans
from mmkit.manager.residency import Residency
from mmkit.memory.pool import PoolStats
from mmkit.memory.region import Region, Reservation
from mmkit.platform import PlatformError
from mmkit.values.config import MemoryConfig
from mmkit.values.errors import from_os_error
from mmkit.values.ids import DimensionId
from mmkit.values.state import ManagerState

_EMPTY_POOL = PoolStats(0, 0, 0, 0, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class DimensionStats:
    """One dimension's region: where it is and how much of it is in physical memory."""

    id: DimensionId
    name: str
    address: int
    size: int
    loaded: bool
    resident: int


@dataclass(frozen=True, slots=True)
class Stats:
    """A snapshot of the manager's memory. ``resident`` figures are measured from the OS.

    ``data`` is the dimension data the manager holds in memory (loaded regions and layer
    copies); ``resident_limit`` caps it, softly: ``pinned`` is what the last attempt to
    make room could not drop because readers held views of it. Plain values throughout, so
    a snapshot pickles (a worker process can send one back).

    A shared manager (``MemoryConfig(shared=True)``) also reports its ``spare_layers``, how
    many are free, and ``reader_pins``: the bytes that readers in other processes pin now.
    """

    state: ManagerState
    allocated: int
    reserved: int
    committed: int
    resident: int
    loaded: tuple[DimensionId, ...]
    data: int
    data_resident: int
    resident_limit: int
    pinned: int
    evictions: int
    reloads: int
    layer_copies: int
    pool_size: int
    pool_used: int
    pool_free: int
    pool_largest_free: int
    pool_committed: int
    pool_blocks: int
    pool_block_bytes: int
    fragmentation: float
    owners: dict[str, int]
    dimensions: tuple[DimensionStats, ...]
    spare_layers: int = 0
    spare_layers_free: int = 0
    reader_pins: int = 0

    @property
    def over_limit(self) -> int:
        """Bytes of dimension data beyond ``resident_limit`` (held by readers' pins)."""
        return max(0, self.data - self.resident_limit)


def measure(
    config: MemoryConfig,
    reservation: Reservation | None,
    regions: Sequence[Region],
    *,
    published: Publication,
    residency: Residency,
    spans: Spans,
    blocks: Blocks,
) -> Stats:
    """The snapshot: the manager's own accounting, and resident bytes asked of the OS."""
    vm = spans.vm
    table = published.table
    loaded = published.loaded
    resident = data_resident = 0
    dimensions: list[DimensionStats] = []
    try:
        if reservation is not None:
            resident = vm.resident(reservation.address, reservation.size)
        for region in regions:
            dimensions.append(
                DimensionStats(
                    region.id,
                    region.name,
                    region.address,
                    region.size,
                    region.id in table.layers,
                    vm.resident(region.address, region.size),
                )
            )
        copies = [copy for dimension in loaded.values() for copy in dimension.copies.values()]
        data_resident = sum(d.resident for d in dimensions if d.loaded) + sum(
            vm.resident(copy.address, copy.size) for copy in copies
        )
    except PlatformError as exc:
        raise from_os_error(exc, "measuring resident memory") from None
    pool = spans.pool.stats() if spans.pool is not None else _EMPTY_POOL
    arena = spans.arena
    spares = config.spare_layers if arena is not None else 0
    spares_free = arena.spares_free if arena is not None else 0
    reader_pins = arena.reader_pins() * config.layer_size if arena is not None else 0
    return Stats(
        state=table.state,
        allocated=config.limit if table.open else 0,
        reserved=reservation.size if reservation is not None else 0,
        committed=sum(d.region.size for d in loaded.values())
        + spans.stray_bytes()
        + pool.committed
        + (spares - spares_free) * config.layer_size,
        resident=resident,
        loaded=tuple(sorted(table.layers)),
        data=residency.data,
        data_resident=data_resident,
        resident_limit=config.effective_resident_limit,
        pinned=residency.pinned,
        evictions=residency.evictions,
        reloads=residency.reloads,
        layer_copies=len(copies),
        pool_size=pool.capacity,
        pool_used=pool.used,
        pool_free=pool.free,
        pool_largest_free=pool.largest_free,
        pool_committed=pool.committed,
        pool_blocks=pool.blocks,
        pool_block_bytes=pool.block_bytes,
        fragmentation=pool.fragmentation,
        owners=dict(blocks.owners),
        dimensions=tuple(dimensions),
        spare_layers=spares,
        spare_layers_free=spares_free,
        reader_pins=reader_pins,
    )
