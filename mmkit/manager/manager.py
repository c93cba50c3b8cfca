"""``MmapManager``: the budget, the spec's state machine, and the table readers see.

Readers take no lock: ``access_layer`` reads ``self._table``, an immutable snapshot that
writers replace whole, under ``self._lock``, with one reference assignment. Every view
pins the memory it shows (``dimension.Pin``), and pins hold the reservation, so memory
goes back to the OS, or to the pool, only when nothing can reach it. Writers reclaim
retired memory whose pins have died (``_reap``) at the start of every write.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, TracebackType

from mmkit import storage
from mmkit.manager.dimension import ZERO, LoadedDimension, Pin, Source
from mmkit.memory.block import Block, BlockPin
from mmkit.memory.pool import PoolAllocator, PoolStats
from mmkit.memory.region import Layout, Region, Reservation, plan_layout
from mmkit.memory.views import scratch_view
from mmkit.platform import BACKEND, PlatformError, Protection, VirtualMemory
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
    """A snapshot of the manager's memory. ``resident`` figures are measured from the OS.

    ``data`` is the dimension data the manager holds in memory (loaded regions and layer
    copies); ``resident_limit`` caps it, softly: ``pinned`` is what the last attempt to
    make room could not drop because readers held views of it.
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
    owners: Mapping[str, int]
    dimensions: tuple[DimensionStats, ...]

    @property
    def over_limit(self) -> int:
        """Bytes of dimension data beyond ``resident_limit`` (held by readers' pins)."""
        return max(0, self.data - self.resident_limit)


@dataclass(frozen=True, slots=True)
class _Table:
    """What readers see: the state and, per loaded dimension, one read-only view per layer."""

    state: ManagerState
    layers: Mapping[DimensionId, tuple[memoryview, ...]]
    open: bool
    active: bool


