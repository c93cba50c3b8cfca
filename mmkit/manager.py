"""``MmapManager``: the budget, the spec's state machine, and the table readers see.

Readers take no lock: ``access_layer`` reads ``self._table``, an immutable snapshot that
writers replace whole, under ``self._lock``, with one reference assignment. Every view
pins the generation of data it shows, and the generation pins the reservation, so memory
goes back to the OS only when nothing can reach it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, TracebackType

from mmkit import storage
from mmkit.platform import BACKEND, PlatformError, Protection, VirtualMemory
from mmkit.pool import Block, BlockPin, PoolAllocator, PoolStats
from mmkit.region import Layout, Region, Reservation, plan_layout
from mmkit.values.config import DimensionSpec, MemoryConfig
from mmkit.values.errors import (
    AlreadyLoaded,
    BlockInUse,
    ConfigError,
    InvalidArgument,
    InvalidBlock,
    InvalidId,
    InvalidSource,
    InvalidState,
    LayerOutOfRange,
    LimitExceeded,
    NotLoaded,
    from_os_error,
)
from mmkit.values.ids import DimensionId, LayerId
from mmkit.values.state import ManagerState
from mmkit.values.units import format_size
from mmkit.views import scratch_view, span_view

_OPEN_STATES = frozenset({ManagerState.ALLOCATED, ManagerState.LOADED, ManagerState.ACTIVE})


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
    """A snapshot of the manager's memory. ``resident`` is measured from the OS."""

    state: ManagerState
    allocated: int
    reserved: int
    committed: int
    resident: int
    loaded: tuple[DimensionId, ...]
    pool_size: int
    pool_used: int
    pool_free: int
    pool_largest_free: int
    pool_committed: int
    pool_blocks: int
    pool_block_bytes: int
    fragmentation: float
    owners: Mapping[str, int]
    dimensions: tuple[DimensionStats, ...]


@dataclass(frozen=True, slots=True)
class _Table:
    """What readers see: the state and, per loaded dimension, one read-only view per layer."""

    state: ManagerState
    layers: Mapping[DimensionId, tuple[memoryview, ...]]
    open: bool


class _Generation:
    """One loading of a dimension's bytes. Views pin it; it pins the address space."""

    __slots__ = ("__weakref__", "region", "reservation", "source")

    def __init__(self, reservation: Reservation, region: Region, source: Path | str) -> None:
        self.reservation = reservation
        self.region = region
        self.source = source


_Source = Path | memoryview | None
_EMPTY_POOL = PoolStats(0, 0, 0, 0, 0, 0, 0)


