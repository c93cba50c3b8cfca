"""``MmapManager``: the budget, the spec's state machine, and the face over its parts.

Readers take no lock: ``access_layer`` slices a published view out of the table
(``publication``). Writers are serialised by ``self._lock`` and publish a new table when done.
Memory goes back to the OS or the pool only when its lease says that no view of it is left
(``mmkit.memory.lease``); residency under ``resident_limit`` is ``residency``, pool blocks
``blocks``, and giving everything back at close ``shutdown``.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from mmkit import storage
from mmkit.manager.blocks import Block, Blocks
from mmkit.manager.dimension import ZERO, LoadedDimension, Provenance, zero_checksums
from mmkit.manager.publication import Publication
from mmkit.manager.reclaim import Spans, shutdown
from mmkit.manager.residency import Residency, check_reload
from mmkit.manager.sources import Fill, exact_bytes, save_path
from mmkit.manager.stats import DimensionStats, Stats
from mmkit.memory.lease import Lease
from mmkit.memory.locks import ForkSafeLock, interrupts_deferred
from mmkit.memory.pool import PoolAllocator, PoolStats
from mmkit.memory.region import Layout, Region, Reservation, plan_layout
from mmkit.memory.views import scratch_view
from mmkit.platform import BACKEND, PlatformError, Protection, VirtualMemory
from mmkit.values.config import DimensionSpec, MemoryConfig
from mmkit.values.errors import (
    AlreadyLoaded,
    ConfigError,
    InvalidArgument,
    InvalidBlock,
    InvalidId,
    InvalidState,
    LayerOutOfRange,
    NotLoaded,
    OwnsMemory,
    from_os_error,
)
from mmkit.values.ids import DimensionId, LayerId
from mmkit.values.state import ManagerState
from mmkit.values.units import format_size

_EMPTY_POOL = PoolStats(0, 0, 0, 0, 0, 0, 0)


class MmapManager(OwnsMemory):
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
        self._lock = ForkSafeLock(held_across_fork=True)
        self._save_lock = ForkSafeLock()
        self._reservation: Reservation | None = None
        self._regions: dict[DimensionId, Region] = {}
        self._pool: PoolAllocator | None = None
        self._published = Publication()
        self._residency = Residency(config)
        self._last_use = self._residency.last_use
        self._ticks = self._residency.ticks
        self._tracked = self._residency.tracked
        self._blocks = Blocks(self._lock, config.user_quota)
        self._spans = Spans(self._vm)
        self._finalizer: weakref.finalize[..., MmapManager] | None = None
        if initialize:
            self.initialize()

    # -- life cycle -------------------------------------------------------------------

    def initialize(self) -> None:
        """Reserve the whole budget in one piece and lay the regions out in it."""
        with self._writing():
            if self._published.state is not ManagerState.UNINITIALIZED:
                raise InvalidState(f"initialize: the manager is {self._published.state.value}")
            layout = self._layout
            try:
                reservation = Reservation(self._vm, layout.size, layout.alignment)
            except PlatformError as exc:
                raise from_os_error(
                    exc, f"reserving {format_size(layout.size)} of address space"
                ) from None
            try:
                if self._config.prefault:
                    self._prefault(reservation)
            except BaseException:
                reservation.drop()
                raise
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
            # A manager dropped without close() gives its memory back like close() would.
            self._finalizer = weakref.finalize(
                self, shutdown, self._published, self._blocks, self._spans, reservation, self._pool
            )
            self._finalizer.atexit = False  # at exit the OS takes it back; readers may still run
            self._published.publish(ManagerState.ALLOCATED)

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
        with self._writing():
            if self._published.state is ManagerState.CLOSED:
                return
            finalizer, self._finalizer = self._finalizer, None
            if finalizer is not None:
                finalizer.detach()
            reservation, self._reservation = self._reservation, None
            pool, self._pool = self._pool, None
            if reservation is None:  # never initialized: nothing to give back
                self._published.publish(ManagerState.CLOSED)
                return
            shutdown(self._published, self._blocks, self._spans, reservation, pool)
            self._residency.data = 0

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
        return self._published.table.state

    def total_allocated(self) -> int:
        """Bytes of the budget mapped for this manager: the limit, from initialisation to close."""
        return self._config.limit if self._published.table.open else 0

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
        return self._config.dimension(dimension).id in self._published.table.layers

    def stats(self) -> Stats:
        """Allocated, committed and resident bytes, what is loaded, the pool, the cap."""
        with self._lock:
            self._reap()
            table = self._published.table
            reservation = self._reservation
            resident = data_resident = 0
            dimensions: list[DimensionStats] = []
            loaded = self._published.loaded
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
                        self._vm.resident(copy.address, copy.size)
                        for dimension in loaded.values()
                        for copy in dimension.copies.values()
                    )
                except PlatformError as exc:
                    raise from_os_error(exc, "measuring resident memory") from None
            pool = self._pool.stats() if self._pool is not None else _EMPTY_POOL
            residency = self._residency
            return Stats(
                state=table.state,
                allocated=self.total_allocated(),
                reserved=reservation.size if reservation is not None else 0,
                committed=sum(d.region.size for d in loaded.values())
                + self._spans.stray_bytes()
                + pool.committed,
                resident=resident,
                loaded=tuple(sorted(table.layers)),
                data=residency.data,
                data_resident=data_resident,
                resident_limit=self._config.effective_resident_limit,
                pinned=residency.pinned,
                evictions=residency.evictions,
                reloads=residency.reloads,
                layer_copies=sum(len(d.copies) for d in loaded.values()),
                pool_size=pool.capacity,
                pool_used=pool.used,
                pool_free=pool.free,
                pool_largest_free=pool.largest_free,
                pool_committed=pool.committed,
                pool_blocks=pool.blocks,
                pool_block_bytes=pool.block_bytes,
                fragmentation=pool.fragmentation,
                owners=dict(self._blocks.owners),
                dimensions=tuple(dimensions),
            )

    def __repr__(self) -> str:
        table = self._published.table
        reservation = self._reservation
        where = f" at {reservation.address:#x}" if reservation is not None else ""
        return (
            f"<MmapManager {table.state.name} limit={format_size(self._config.limit)} "
            f"loaded={len(table.layers)}/{len(self._config.dimensions)}{where}>"
        )

    # -- loading, eviction, saving -------------------------------------------------------

    def load_dimension(self, dimension: object, source: object = None) -> None:
        """Load a dimension's bytes into its region.

        ``source``: None for the data directory's file (zero-filled with no data directory),
        a path to a data file, or a bytes-like object of exactly the dimension's size.
        """
        with self._writing():
            self._reap()
            self._require_open("load_dimension")
            spec = self._config.dimension(dimension)
            if spec.id in self._published.loaded:
                raise AlreadyLoaded(f"dimension {spec.id} ({spec.name}) is already loaded")
            fill = self._resolve_source(spec, source)
            try:
                self._load(spec, fill)
            finally:
                if isinstance(fill, memoryview):
                    fill.release()
            self._make_room(keep=spec.id)

    def evict(self, dimension: object) -> bool:
        """Drop a dimension's bytes from memory if that loses nothing and no reader holds them.

        True when it is no longer in memory; the next access loads it again. False when it
        is not loaded, cannot be proven reloadable as it is (loaded from a buffer, updated
        and not saved since, its file changed or gone), or a reader holds a view of it.
        """
        with self._writing():
            self._reap()
            self._require_open("evict")
            return self._evict(self._config.dimension(dimension).id)

    def save_dimension(self, dimension: object, path: str | os.PathLike[str]) -> Path:
        """Write a dimension's current bytes to a data file, atomically.

        Afterwards the dimension can be dropped under memory pressure and reloaded from
        that file, unless it is updated again first. Saves of one manager run one at a time,
        so a later save always writes later bytes.
        """
        target = save_path(path)
        spec = self._config.dimension(dimension)
        storage.check_savable(spec, self._config.layer_size)
        with self._save_lock:
            with self._writing():
                self._reap()
                self._require_open("save_dimension")
                loaded = self._ensure_loaded(spec)
                version = loaded.version
                views = [view[:] for view in loaded.views]
            try:
                header = storage.write_layers(target, spec, self._config.layer_size, views)
            finally:
                for view in views:
                    view.release()
            with self._writing():
                if self._published.loaded.get(spec.id) is loaded and loaded.version == version:
                    loaded.provenance = Provenance(target, header.layer_checksums)
                self._make_room(keep=spec.id)
        return target

    def _resolve_source(self, spec: DimensionSpec, source: object) -> Fill:
        if source is None:
            data_dir = self._config.data_dir
            return None if data_dir is None else storage.dimension_path(data_dir, spec)
        if isinstance(source, str | os.PathLike):
            return Path(source)
        what = f"source for {spec.id} ({spec.name})"
        return exact_bytes(source, spec.size, what, "None, a path or ")

    def _ensure_loaded(self, spec: DimensionSpec) -> LoadedDimension:
        """The loaded dimension, loading it again (dropped) or on demand (data_dir) if need be."""
        loaded = self._published.loaded.get(spec.id)
        if loaded is not None:
            return loaded
        self._require_loadable(spec)
        dropped = self._residency.dropped.get(spec.id)
        if dropped is not None:
            fill = None if dropped.source == ZERO else Path(dropped.source)
            self._load(spec, fill, expected=dropped.checksums)
        else:
            self._load(spec, self._resolve_source(spec, None))
        return self._published.loaded[spec.id]

    def _require_loadable(self, spec: DimensionSpec) -> None:
        """``NotLoaded`` unless the dimension is loaded or can be loaded without being told how."""
        known = spec.id in self._published.loaded or spec.id in self._residency.dropped
        if not known and self._config.data_dir is None:
            raise NotLoaded(
                f"dimension {spec.id} ({spec.name}) is not loaded and there is no data_dir "
                "to load it from"
            )

    def _load(
        self, spec: DimensionSpec, fill: Fill, *, expected: tuple[int, ...] | None = None
    ) -> None:
        """Commit, fill, verify and publish a region; on any failure give it back as it was.

        ``expected``: the checksums a reload of a dropped dimension must bring back.
        """
        region = self._regions[spec.id]
        spans = self._spans
        spans.settle(region.address, region.size, f"loading {spec.id}")
        try:
            self._vm.commit(region.address, region.size)
        except PlatformError as exc:
            spans.give_back(region.address, region.size)
            raise from_os_error(
                exc, f"committing {format_size(region.size)} for {spec.id}"
            ) from None
        filler = Lease(region.address, region.size, writable=True)
        checksums: tuple[int, ...] | None = None
        try:
            target = filler.view()
            try:
                if isinstance(fill, Path):
                    header = storage.read_dimension(fill, spec, region.layer_size, target)
                    checksums = header.layer_checksums
                    if expected is not None:
                        check_reload(spec.id, fill, checksums, expected)
                elif fill is not None:
                    target[:] = fill
            finally:
                target.release()
            if not filler.close():
                raise InvalidState(f"loading {spec.id}: its memory is still in use")
            self._vm.protect(region.address, region.size, Protection.READ)
        except BaseException as exc:
            spans.give_back(region.address, region.size, filler)
            if isinstance(exc, PlatformError):
                raise from_os_error(exc, f"loading {spec.id}") from None
            raise
        provenance: Provenance | None = None
        if isinstance(fill, Path) and checksums is not None:
            provenance = Provenance(fill, checksums)
        elif fill is None:
            provenance = Provenance(ZERO, zero_checksums(region.layer_count, region.layer_size))
        loaded = LoadedDimension(spec, region, Lease(region.address, region.size), provenance)
        self._published.add(loaded)
        self._residency.loaded(spec.id, region.size)

    def _evict(self, dimension: DimensionId) -> bool:
        loaded = self._published.loaded.get(dimension)
        if loaded is None or not self._residency.provable(loaded):
            return False
        self._published.withdraw(dimension)
        if not loaded.close():
            self._published.restore(loaded)
            self._residency.pinned += loaded.data_bytes
            return False
        region = loaded.region
        self._spans.give_back(region.address, region.size)
        for copy in loaded.copies.values():
            self._spans.reclaim(copy, self._pool)
        self._residency.drop(loaded)
        return True

    def _make_room(self, *, keep: DimensionId | None) -> None:
        """Under a resident limit, drop least recently used dimensions until the data fits.

        Called once the call that grew the data has succeeded. Only dimensions provably
        reloadable and that no reader holds go; past them, the limit is soft.
        """
        residency = self._residency
        residency.pinned = 0
        if not residency.excess():
            return
        for dimension in residency.victims(self._published.loaded, keep):
            self._evict(dimension)
            if not residency.excess():
                return

    # -- reading and updating -----------------------------------------------------------

    def access_layer(self, layer: LayerId) -> memoryview:
        """A read-only, zero-copy ``memoryview`` of one layer's bytes. Takes no lock."""
        table = self._published.table
        if table.active and type(layer) is LayerId:
            try:
                view = table.layers[layer[0]][layer[1]][:]
            except (KeyError, IndexError, ValueError):
                pass  # not loaded, or a writer released the view under us: take the lock
            else:
                if self._tracked:
                    self._last_use[layer[0]] = next(self._ticks)
                return view
        del table  # waiting for the lock with it would keep its views alive
        return self._access_slow(layer)

    def _access_slow(self, layer: object) -> memoryview:
        with self._writing():
            spec, index = self._check_layer("access_layer", layer)
            loaded = self._ensure_loaded(spec)
            if self._published.state is not ManagerState.ACTIVE:
                self._published.publish(ManagerState.ACTIVE)
            self._residency.touch(spec.id)
            try:
                view = loaded.views[index][:]
            except ValueError:  # someone released a published view: publish fresh ones
                view = self._published.refresh(spec.id).views[index][:]
            self._make_room(keep=spec.id)
            return view

    def update_layer(self, layer: LayerId, data: object) -> None:
        """Publish new bytes for a layer (read-copy-update).

        Views taken before keep the old bytes, whole and unchanged; accesses after see the
        new ones. The copy lives in the pool; the old one goes back to it once its last
        reader lets go. A failed update changes nothing.
        """
        with self._writing():
            self._reap()
            spec, index = self._check_layer("update_layer", layer)
            size = self._config.layer_size
            source = exact_bytes(data, size, f"new bytes for {LayerId(spec.id, index)}")
            try:
                self._require_loadable(spec)
                self._publish_copy(spec, index, source)
            finally:
                source.release()
            self._make_room(keep=spec.id)

    def _publish_copy(self, spec: DimensionSpec, index: int, source: memoryview) -> None:
        pool = self._pool
        assert pool is not None
        size = source.nbytes
        address, block = pool.allocate_readonly(size)
        try:
            scratch = scratch_view(address, size)
            scratch[:] = source
            scratch.release()
            self._ensure_loaded(spec)
            # A failed mprotect changes nothing here: the span lies in one read-write mapping.
            self._vm.protect(address, block, Protection.READ)
        except BaseException as exc:
            pool.rollback(address)
            if isinstance(exc, PlatformError):
                raise from_os_error(exc, f"publishing {LayerId(spec.id, index)}") from None
            raise
        self._published.replace_layer(spec.id, index, Lease(address, size))
        self._residency.data += block

    def _check_layer(self, operation: str, layer: object) -> tuple[DimensionSpec, int]:
        if not isinstance(layer, LayerId):
            raise InvalidId(f"{operation} needs a LayerId, not {type(layer).__name__}")
        self._require_open(operation)
        layer = LayerId(layer[0], layer[1])  # the fields as validated, whatever the subclass
        spec = self._config.dimension(layer.dimension)
        count = spec.size // self._config.layer_size
        if layer.index >= count:
            raise LayerOutOfRange(
                f"{spec.id} ({spec.name}) has {count} layers; there is no layer {layer.index}"
            )
        return spec, layer.index

    def _reap(self) -> None:
        """Give back what no one can reach any more: retired layer copies, stray spans."""
        pool = self._pool
        if pool is None:
            return
        for lease in self._published.reclaimable():
            self._spans.reclaim(lease, pool)
            self._residency.data -= lease.size
        self._spans.retry(pool)

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
            self._blocks.check_quota(owner, nbytes, pool.block_size(nbytes))
            address, size = pool.allocate(nbytes)
            return self._blocks.add(address, size, nbytes, owner)

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
            self._blocks.remove(block)
            pool = self._pool
            assert pool is not None
            pool.free(block.address)

    # -- internals --------------------------------------------------------------------

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """The write lock, with Ctrl-C held until the write is whole (see ``memory.locks``)."""
        with self._lock, interrupts_deferred():
            yield

    def _require_open(self, operation: str) -> None:
        table = self._published.table
        if not table.open:
            raise InvalidState(f"{operation}: the manager is {table.state.value}")