_Fill = Path | memoryview | None
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
        self._loaded: dict[DimensionId, LoadedDimension] = {}
        self._evicted: dict[DimensionId, Source] = {}
        # Layer copies no longer published: freed once their pin (if any) has died.
        self._retired: list[tuple[weakref.ref[Pin] | None, int, int]] = []
        self._stray: dict[int, int] = {}
        self._data = 0
        self._pinned = 0
        self._evictions = 0
        self._reloads = 0
        self._tracked = config.resident_limit is not None
        self._last_use: dict[DimensionId, int] = {}
        self._ticks = itertools.count()
        self._pool: PoolAllocator | None = None
        self._blocks: dict[int, Block] = {}
        self._owners: dict[str, int] = {}
        self._token = object()
        self._table = _Table(ManagerState.UNINITIALIZED, MappingProxyType({}), False, False)
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
            if self._config.prefault:
                self._prefault(reservation)
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
                self._vm,
                reservation.address + layout.pool_offset,
                layout.pool_size,
                committed=self._config.prefault,
            )
            self._publish(ManagerState.ALLOCATED, {})

    def _prefault(self, reservation: Reservation) -> None:
        """Commit and touch every page of the budget now, so no later access faults."""
        layout = self._layout
        spans = [(offset, spec.size) for spec, offset in layout.dimensions]
        if layout.pool_size:
            spans.append((layout.pool_offset, layout.pool_size))
        try:
            for offset, size in spans:
                address = reservation.address + offset
                self._vm.commit(address, size)
                self._vm.prefault(address, size)
        except PlatformError as exc:
            raise from_os_error(exc, f"prefaulting {format_size(self._config.limit)}") from None

    def close(self) -> None:
        """Give the memory back. Views still held keep their memory until they are gone."""
        with self._lock:
            if self._table.state is ManagerState.CLOSED:
                return
            reservation = self._reservation
            pool = self._pool
            regions = [(weakref.ref(d.base), d.region) for d in self._loaded.values() if d.base]
            pool_pins: list[weakref.ref[Pin] | weakref.ref[Block]] = [
                ref for ref, _, _ in self._retired if ref is not None
            ]
            pool_pins += [weakref.ref(pin) for pin in self._copies()]
            pool_pins += [weakref.ref(block) for block in self._blocks.values()]
            self._loaded = {}
            self._evicted = {}
            self._retired = []
            self._blocks = {}
            self._owners = {}
            self._pool = None
            self._reservation = None
            self._data = 0
            self._publish(ManagerState.CLOSED, {})
            if reservation is None:
                return
            pool_held = any(ref() is not None for ref in pool_pins)
            if not pool_held and all(ref() is None for ref, _ in regions):
                return  # dropping ``reservation`` releases everything at once
            for ref, region in regions:
                if ref() is None:
                    self._decommit_quietly(region.address, region.size)
            if pool is not None and not pool_held:
                for address, size in pool.committed_spans():
                    self._decommit_quietly(address, size)
            self._stray = {}

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
        """Whether a dimension's bytes are in memory and published (not evicted)."""
        return self._config.dimension(dimension).id in self._table.layers

    def stats(self) -> Stats:
        """Allocated, committed and resident bytes, what is loaded, the pool, the cap."""
        with self._lock:
            self._reap()
            table = self._table
            reservation = self._reservation
            resident = data_resident = 0
            dimensions: list[DimensionStats] = []
            if reservation is not None:
                try:
                    resident = self._vm.resident(reservation.address, reservation.size)
                    for region in self.regions():
                        measured = self._vm.resident(region.address, region.size)
                        dimensions.append(
                            DimensionStats(
                                region.id,
                                region.name,
                                region.address,
                                region.size,
                                region.id in table.layers,
                                measured,
                            )
                        )
                    data_resident = sum(d.resident for d in dimensions) + sum(
                        self._vm.resident(pin.address, pin.size) for pin in self._copies()
                    )
                except PlatformError as exc:
                    raise from_os_error(exc, "measuring resident memory") from None
            pool = self._pool.stats() if self._pool is not None else _EMPTY_POOL
            return Stats(
                state=table.state,
                allocated=self.total_allocated(),
                reserved=reservation.size if reservation is not None else 0,
                committed=sum(d.region.size for d in self._loaded.values()) + pool.committed,
                resident=resident,
                loaded=tuple(sorted(table.layers)),
                data=self._data,
                data_resident=data_resident,
                resident_limit=self._config.effective_resident_limit,
                pinned=self._pinned,
                evictions=self._evictions,
                reloads=self._reloads,
                layer_copies=sum(len(d.copies) for d in self._loaded.values()),
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
        reservation = self._reservation
        where = f" at {reservation.address:#x}" if reservation is not None else ""
        return (
            f"<MmapManager {table.state.name} limit={format_size(self._config.limit)} "
            f"loaded={len(table.layers)}/{len(self._config.dimensions)}{where}>"
        )

    # -- loading and eviction ---------------------------------------------------------

    def load_dimension(self, dimension: object, source: object = None) -> None:
        """Load a dimension's bytes into its region.

        ``source``: None for the data directory's file (zero-filled with no data directory),
        a path to a data file, or a bytes-like object of exactly the dimension's size.
        """
        with self._lock:
            self._reap()
            self._require_open("load_dimension")
            spec = self._config.dimension(dimension)
            if spec.id in self._loaded:
                raise AlreadyLoaded(f"dimension {spec.id} ({spec.name}) is already loaded")
            self._load(spec, self._resolve_source(spec, source))

    def evict(self, dimension: object) -> bool:
        """Drop a dimension's bytes from memory if that loses nothing and no reader holds them.

        True when its memory went back to the OS; the next access loads it again. False
        when it is not loaded, cannot be reloaded as it is (loaded from bytes, or updated
        and not saved since), or a reader holds a view of it.
        """
        with self._lock:
            self._reap()
            self._require_open("evict")
            return self._evict(self._config.dimension(dimension).id)

    def save_dimension(self, dimension: object, path: str | os.PathLike[str]) -> Path:
        """Write a dimension's current bytes to a data file, atomically.

        Afterwards the dimension can be dropped under memory pressure and reloaded from
        that file, unless it is updated again first.
        """
        if not isinstance(path, str | os.PathLike):
            raise InvalidArgument(f"save_dimension needs a path, not {type(path).__name__}")
        target = Path(path)
        with self._lock:
            self._reap()
            self._require_open("save_dimension")
            spec = self._config.dimension(dimension)
            loaded = self._ensure_loaded(spec)
            views = loaded.views
        storage.write_layers(target, spec, self._config.layer_size, views)
        with self._lock:
            if self._loaded.get(spec.id) is loaded and loaded.views is views:
                loaded.source = target
                loaded.dirty = False
        return target

    def _resolve_source(self, spec: DimensionSpec, source: object) -> _Fill:
        if source is None:
            data_dir = self._config.data_dir
            return None if data_dir is None else storage.dimension_path(data_dir, spec)
        if isinstance(source, str | os.PathLike):
            return Path(source)
        return _exact_bytes(
            source, spec.size, f"source for {spec.id} ({spec.name})", "None, a path or "
        )

    def _ensure_loaded(self, spec: DimensionSpec) -> LoadedDimension:
        """The loaded dimension, loading it again (evicted) or on demand (data_dir) if need be."""
        loaded = self._loaded.get(spec.id)
        if loaded is not None:
            return loaded
        self._require_loadable(spec)
        if spec.id in self._evicted:
            source = self._evicted[spec.id]
            self._load(spec, None if source == ZERO else source)
        else:
            self._load(spec, self._resolve_source(spec, None))
        return self._loaded[spec.id]

    def _require_loadable(self, spec: DimensionSpec) -> None:
        """``NotLoaded`` unless the dimension is loaded or can be loaded without being told how."""
        known = spec.id in self._loaded or spec.id in self._evicted
        if not known and self._config.data_dir is None:
            raise NotLoaded(
                f"dimension {spec.id} ({spec.name}) is not loaded and there is no data_dir "
                "to load it from"
            )

    def _load(self, spec: DimensionSpec, fill: _Fill) -> None:
        region = self._regions[spec.id]
        reservation = self._reservation
        assert reservation is not None
        self._make_room(region.size, keep=spec.id)
        self._stray.pop(region.address, None)
        try:
            self._vm.commit(region.address, region.size)
        except PlatformError as exc:
            self._decommit_quietly(region.address, region.size)
            raise from_os_error(
                exc, f"committing {format_size(region.size)} for {spec.id}"
            ) from None
        try:
            self._fill(region, spec, fill)
            self._vm.protect(region.address, region.size, Protection.READ)
        except BaseException as exc:
            self._decommit_quietly(region.address, region.size)
            if isinstance(exc, PlatformError):
                raise from_os_error(exc, f"loading {spec.id}") from None
            raise
        source: Source = fill if isinstance(fill, Path) else (ZERO if fill is None else None)
        loaded = LoadedDimension(
            spec, region, Pin(reservation, region.address, region.size), source
        )
        self._loaded[spec.id] = loaded
        if self._evicted.pop(spec.id, None) is not None:
            self._reloads += 1
        self._data += region.size
        self._last_use[spec.id] = next(self._ticks)
        state = self._table.state
        self._publish(
            ManagerState.LOADED if state is ManagerState.ALLOCATED else state,
            {**self._table.layers, spec.id: loaded.views},
        )

    def _fill(self, region: Region, spec: DimensionSpec, fill: _Fill) -> None:
        if fill is None:
            return
        target = scratch_view(region.address, region.size)
        try:
            if isinstance(fill, Path):
                storage.read_dimension(fill, spec, region.layer_size, target)
            else:
                target[:] = fill
        finally:
            target.release()

    def _evict(self, dimension: DimensionId) -> bool:
        loaded = self._loaded.get(dimension)
        if loaded is None or not loaded.reloadable:
            return False
        layers = dict(self._table.layers)
        del layers[dimension]
        views = self._table.layers[dimension]
        self._publish(self._table.state, layers)
        del views
        spans = loaded.copy_spans()
        if loaded.try_release() is not None:
            self._publish(self._table.state, {**self._table.layers, dimension: loaded.views})
            self._pinned += loaded.data_bytes
            return False
        region = loaded.region
        try:
            self._vm.decommit(region.address, region.size)
        except PlatformError as exc:
            with contextlib.suppress(PlatformError):
                self._vm.protect(region.address, region.size, Protection.READ)
            reservation = self._reservation
            assert reservation is not None
            loaded.reattach(reservation, spans)
            self._publish(self._table.state, {**self._table.layers, dimension: loaded.views})
            raise from_os_error(exc, f"evicting {dimension}") from None
        del self._loaded[dimension]
        self._evicted[dimension] = loaded.source
        self._data -= region.size
        self._retired.extend((None, address, size) for address, size in spans.values())
        self._evictions += 1
        self._reap()
        return True

    def _make_room(self, size: int, *, keep: DimensionId) -> None:
        """Under a resident limit, drop least recently used dimensions until ``size`` fits.

        Only dimensions that can be reloaded as they are and that no reader holds go; when
        those are not enough, the load goes ahead past the limit (it is soft against pins).
        """
        limit = self._config.resident_limit
        if limit is None:
            return
        self._reap()
        self._pinned = 0
        over = self._data + size - limit
        if over <= 0:
            return
        candidates = sorted(
            (d for d, loaded in self._loaded.items() if d != keep and loaded.reloadable),
            key=lambda d: self._last_use.get(d, -1),
        )
        for dimension in candidates:
            freed = self._loaded[dimension].region.size
            if self._evict(dimension):
                over -= freed
                if over <= 0:
                    return

    def _decommit_quietly(self, address: int, size: int) -> None:
        """Decommit while handling another failure; if the OS refuses, retry at the next write.

        A span that stays committed meanwhile is unpublished and inside the reservation.
        """
        try:
            self._vm.decommit(address, size)
        except PlatformError:
            self._stray[address] = size

    # -- reading and updating -----------------------------------------------------------

    def access_layer(self, layer: LayerId) -> memoryview:
        """A read-only, zero-copy ``memoryview`` of one layer's bytes. Takes no lock."""
        table = self._table
        if table.active:
            try:
                view = table.layers[layer.dimension][layer.index][:]
            except (KeyError, IndexError, AttributeError):
                pass
            else:
                if self._tracked:
                    self._last_use[layer.dimension] = next(self._ticks)
                return view
        del table  # waiting for the lock with it would pin every view it holds
        return self._access_slow(layer)

    def _access_slow(self, layer: object) -> memoryview:
        with self._lock:
            spec = self._check_layer("access_layer", layer)
            assert isinstance(layer, LayerId)
            loaded = self._ensure_loaded(spec)
            if self._table.state is not ManagerState.ACTIVE:
                self._publish(ManagerState.ACTIVE, dict(self._table.layers))
            self._last_use[spec.id] = next(self._ticks)
            return loaded.views[layer.index][:]

    def update_layer(self, layer: LayerId, data: object) -> None:
        """Publish new bytes for a layer (read-copy-update).

        Views taken before keep the old bytes, whole and unchanged; accesses after see the
        new ones. The copy lives in the pool; the old one goes back to it once its last
        reader lets go.
        """
        with self._lock:
            self._reap()
            spec = self._check_layer("update_layer", layer)
            assert isinstance(layer, LayerId)
            size = self._config.layer_size
            source = _exact_bytes(data, size, f"new bytes for {layer}")
            self._require_loadable(spec)
            self._make_room(size, keep=spec.id)
            pool = self._pool
            reservation = self._reservation
            assert pool is not None and reservation is not None
            address, block = pool.allocate(size)
            try:
                loaded = self._ensure_loaded(spec)
                scratch = scratch_view(address, block)
                scratch[:size] = source
                scratch.release()
                self._vm.protect(address, block, Protection.READ)
            except BaseException as exc:
                pool.rollback(address)
                if isinstance(exc, PlatformError):
                    raise from_os_error(exc, f"publishing {layer}") from None
                raise
            old = loaded.replace_layer(layer.index, Pin(reservation, address, block))
            self._data += block
            self._publish(self._table.state, {**self._table.layers, spec.id: loaded.views})
            if old is not None:
                self._retired.append((weakref.ref(old), old.address, old.size))
                del old
            self._reap()

    def _check_layer(self, operation: str, layer: object) -> DimensionSpec:
        if not isinstance(layer, LayerId):
            raise InvalidId(f"{operation} needs a LayerId, not {type(layer).__name__}")
        self._require_open(operation)
        spec = self._config.dimension(layer.dimension)
        count = spec.size // self._config.layer_size
        if layer.index >= count:
            raise LayerOutOfRange(
                f"{spec.id} ({spec.name}) has {count} layers; there is no layer {layer.index}"
            )
        return spec

    def _copies(self) -> list[Pin]:
        return [pin for loaded in self._loaded.values() for pin in loaded.copies.values()]

    def _reap(self) -> None:
        """Give back what is no longer used: retired layer copies, spans left committed."""
        pool = self._pool
        if not self._stray and not self._retired and (pool is None or not pool.pending):
            return
        if self._reservation is None:
            return  # closed: the address space may be someone else's by now
        for address, size in list(self._stray.items()):
            del self._stray[address]
            self._decommit_quietly(address, size)
        if pool is not None and pool.pending:
            pool.retry()
        if not self._retired:
            return
        kept = []
        for ref, address, size in self._retired:
            if (ref is not None and ref() is not None) or pool is None:
                kept.append((ref, address, size))
                continue
            try:
                self._vm.protect(address, size, Protection.READ_WRITE)
            except PlatformError:
                kept.append((ref, address, size))
                continue
            pool.free(address)
            self._data -= size
        self._retired = kept

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
            self._reap()
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
            self._reap()
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
        self._table = _Table(
            state,
            MappingProxyType(layers),
            state in _OPEN_STATES,
            state is ManagerState.ACTIVE,
        )


def _exact_bytes(data: object, size: int, what: str, alternatives: str = "") -> memoryview:
    """``data`` as a flat byte view of exactly ``size`` bytes, or ``InvalidSource``."""
    try:
        view = memoryview(data).cast("B")  # type: ignore[arg-type]
    except TypeError:
        raise InvalidSource(
            f"{what} must be {alternatives}a bytes-like object of {size} bytes, "
            f"not {type(data).__name__}"
        ) from None
    if view.nbytes != size:
        raise InvalidSource(f"{what} is {view.nbytes} bytes; it must be {size} bytes")
    return view
