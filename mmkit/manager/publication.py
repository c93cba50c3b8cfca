"""Publication: the table readers see, and retiring what leaves it.

Readers take no lock. They read ``table``, an immutable snapshot that writers replace whole
with one reference assignment, and slice a published view out of it (or, on free-threaded
builds, make their own export of the layer's span: ``dimension.SHARED_VIEWS``). Whatever a
writer takes out of the table it first replaces there, then releases the view it had
published for it: a reader still holding the old table gets ``ValueError`` from that view
(or ``InvalidState`` from a closed lease) and retries under the lock. From then on the
leases say exactly whether some reader still holds a view; retired layer copies wait in
``retired`` until theirs say none does. A shared manager also gives every table to readers in
other processes, and a retired copy waits until none of them pins it either
(``mmkit.memory.shared``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from mmkit.manager.dimension import LoadedDimension, Span
from mmkit.memory.lease import Lease
from mmkit.memory.shared import SharedArena
from mmkit.values.ids import DimensionId
from mmkit.values.state import ManagerState

_OPEN_STATES = frozenset({ManagerState.ALLOCATED, ManagerState.LOADED, ManagerState.ACTIVE})


@dataclass(frozen=True, slots=True)
class Table:
    """What readers see: the state and, per loaded dimension, one view and one span per layer."""

    state: ManagerState
    layers: Mapping[DimensionId, tuple[memoryview, ...]]
    spans: Mapping[DimensionId, tuple[Span, ...]]
    open: bool
    active: bool


class Publication:
    """The loaded dimensions, the table made from them, and copies waiting for readers.

    Not thread-safe by itself: writers call it under the manager's lock.
    """

    __slots__ = ("arena", "loaded", "retired", "table")

    def __init__(self) -> None:
        self.loaded: dict[DimensionId, LoadedDimension] = {}
        self.retired: list[Lease] = []
        self.arena: SharedArena | None = None
        state = ManagerState.UNINITIALIZED
        self.table = Table(state, MappingProxyType({}), MappingProxyType({}), False, False)

    @property
    def state(self) -> ManagerState:
        return self.table.state

    def publish(self, state: ManagerState | None = None, *, mirror: bool = True) -> None:
        """Replace the table with one made from ``loaded`` (and ``state``, if given), and
        give it to readers in other processes too unless not ``mirror``."""
        state = self.table.state if state is None else state
        layers = {dimension: loaded.views for dimension, loaded in self.loaded.items()}
        spans = {dimension: loaded.spans for dimension, loaded in self.loaded.items()}
        self.table = Table(
            state,
            MappingProxyType(layers),
            MappingProxyType(spans),
            state in _OPEN_STATES,
            state is ManagerState.ACTIVE,
        )
        if mirror and self.arena is not None:
            self.arena.publish(spans)

    def add(self, loaded: LoadedDimension) -> None:
        self.loaded[loaded.spec.id] = loaded
        state = self.table.state
        self.publish(ManagerState.LOADED if state is ManagerState.ALLOCATED else state)

    def withdraw(self, dimension: DimensionId, *, mirror: bool = True) -> LoadedDimension:
        """Take a dimension out of the table and release its views; the caller decides next."""
        loaded = self.loaded.pop(dimension)
        self.publish(mirror=mirror)
        loaded.withdraw()
        return loaded

    def restore(self, loaded: LoadedDimension, *, mirror: bool = True) -> None:
        """Publish a withdrawn dimension again, over the same memory."""
        loaded.publish()
        self.loaded[loaded.spec.id] = loaded
        self.publish(mirror=mirror)

    def refresh(self, dimension: DimensionId) -> LoadedDimension:
        """Fresh views for a dimension whose published views someone released."""
        loaded = self.withdraw(dimension)
        self.restore(loaded)
        return loaded

    def replace_layer(self, dimension: DimensionId, index: int, copy: Lease) -> None:
        """Publish ``copy`` as a layer; the copy it replaces waits in ``retired``."""
        old, view = self.loaded[dimension].replace_layer(index, copy)
        self.publish()
        view.release()
        if old is not None:
            self.retired.append(old)

    def reclaimable(self) -> list[Lease]:
        """Retired copies that no reader holds any more (in any process), now closed."""
        if not self.retired:
            return []
        arena = self.arena
        closed = [
            lease
            for lease in self.retired
            if (arena is None or not arena.pinned(lease.address)) and lease.close()
        ]
        if closed:
            self.retired = [lease for lease in self.retired if lease.open]
        return closed

    def withdraw_all(self, state: ManagerState) -> list[Lease]:
        """Empty the table (publishing ``state``); every lease, retired ones included."""
        loaded = list(self.loaded.values())
        self.loaded = {}
        self.publish(state)
        leases = list(self.retired)
        self.retired = []
        for dimension in loaded:
            dimension.withdraw()
            leases += dimension.leases()
        return leases