class MmapManager:
    """A fixed memory budget as named, page-aligned regions, served as zero-copy views."""

    def __init__(
        self,
        config: MemoryConfig | None = None,
        *,
        initialize: bool = True,
        backend: VirtualMemory | None = None,
    ) -> None:
        if config is None:
            config = MemoryConfig()
        elif not isinstance(config, MemoryConfig):
            raise ConfigError(f"config must be a MemoryConfig, not {type(config).__name__}")
        self._config = config
        self._vm = BACKEND if backend is None else backend
        alignment = max(self._vm.granularity, self._vm.huge_page_size)
        self._layout: Layout = plan_layout(config, self._vm.page_size, alignment)
        self._lock = threading.RLock()
        self._reservation: Reservation | None = None
        self._regions: dict[DimensionId, Region] = {}
        self._generations: dict[DimensionId, _Generation] = {}
        self._committed = 0
        self._pool: PoolAllocator | None = None
        self._blocks: dict[int, Block] = {}
        self._owners: dict[str, int] = {}
        self._token = object()
        self._table = _Table(ManagerState.UNINITIALIZED, MappingProxyType({}), open=False)
        if initialize:
            self.initialize()

    # -- life cycle -------------------------------------------------------------------

    def initialize(self) -> None:
        """Reserve the whole budget in one piece and lay the regions out in it."""
        with self._lock:
            if self._table.state is not ManagerState.UNINITIALIZED:
                raise InvalidState(f"initialize: the manager is {self._table.state.value}")
            layout = self._layout
            try:
                reservation = Reservation(self._vm, layout.size, layout.alignment)
            except PlatformError as exc:
                raise from_os_error(
                    exc, f"reserving {format_size(layout.size)} of address space"
                ) from None
            self._reservation = reservation
            self._regions = {
                spec.id: Region(
                    spec.id,
                    spec.name,
                    reservation.address + offset,
                    spec.size,
                    self._config.layer_size,
                )
                for spec, offset in layout.dimensions
            }
            self._pool = PoolAllocator(
                self._vm, reservation.address + layout.pool_offset, layout.pool_size
            )
            self._publish(ManagerState.ALLOCATED, {})

    def close(self) -> None:
        """Give the memory back. Views still held keep their memory until they are gone."""
        with self._lock:
            if self._table.state is ManagerState.CLOSED:
                return
            reservation = self._reservation
            pool = self._pool
            pinned = _weak_generations(self._generations)
            blocks = [weakref.ref(block) for block in self._blocks.values()]
            self._generations = {}
            self._blocks = {}
            self._owners = {}
            self._pool = None
            self._reservation = None
            self._committed = 0
            self._publish(ManagerState.CLOSED, {})
            if reservation is None:
                return
            live_blocks = any(ref() is not None for ref in blocks)
            if not live_blocks and all(ref() is None for ref, _ in pinned):
                return  # dropping ``reservation`` releases everything at once
            for ref, region in pinned:
                if ref() is None:
                    self._decommit_quietly(region.address, region.size)
            if pool is not None and not live_blocks:
                for address, size in pool.committed_spans():
                    self._decommit_quietly(address, size)

    def __enter__(self) -> MmapManager:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- queries ----------------------------------------------------------------------

    @property
    def config(self) -> MemoryConfig:
        return self._config

    @property
    def state(self) -> ManagerState:
        return self._table.state

    def total_allocated(self) -> int:
        """Bytes of the budget mapped for this manager: the limit, from initialisation to close."""
        return self._config.limit if self._table.open else 0

    def regions(self) -> tuple[Region, ...]:
        """The dimension regions, in address order."""
        self._require_open("regions")
        return tuple(sorted(self._regions.values(), key=lambda r: r.address))

    def region(self, dimension: object) -> Region:
        """The region of one dimension."""
        self._require_open("region")
        return self._regions[self._config.dimension(dimension).id]

    def is_loaded(self, dimension: object) -> bool:
        """Whether a dimension's bytes are loaded and published."""
        return self._config.dimension(dimension).id in self._table.layers

    def stats(self) -> Stats:
        """Allocated, committed and resident bytes, and what is loaded."""
        with self._lock:
            table = self._table
            reservation = self._reservation
            resident = 0
            dimensions: list[DimensionStats] = []
            if reservation is not None:
                try:
                    resident = self._vm.resident(reservation.address, reservation.size)
                    for region in self.regions():
                        dimensions.append(
                            DimensionStats(
                                region.id,
                                region.name,
                                region.address,
                                region.size,
                                region.id in table.layers,
                                self._vm.resident(region.address, region.size),
                            )
                        )
                except PlatformError as exc:
                    raise from_os_error(exc, "measuring resident memory") from None
            pool = self._pool.stats() if self._pool is not None else _EMPTY_POOL
            return Stats(
                state=table.state,
                allocated=self.total_allocated(),
                reserved=reservation.size if reservation is not None else 0,
                committed=self._committed + pool.committed,
                resident=resident,
                loaded=tuple(sorted(table.layers)),
                pool_size=pool.capacity,
                pool_used=pool.used,
                pool_free=pool.free,
                pool_largest_free=pool.largest_free,
                pool_committed=pool.committed,
                pool_blocks=pool.blocks,
                pool_block_bytes=pool.block_bytes,
                fragmentation=pool.fragmentation,
                owners=MappingProxyType(dict(self._owners)),
                dimensions=tuple(dimensions),
            )

    def __repr__(self) -> str:
        table = self._table
        where = f" at {self._reservation.address:#x}" if self._reservation is not None else ""
        return (
            f"<MmapManager {table.state.name} limit={format_size(self._config.limit)} "
            f"loaded={len(table.layers)}/{len(self._config.dimensions)}{where}>"
        )

    # -- loading ----------------------------------------------------------------------

    def load_dimension(self, dimension: object, source: object = None) -> None:
        """Load a dimension's bytes into its region.

        ``source``: None for the data directory's file (zero-filled with no data directory),
        a path to a data file, or a bytes-like object of exactly the dimension's size.
        """
        with self._lock:
            self._require_open("load_dimension")
            spec = self._config.dimension(dimension)
            if spec.id in self._generations:
                raise AlreadyLoaded(f"dimension {spec.id} ({spec.name}) is already loaded")
            self._load(spec, self._resolve_source(spec, source))

    def _resolve_source(self, spec: DimensionSpec, source: object) -> _Source:
        if source is None:
            data_dir = self._config.data_dir
            return None if data_dir is None else storage.dimension_path(data_dir, spec)
        if isinstance(source, str | os.PathLike):
            return Path(source)
        try:
            data = memoryview(source).cast("B")  # type: ignore[arg-type]
        except TypeError:
            raise InvalidSource(
                f"source for {spec.id} must be None, a path or a bytes-like object of "
                f"{spec.size} bytes, not {type(source).__name__}"
            ) from None
        if data.nbytes != spec.size:
            raise InvalidSource(
                f"source for {spec.id} ({spec.name}) is {data.nbytes} bytes; "
                f"the dimension is {spec.size} bytes"
            )
        return data

    def _load(self, spec: DimensionSpec, source: _Source) -> None:
        region = self._regions[spec.id]
        reservation = self._reservation
        assert reservation is not None
        try:
            self._vm.commit(region.address, region.size)
        except PlatformError as exc:
            self._decommit_quietly(region.address, region.size)
            raise from_os_error(
                exc, f"committing {format_size(region.size)} for {spec.id}"
            ) from None
        try:
            self._fill(region, spec, source)
            self._vm.protect(region.address, region.size, Protection.READ)
        except BaseException as exc:
            self._decommit_quietly(region.address, region.size)
            if isinstance(exc, PlatformError):
                raise from_os_error(exc, f"loading {spec.id}") from None
            raise
        kind = source if isinstance(source, Path) else ("bytes" if source is not None else "zero")
        generation = _Generation(reservation, region, kind)
        views = tuple(
            span_view(region.layer_address(index), region.layer_size, generation)
            for index in range(region.layer_count)
        )
        self._generations[spec.id] = generation
        self._committed += region.size
        state = self._table.state
        layers = dict(self._table.layers)
        layers[spec.id] = views
        self._publish(ManagerState.LOADED if state is ManagerState.ALLOCATED else state, layers)

    def _fill(self, region: Region, spec: DimensionSpec, source: _Source) -> None:
        if source is None:
            return
        target = scratch_view(region.address, region.size)
        try:
            if isinstance(source, Path):
                storage.read_dimension(source, spec, region.layer_size, target)
            else:
                target[:] = source
        finally:
            target.release()

    def _decommit_quietly(self, address: int, size: int) -> None:
        # Called while handling another failure, or at close: a span that stays committed
        # is still inside the reservation and goes back to the OS with it.
        with contextlib.suppress(PlatformError):
            self._vm.decommit(address, size)

    # -- reading ----------------------------------------------------------------------

    def access_layer(self, layer: LayerId) -> memoryview:
        """A read-only, zero-copy ``memoryview`` of one layer's bytes. Takes no lock."""
        table = self._table
        if table.state is ManagerState.ACTIVE:
            try:
                return table.layers[layer.dimension][layer.index][:]
            except (KeyError, IndexError, AttributeError):
                pass
        return self._access_slow(layer)

    def _access_slow(self, layer: object) -> memoryview:
        if not isinstance(layer, LayerId):
            raise InvalidId(f"access_layer needs a LayerId, not {type(layer).__name__}")
        with self._lock:
            self._require_open("access_layer")
            spec = self._config.dimension(layer.dimension)
            count = spec.size // self._config.layer_size
            if layer.index >= count:
                raise LayerOutOfRange(
                    f"{spec.id} ({spec.name}) has {count} layers; there is no layer {layer.index}"
                )
            if spec.id not in self._generations:
                if self._config.data_dir is None:
                    raise NotLoaded(
                        f"dimension {spec.id} ({spec.name}) is not loaded and there is no "
                        "data_dir to load it from"
                    )
                self._load(spec, self._resolve_source(spec, None))
            table = self._table
            if table.state is not ManagerState.ACTIVE:
                self._publish(ManagerState.ACTIVE, dict(table.layers))
            return self._table.layers[spec.id][layer.index][:]

    # -- the pool -----------------------------------------------------------------------

    def allocate(self, nbytes: int, *, owner: str | None = None) -> Block:
        """A zeroed block of at least ``nbytes`` from the pool, drawn from ``owner``'s quota.

        ``LimitExceeded`` (also a ``MemoryError``) when the pool or the quota cannot hold it.
        """
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes <= 0:
            raise InvalidArgument(f"allocate needs a positive int number of bytes, not {nbytes!r}")
        if owner is not None and (not isinstance(owner, str) or not owner):
            raise InvalidArgument(f"owner must be a non-empty str or None, not {owner!r}")
        with self._lock:
            self._require_open("allocate")
            pool = self._pool
            assert pool is not None
            if owner is not None:
                used = self._owners.get(owner, 0)
                size = pool.block_size(nbytes)
                quota = self._config.user_quota
                if used + size > quota:
                    raise LimitExceeded(
                        f"owner {owner!r} cannot have {nbytes} more bytes (a block of {size}): "
                        f"it uses {used} of its quota of {quota}"
                    )
            address, size = pool.allocate(nbytes)
            block = Block(
                address,
                size,
                nbytes,
                owner=owner,
                pin=BlockPin(self._reservation),
                manager_id=self._token,
            )
            self._blocks[address] = block
            if owner is not None:
                self._owners[owner] = self._owners.get(owner, 0) + size
            return block

    def free(self, block: Block) -> None:
        """Return a block to the pool; its bytes are zeroed before anyone else gets them.

        ``block.view`` is released; any other view of the block (a slice of it, a numpy
        array over it) makes ``free`` refuse with ``BlockInUse`` and change nothing.
        """
        if not isinstance(block, Block):
            raise InvalidBlock(f"free needs a Block, not {type(block).__name__}")
        with self._lock:
            self._require_open("free")
            if block.manager_id is not self._token:
                raise InvalidBlock(f"block at {block.address:#x} belongs to another manager")
            if self._blocks.get(block.address) is not block:
                raise InvalidBlock(f"block at {block.address:#x} has already been freed")
            if block.detach() is not None:
                raise BlockInUse(
                    f"block at {block.address:#x} still has views; release them before free"
                )
            pool = self._pool
            assert pool is not None
            del self._blocks[block.address]
            pool.free(block.address)
            if block.owner is not None:
                left = self._owners[block.owner] - block.size
                if left:
                    self._owners[block.owner] = left
                else:
                    del self._owners[block.owner]

    # -- internals --------------------------------------------------------------------

    def _require_open(self, operation: str) -> None:
        table = self._table
        if not table.open:
            raise InvalidState(f"{operation}: the manager is {table.state.value}")

    def _publish(
        self, state: ManagerState, layers: dict[DimensionId, tuple[memoryview, ...]]
    ) -> None:
        self._table = _Table(state, MappingProxyType(layers), open=state in _OPEN_STATES)


def _weak_generations(
    generations: dict[DimensionId, _Generation],
) -> list[tuple[weakref.ref[_Generation], Region]]:
    return [(weakref.ref(g), g.region) for g in generations.values()]
