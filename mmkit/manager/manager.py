"""``MmapManager``: the budget, the spec's state machine, and the face over its parts.

Readers take no lock: ``access_layer`` slices a published view out of the table
(``publication``), or makes its own export of the layer where threads run at once. Writers
go one at a time through ``self._guard`` (which also holds Ctrl-C and refuses re-entry) and
publish a new table when done. Whatever a caller passes in is turned into plain values
before the guard, so no caller code runs inside a write.
Memory goes back to the OS or the pool only when its lease says that no view of it is left
(``mmkit.memory.lease``); residency under ``resident_limit`` is ``residency``, pool blocks
``blocks``, and giving everything back at close ``shutdown``.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from types import TracebackType

from mmkit import storage
from mmkit.manager.blocks import Block, Blocks
from mmkit.manager.closing import abandon, shutdown
from mmkit.manager.dimension import SHARED_VIEWS, ZERO, LoadedDimension, Provenance
from mmkit.manager.loading import load_region
from mmkit.manager.publication import Publication
from mmkit.manager.reclaim import Spans
from mmkit.manager.residency import Residency
from mmkit.manager.sources import Fill, exact_bytes, resolve
from mmkit.manager.stats import Stats, measure
from mmkit.memory.arena import ArenaLayout
from mmkit.memory.lease import Lease, another_view
from mmkit.memory.locks import ForkSafeLock, WriteGuard
from mmkit.memory.pool import PoolAllocator
from mmkit.memory.region import Layout, Region, Reservation, plan_layout
from mmkit.memory.shared import SharedArena
from mmkit.memory.views import scratch_view
from mmkit.platform import (
    BACKEND,
    SHARING,
    PlatformError,
    Protection,
    SharedMemory,
    VirtualMemory,
)
from mmkit.values.config import DimensionSpec, MemoryConfig
from mmkit.values.errors import (
    AlreadyLoaded,
    ConfigError,
    InvalidId,
    InvalidState,
    LayerOutOfRange,
    LimitExceeded,
    NotLoaded,
    OwnsMemory,
    from_os_error,
)
from mmkit.values.ids import DimensionId, LayerId
from mmkit.values.share import ShareHandle
from mmkit.values.state import ManagerState
from mmkit.values.units import format_size


class MmapManager(OwnsMemory):
    """A fixed memory budget as named, page-aligned regions, served as zero-copy views."""

    def __init__(
        self,
        config: MemoryConfig | None = None,
        *,
        initialize: bool = True,
        backend: VirtualMemory | None = None,
        sharing: SharedMemory | None = None,
    ) -> None:
        if config is None:
            config = MemoryConfig()
        elif not isinstance(config, MemoryConfig):
            raise ConfigError(f"config must be a MemoryConfig, not {type(config).__name__}")
        if backend is not None and not isinstance(backend, VirtualMemory):
            raise ConfigError(f"backend must be a VirtualMemory, not {type(backend).__name__}")
        if sharing is not None and not isinstance(sharing, SharedMemory):
            raise ConfigError(f"sharing must be a SharedMemory, not {type(sharing).__name__}")
        self._config = config
        vm = BACKEND if backend is None else backend
        alignment = max(vm.granularity, vm.huge_page_size)
        self._layout: Layout = plan_layout(config, vm.page_size, alignment)
        arena = None
        if config.shared:
            sharing = SHARING if sharing is None else sharing
            config.check_sharing(sharing)
            assert sharing is not None
            arena = SharedArena(vm, sharing, self._layout, ArenaLayout.plan(config, vm.page_size))
            vm = arena
        self._vm = vm
        self._guard = WriteGuard()
        self._save_lock = ForkSafeLock()
        self._reservation: Reservation | None = None
        self._regions: dict[DimensionId, Region] = {}
        self._published = Publication()
        self._published.arena = arena
        self._spans = Spans(self._vm, arena)
        self._residency = Residency(config, self._published, self._spans)
        self._last_use = self._residency.last_use
        self._ticks = self._residency.ticks
        self._tracked = self._residency.tracked
        self._blocks = Blocks(
            self._guard, config.user_quota, self._published, self._residency, self._spans
        )
        self._finalizer: weakref.finalize[..., MmapManager] | None = None
        if initialize:
            self.initialize()

    # -- life cycle -------------------------------------------------------------------

    def initialize(self) -> None:
        """Reserve the whole budget in one piece and lay the regions out in it."""
        with self._guard:
            if self._published.state is not ManagerState.UNINITIALIZED:
                raise InvalidState(f"initialize: the manager is {self._published.state.value}")
            layout = self._layout
            reservation = layout.reserve(self._vm, prefault=self._config.prefault)
            self._reservation = reservation
            self._regions = layout.regions(reservation.address)
            self._spans.pool = PoolAllocator(
                self._vm,
                reservation.address + layout.pool_offset,
                layout.pool_size,
                committed=self._config.prefault,
            )
            # A manager dropped without close() gives its memory back like close() would.
            self._finalizer = weakref.finalize(
                self, abandon, self._guard, self._published, self._blocks, self._spans, reservation
            )
            self._finalizer.atexit = False  # at exit the OS takes it back; readers may still run
            self._published.publish(ManagerState.ALLOCATED)

    def close(self) -> None:
        """Give the memory back. Views still held keep their memory until they are gone."""
        with self._guard:
            if self._published.state is ManagerState.CLOSED:
                return
            finalizer, self._finalizer = self._finalizer, None
            if finalizer is not None:
                finalizer.detach()
            reservation, self._reservation = self._reservation, None
            if reservation is None:  # never initialized: nothing to give back
                self._published.publish(ManagerState.CLOSED)
                return
            shutdown(self._published, self._blocks, self._spans, reservation)
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
        with self._guard:
            self._residency.reap()
            return measure(
                self._config,
                self._reservation,
                self.regions() if self._published.table.open else (),
                published=self._published,
                residency=self._residency,
                spans=self._spans,
                blocks=self._blocks,
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
        self._require_open("load_dimension")
        spec = self._config.dimension(dimension)
        self._require_unloaded(spec)
        fill = resolve(spec, source, self._config.data_dir)
        try:
            with self._guard:
                self._residency.reap()
                self._require_open("load_dimension")
                self._require_unloaded(spec)
                self._load(spec, fill)
                self._residency.make_room(keep=spec.id)
        finally:
            if isinstance(fill, memoryview):
                fill.release()

    def evict(self, dimension: object) -> bool:
        """Drop a dimension's bytes from memory if that loses nothing and no reader holds them.

        True when it is no longer in memory; the next access loads it again. False when it
        is not loaded, cannot be proven reloadable as it is (loaded from a buffer, updated
        and not saved since, its file changed or gone), or a reader holds a view of it.
        """
        self._require_open("evict")
        spec = self._config.dimension(dimension)
        with self._guard:
            self._residency.reap()
            self._require_open("evict")
            return self._residency.evict(spec.id)

    def save_dimension(self, dimension: object, path: str | os.PathLike[str]) -> Path:
        """Write a dimension's current bytes to a data file, atomically.

        Afterwards the dimension can be dropped under memory pressure and reloaded from
        that file, unless it is updated again first. Saves of one manager run one at a time,
        so a later save always writes later bytes.
        """
        target = Path(storage.checked_path(path))
        spec = self._config.dimension(dimension)
        storage.check_savable(spec, self._config.layer_size)
        with self._save_lock:
            with self._guard:
                self._residency.reap()
                self._require_open("save_dimension")
                loaded = self._ensure_loaded(spec)
                version = loaded.version
                views = [loaded.layer_view(index) for index in range(len(loaded.views))]
            try:
                header = storage.write_layers(target, spec, self._config.layer_size, views)
            finally:
                for view in views:
                    view.release()
            with self._guard:
                if self._published.loaded.get(spec.id) is loaded and loaded.version == version:
                    source = target.absolute()
                    loaded.provenance = Provenance(source, header.layer_checksums, header.identity)
                self._residency.make_room(keep=spec.id)
        return target

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
            self._load(spec, resolve(spec, None, self._config.data_dir))
        return self._published.loaded[spec.id]

    def _require_unloaded(self, spec: DimensionSpec) -> None:
        if spec.id in self._published.loaded:
            raise AlreadyLoaded(f"dimension {spec.id} ({spec.name}) is already loaded")

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
        loaded = load_region(self._spans, self._regions[spec.id], spec, fill, expected=expected)
        self._published.add(loaded)
        self._residency.loaded(spec.id, loaded.region.size)

    # -- reading and updating -----------------------------------------------------------

    def access_layer(self, layer: LayerId) -> memoryview:
        """A read-only, zero-copy ``memoryview`` of one layer's bytes. Takes no lock."""
        table = self._published.table
        if table.active and type(layer) is LayerId:
            try:
                if SHARED_VIEWS:
                    view = another_view(table.layers[layer[0]][layer[1]])
                else:
                    lease, start, size = table.spans[layer[0]][layer[1]]
                    view = lease.view(start, size)
            except (KeyError, IndexError, ValueError, InvalidState):
                pass  # not loaded, or a writer withdrew the layer under us: take the lock
            else:
                if self._tracked:
                    self._last_use[layer[0]] = next(self._ticks)
                return view
        del table  # waiting for the lock with it would keep its views alive
        return self._access_slow(layer)

    def _access_slow(self, layer: object) -> memoryview:
        plain = self._plain_layer("access_layer", layer)
        with self._guard:
            spec, index = self._check_layer("access_layer", plain)
            loaded = self._ensure_loaded(spec)
            if self._published.state is not ManagerState.ACTIVE:
                self._published.publish(ManagerState.ACTIVE)
            self._residency.touch(spec.id)
            try:
                view = loaded.layer_view(index)
            except ValueError:  # someone released a published view: publish fresh ones
                view = self._published.refresh(spec.id).layer_view(index)
            self._residency.make_room(keep=spec.id)
            return view

    def update_layer(self, layer: LayerId, data: object) -> None:
        """Publish new bytes for a layer (read-copy-update).

        Views taken before keep the old bytes, whole and unchanged; accesses after see the
        new ones. The copy lives in the pool; the old one goes back to it once its last
        reader lets go. A failed update changes nothing.
        """
        plain = self._plain_layer("update_layer", layer)
        source = exact_bytes(data, self._config.layer_size, f"new bytes for {plain}")
        try:
            with self._guard:
                self._residency.reap()
                spec, index = self._check_layer("update_layer", plain)
                self._require_loadable(spec)
                self._publish_copy(spec, index, source)
                self._residency.make_room(keep=spec.id)
        finally:
            source.release()

    def _publish_copy(self, spec: DimensionSpec, index: int, source: memoryview) -> None:
        if self._spans.arena is not None and self._rewrite_home(spec, index, source):
            return
        pool = self._spans.arena or self._pool  # a shared manager's copies go to spare layers
        assert pool is not None
        size = source.nbytes
        try:
            try:
                address, block = pool.allocate_readonly(size)
            except LimitExceeded:
                if self._spans.arena is None:
                    raise
                self._move_copies_home()
                address, block = pool.allocate_readonly(size)
        except PlatformError as exc:
            raise from_os_error(exc, f"making room for {LayerId(spec.id, index)}") from None
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

    def _move_copies_home(self) -> None:
        """Move updated layers back into their homes where nothing reaches the old bytes
        there, and give back the spare layers that frees (a shared manager out of them)."""
        arena = self._spans.arena
        assert arena is not None
        for loaded in list(self._published.loaded.values()):
            for index, copy in list(loaded.copies.items()):
                if arena.owns(copy.address):
                    source = scratch_view(copy.address, copy.size)
                    try:
                        self._rewrite_home(loaded.spec, index, source)
                    finally:
                        source.release()
        self._residency.reap()

    def _rewrite_home(self, spec: DimensionSpec, index: int, source: memoryview) -> bool:
        """Write an updated layer back into its home when nothing, in any process, reaches the
        bytes there any more: True if it did. For shared managers, whose spare layers are few:
        a layer's bytes move between its home and one spare layer."""
        arena = self._spans.arena
        loaded = self._published.loaded.get(spec.id)
        if arena is None or loaded is None or index not in loaded.copies:
            return False
        home = loaded.homes[index]
        if arena.pinned(home.address) or not home.close():
            return False
        address, size = home.address, home.size
        try:
            self._vm.protect(address, size, Protection.READ_WRITE)
            try:
                scratch = scratch_view(address, size)
                scratch[:] = source
                scratch.release()
            finally:
                self._vm.protect(address, size, Protection.READ)
        except BaseException as exc:
            loaded.homes[index] = Lease(address, size)
            if isinstance(exc, PlatformError):
                raise from_os_error(exc, f"publishing {LayerId(spec.id, index)}") from None
            raise
        self._published.replace_layer(spec.id, index, Lease(address, size))
        return True

    def _plain_layer(self, operation: str, layer: object) -> LayerId:
        """``layer`` as a plain, validated ``LayerId`` (a subclass's own code runs here)."""
        if not isinstance(layer, LayerId):
            raise InvalidId(f"{operation} needs a LayerId, not {type(layer).__name__}")
        self._require_open(operation)
        return layer if type(layer) is LayerId else LayerId(layer[0], layer[1])

    def _check_layer(self, operation: str, layer: LayerId) -> tuple[DimensionSpec, int]:
        self._require_open(operation)
        spec = self._config.dimension(layer.dimension)
        count = spec.size // self._config.layer_size
        if layer.index >= count:
            raise LayerOutOfRange(
                f"{spec.id} ({spec.name}) has {count} layers; there is no layer {layer.index}"
            )
        return spec, layer.index

    # -- sharing ------------------------------------------------------------------------

    def share(self) -> ShareHandle:
        """A handle other processes of this user attach to (``mmkit.attach``), read-only.

        Picklable and reusable; ``str(handle)`` is a token for an environment variable or a
        command line. Needs ``MemoryConfig(shared=True)``.
        """
        self._require_open("share")
        arena = self._spans.arena
        if arena is None:
            raise InvalidState("share: this manager was made without MemoryConfig(shared=True)")
        if arena.forked:
            raise InvalidState(
                f"share: this is a forked copy of the manager of process {arena.owner}; "
                "attach to that process's handle instead"
            )
        return arena.handle_for()

    # -- the pool -----------------------------------------------------------------------

    def allocate(self, nbytes: int, *, owner: str | None = None) -> Block:
        """A zeroed block of at least ``nbytes`` from the pool, drawn from ``owner``'s quota.

        ``LimitExceeded`` (also a ``MemoryError``) when the pool or the quota cannot hold it.
        """
        return self._blocks.allocate(nbytes, owner)

    def free(self, block: Block) -> None:
        """Return a block to the pool; its bytes are zeroed before anyone else gets them.

        ``block.view`` is released; any other view of the block (a slice of it, a numpy
        array over it) makes ``free`` refuse with ``BlockInUse`` and change nothing.
        """
        self._blocks.free(block)

    # -- internals --------------------------------------------------------------------

    @property
    def _pool(self) -> PoolAllocator | None:
        return self._spans.pool

    def _require_open(self, operation: str) -> None:
        table = self._published.table
        if not table.open:
            raise InvalidState(f"{operation}: the manager is {table.state.value}")
