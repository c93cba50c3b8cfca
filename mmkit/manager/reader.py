"""``mmkit.attach``: read a shared manager's layers from another process, zero-copy.

A reader maps the owner's arena read-only (the kernel refuses a writable mapping of it) into
a reservation laid out like the owner's, so its regions keep their guard pages. It follows
the owner's table: each ``access_layer`` first compares one word of shared memory, the
owner's generation, with the table it copied last; only when the owner has published since
does it copy the table again, under a shared byte lock.

A reader pins each unit (a dimension, a spare layer) it makes views of, with a shared lock
on the unit's byte, before it trusts the table's word for it, and checks the generation again
after pinning: so the owner, which reuses only units nobody pins, never changes bytes a view
can reach. A unit's pin is held by the lease its views come from and let go, once the lease
has no view left, at the reader's next call that is not a plain read (any call after the
owner published, ``stats``, ``is_loaded``, ``close``). The owner publishes its table again
when it runs out of spare layers, so readers' next reads let go of what they no longer hold.
A reader that dies drops every pin with its descriptor.
"""

from __future__ import annotations

import ctypes
import errno
import os
import weakref
from dataclasses import dataclass
from types import TracebackType
from typing import NamedTuple

from mmkit.manager.dimension import SHARED_VIEWS
from mmkit.memory.arena import (
    CLOSED,
    DESCRIPTION_OFFSET,
    FLAGS_OFFSET,
    GENERATION_OFFSET,
    HEADER,
    MAGIC,
    MAX_DESCRIPTION,
    OWNER_BYTE,
    PUBLISH_BYTE,
    ArenaLayout,
)
from mmkit.memory.lease import Lease, another_view, claim_idle
from mmkit.memory.locks import ForkSafeLock
from mmkit.memory.region import Region, Reservation, plan_layout
from mmkit.memory.shared import AttachedArena, wait_for_lock
from mmkit.platform import BACKEND, SHARING, NotShared, PlatformError, SharedMemory
from mmkit.platform.interrupts import interrupts_deferred
from mmkit.values.config import MemoryConfig
from mmkit.values.errors import (
    AttachError,
    InvalidId,
    InvalidState,
    LayerOutOfRange,
    MmkitError,
    NotLoaded,
    OwnsMemory,
    from_os_error,
)
from mmkit.values.ids import DimensionId, LayerId
from mmkit.values.share import FORMAT, ShareHandle
from mmkit.values.units import format_size


@dataclass(frozen=True, slots=True)
class ReaderStats:
    """A reader's view of the shared memory and of its owner.

    ``owner_alive``: the owner's process still holds the memory and has not closed its
    manager; when False, what was last published stays readable and nothing changes any
    more. ``pinned`` is the bytes of units this reader pins; ``resident`` the bytes of the
    shared data in physical memory (shared with the owner and every other reader).
    """

    owner_pid: int
    owner_alive: bool
    owner_closed: bool
    generation: int
    loaded: tuple[DimensionId, ...]
    mapped: int
    pinned: int
    resident: int


class _Table(NamedTuple):
    """One generation of the owner's table, and what this reader pinned for it."""

    generation: int
    closed: bool
    entries: dict[LayerId, int]  # layer -> the unit holding its bytes; never changed
    loaded: frozenset[DimensionId]
    # Filled under the lock once a layer's unit is pinned for this table: under a GIL the
    # unit's shown view (threads slice it), else its lease. Let go of, they refuse
    # (released, closed), and the read takes the lock.
    ready: dict[LayerId, memoryview | Lease]


_NOTHING = _Table(-1, False, {}, frozenset(), {})


def attach(handle: object, *, sharing: SharedMemory | None = None) -> SharedReader:
    """Attach to a shared manager: ``handle`` is its ``ShareHandle`` or ``str(handle)``.

    ``AttachError`` at once, nothing mapped, for a malformed or stale token, an owner that
    has exited or closed, another user's memory or another share format. ``sharing``
    replaces the OS's calls (for tests that make them fail).
    """
    share = ShareHandle.parse(handle)
    if sharing is not None and not isinstance(sharing, SharedMemory):
        raise AttachError(f"sharing must be a SharedMemory, not {type(sharing).__name__}")
    sharing = SHARING if sharing is None else sharing
    if sharing is None:
        raise AttachError(
            f"this {BACKEND.name} system cannot share memory between processes (mmkit needs "
            "Linux, macOS, or Windows 10 version 1803 or later)"
        )
    user = sharing.user()
    if share.uid != user:
        raise AttachError(
            f"the shared memory belongs to user {share.uid}; this process runs as user {user}, "
            "and only the same user may attach"
        )
    with interrupts_deferred():  # Ctrl-C cannot leave a descriptor or a mapping behind
        fd = _open(sharing, share)
        try:
            arena = _check(sharing, fd, share)
        except BaseException:
            sharing.close(fd)
            raise
        return SharedReader(sharing, fd, share, arena)  # which owns the descriptor from here


def _open(sharing: SharedMemory, share: ShareHandle) -> int:
    """Our own read-only open of the owner's memory, checked to be what the token names."""
    where = f"process {share.pid}'s descriptor {share.handle}"
    try:
        return sharing.reopen(share.pid, share.handle)
    except NotShared:
        raise AttachError(
            f"{where} is not mmkit shared memory any more (the owner exited or closed its "
            "manager, and the number was reused)"
        ) from None
    except (FileNotFoundError, ProcessLookupError, ConnectionRefusedError):
        raise AttachError(
            f"{where} does not exist: the owner exited or closed its manager"
        ) from None
    except PermissionError as exc:
        standard = {os.strerror(errno.EACCES), os.strerror(errno.EPERM)}
        why = (
            "it belongs to another user, or the system restricts access to other processes "
            "(/proc mounted with hidepid, a different pid namespace)"
            if exc.strerror in standard
            else exc.strerror
        )
        raise AttachError(f"not allowed to open {where}: {why}") from None
    except OSError as exc:
        raise AttachError(f"cannot open {where}: {exc.strerror or exc}") from None


def _check(sharing: SharedMemory, fd: int, share: ShareHandle) -> ArenaLayout:
    """The arena's layout, once its header proves it is the live memory the token names."""
    try:
        size = sharing.size(fd)
        header = sharing.read(fd, 0, HEADER.size)
    except OSError as exc:
        raise AttachError(f"cannot read the shared memory: {exc.strerror or exc}") from None
    if len(header) < HEADER.size:
        raise AttachError("the shared memory is too small to be mmkit's")
    magic, version, length, nonce, pid, flags, _, _ = HEADER.unpack(header)
    if magic != MAGIC:
        raise AttachError("the shared memory is not mmkit's")
    if version != FORMAT:
        raise AttachError(
            f"the shared memory is share format {version}; this mmkit reads format {FORMAT} "
            "(owner and reader must run compatible mmkit versions)"
        )
    if nonce.hex() != share.nonce or pid != share.pid:
        raise AttachError(
            "the descriptor is another manager's shared memory than the token's (the owner "
            "closed or exited and the number was reused)"
        )
    if flags & CLOSED:
        raise AttachError(f"the owner (process {pid}) has closed its manager")
    try:
        alive = sharing.locked(fd, OWNER_BYTE)
    except OSError as exc:
        raise AttachError(f"cannot tell whether the owner is alive: {exc}") from None
    if not alive:
        raise AttachError(f"the owner (process {pid}) is gone")
    if DESCRIPTION_OFFSET + length > min(size, MAX_DESCRIPTION):
        raise AttachError(f"the shared memory's layout description ({length} bytes) is damaged")
    try:
        description = sharing.read(fd, DESCRIPTION_OFFSET, length)
        arena = ArenaLayout.parse(description, BACKEND.page_size)
    except (OSError, ValueError) as exc:
        raise AttachError(f"the shared memory's layout cannot be read: {exc}") from None
    if arena.size != size:
        raise AttachError(
            f"the shared memory is {size} bytes; its layout says {arena.size}: it is damaged"
        )
    return arena


class SharedReader(OwnsMemory):
    """A read-only view of a shared manager's layers from another process.

    ``access_layer`` takes no lock while the owner has not published since the last call
    (the usual case). A context manager; ``close()`` keeps every view it handed out
    readable until the view is gone.
    """

    def __init__(
        self, sharing: SharedMemory, fd: int, share: ShareHandle, arena: ArenaLayout
    ) -> None:
        self._share = share
        self._sharing = sharing
        self._arena_layout = arena
        self._layer_size = arena.layer_size
        self._config = arena.config()
        alignment = max(BACKEND.granularity, BACKEND.huge_page_size)
        layout = plan_layout(self._config, BACKEND.page_size, alignment)
        self._memory = AttachedArena(BACKEND, sharing, fd, layout, arena)
        try:
            self._reservation = Reservation(self._memory, layout.size, layout.alignment)
        except BaseException as exc:
            sharing.close(fd)
            if isinstance(exc, PlatformError):
                raise AttachError(f"mapping the shared memory: {exc}") from None
            raise
        self._regions = layout.regions(self._memory.base)
        self._layers = arena.layers()
        self._generation = ctypes.c_uint64.from_address(self._memory.control + GENERATION_OFFSET)
        self._table = _NOTHING
        self._lock = ForkSafeLock(held_across_fork=True)
        self._holdings = _Holdings(self._lock, self._reservation)
        self._leases = self._holdings.leases
        self._shown = self._holdings.shown
        # Dropped without close(): give back what no view holds, as close() would.
        finalizer = weakref.finalize(self, _abandon, self._holdings, self._memory)
        finalizer.atexit = False  # at exit the OS takes it back; threads may still read
        try:
            with self._lock:
                self._refresh()
        except BaseException as exc:
            finalizer()
            if isinstance(exc, MmkitError):
                raise AttachError(f"reading the owner's table: {exc}") from None
            raise

    # -- reading ------------------------------------------------------------------------

    def access_layer(self, layer: LayerId) -> memoryview:
        """A read-only, zero-copy view of a layer as the owner last published it."""
        table = self._table
        if type(layer) is LayerId and self._generation.value == table.generation:
            try:
                ready = table.ready[layer]
                if SHARED_VIEWS:
                    return another_view(ready)  # type: ignore[arg-type]
                return ready.view()  # type: ignore[union-attr]
            except (KeyError, ValueError, InvalidState):
                pass  # not pinned for this table yet, or let go of since
        del table
        return self._access_slow(layer)

    def _access_slow(self, layer: object) -> memoryview:
        if not isinstance(layer, LayerId):
            raise InvalidId(f"access_layer needs a LayerId, not {type(layer).__name__}")
        plain = layer if type(layer) is LayerId else LayerId(layer[0], layer[1])
        with self._lock:
            while True:
                table = self._refresh()
                unit = table.entries.get(plain)
                if unit is None:
                    raise self._missing(plain, table)
                lease = self._leases.get(unit)
                if lease is not None and not lease.open:  # let go of, then interrupted
                    del self._leases[unit]
                    self._memory.unpin(unit)
                    lease = None
                if lease is None:
                    if not self._pin(unit, table):
                        continue  # the owner published meanwhile: read its new table
                    lease = self._leases[unit]
                if SHARED_VIEWS:
                    shown = self._shown.get(unit)
                    if shown is None:  # a let-go interrupted before it showed a new one
                        shown = self._shown[unit] = lease.view()
                    table.ready[plain] = shown
                else:
                    table.ready[plain] = lease
                return lease.view()

    def _pin(self, unit: int, table: _Table) -> bool:
        """Pin a unit and make its lease (and the view threads slice, under a GIL), if the
        table still holds once it is pinned."""
        memory = self._memory
        with interrupts_deferred():  # a pin is never held without the lease that lets go of it
            try:
                pinned = memory.pin(unit)
            except PlatformError as exc:
                raise from_os_error(exc, "pinning shared memory") from None
            if not pinned:
                raise InvalidState(f"unit {unit} of the shared memory cannot be pinned")
            try:
                if self._generation.value != table.generation:
                    memory.unpin(unit)
                    return False
                lease = Lease(memory.unit_address(unit), self._layer_size)
                self._leases[unit] = lease
                if SHARED_VIEWS:
                    self._shown[unit] = lease.view()
            except BaseException:  # a signal handler's exception: no pin without its lease
                self._leases.pop(unit, None)
                memory.unpin(unit)
                raise
            return True

    def _refresh(self, *, let_go: bool = False) -> _Table:
        """The owner's current table (copied again if it published since); under the lock.

        Pins no view needs any more are let go of when the table changed, or if ``let_go``
        (the calls that are not reads): not on a read that only pins, or readers that take
        one layer after another would let go of each as they take the next.
        """
        if self._holdings.closed:
            raise InvalidState("the reader is closed")
        if self._memory.orphaned:
            raise InvalidState("this forked copy of a reader could not keep its pins; attach again")
        table = self._table
        if self._generation.value == table.generation:
            if let_go:
                self._let_go()
            return table
        generation, flags, raw = self._copy_table()
        arena = self._arena_layout
        entries: dict[LayerId, int] = {}
        for layer, word in zip(self._layers, memoryview(raw).cast("Q"), strict=True):
            offset = arena.decode_entry(word)
            if offset is not None:
                entries[layer] = arena.unit_of(offset)
        loaded = frozenset(layer.dimension for layer in entries)
        table = _Table(generation, bool(flags & CLOSED), entries, loaded, {})
        self._table = table
        self._let_go()
        return table

    def _copy_table(self) -> tuple[int, int, bytes]:
        """Generation, flags and table words, copied whole.

        Under the shared publish lock; and since an owner that waited too long for it
        writes without it, the generation is read again once the lock is let go (two lock
        calls later, which order the reads on every CPU): if it moved, the copy is taken
        again.
        """
        memory, sharing = self._memory, self._sharing
        control, size = memory.control, 8 * len(self._layers)
        for _ in range(1000):
            try:
                try:  # let go in any case: an exception may come just after the lock is taken
                    # (and from a signal handler, even inside the unlock below: so the next
                    # copy begins by letting go of whatever the last one left)
                    sharing.unlock(memory.handle, PUBLISH_BYTE)
                    if not wait_for_lock(sharing, memory.handle, PUBLISH_BYTE, exclusive=False):
                        raise InvalidState(
                            f"the owner (process {self._share.pid}) has been writing its table "
                            "for too long (stopped?); try again"
                        )
                    generation = self._generation.value
                    flags = ctypes.c_uint64.from_address(control + FLAGS_OFFSET).value
                    raw = ctypes.string_at(control + self._arena_layout.table_offset, size)
                finally:
                    sharing.unlock(memory.handle, PUBLISH_BYTE)  # a no-op if not taken
                sharing.locked(memory.handle, PUBLISH_BYTE)
            except PlatformError as exc:
                raise from_os_error(exc, "reading the owner's table") from None
            if self._generation.value == generation:
                return generation, flags, raw
        raise InvalidState(f"the owner (process {self._share.pid}) publishes without pause")

    def _let_go(self) -> None:
        """Unpin every unit no view of which is left (closed readers' too, see ``close``)."""
        claim_idle()
        with interrupts_deferred():
            for unit, lease in list(self._leases.items()):
                shown = self._shown.pop(unit, None)
                if shown is not None:
                    shown.release()  # readers racing this get ValueError and come here
                if lease.close():
                    try:
                        del self._leases[unit]
                    finally:
                        self._memory.unpin(unit)
                elif SHARED_VIEWS:
                    shown = self._shown[unit] = lease.view()
                    ready, entries = self._table.ready, self._table.entries
                    for layer in [layer for layer in ready if entries[layer] == unit]:
                        ready[layer] = shown  # the fast path goes on with the new view
            for unit in self._memory.pins - self._leases.keys():
                self._memory.unpin(unit)  # pinned, then interrupted before its lease was made

    def _missing(self, layer: LayerId, table: _Table) -> Exception:
        spec = self._config.dimension(layer.dimension)
        count = spec.size // self._layer_size
        if layer.index >= count:
            return LayerOutOfRange(
                f"{spec.id} ({spec.name}) has {count} layers; there is no layer {layer.index}"
            )
        if table.closed:
            return NotLoaded(
                f"dimension {spec.id} ({spec.name}) was not loaded when the owner "
                f"(process {self._share.pid}) closed its manager"
            )
        return NotLoaded(
            f"dimension {spec.id} ({spec.name}) is not loaded in the owner (process "
            f"{self._share.pid}): never loaded, or evicted; readers see it once the owner "
            "loads it again"
        )

    # -- queries ------------------------------------------------------------------------

    def is_loaded(self, dimension: object) -> bool:
        """Whether the owner has a dimension published now."""
        spec = self._config.dimension(dimension)
        with self._lock:
            return spec.id in self._refresh(let_go=True).loaded

    def regions(self) -> tuple[Region, ...]:
        """The dimension regions as mapped in this process, in address order."""
        self._require_open("regions")
        return tuple(sorted(self._regions.values(), key=lambda r: r.address))

    def region(self, dimension: object) -> Region:
        self._require_open("region")
        return self._regions[self._config.dimension(dimension).id]

    @property
    def handle(self) -> ShareHandle:
        return self._share

    @property
    def config(self) -> MemoryConfig:
        """The owner's dimensions and layer size, as a configuration (``layer_count`` and
        ``dimension`` answer for the shared data); its limit is the shared data's size."""
        return self._config

    def stats(self) -> ReaderStats:
        """The owner's state, what is published, what this reader maps and pins."""
        with self._lock:
            table = self._refresh(let_go=True)
            memory = self._memory
            pinned = len(self._leases) * self._layer_size
            owner = self._sharing.locked(memory.handle, OWNER_BYTE)
            resident = sum(
                memory.resident(region.address, region.size) for region in self._regions.values()
            )
            layout = self._memory.layout
            if layout.spares_size:
                spares = memory.base + layout.spares_offset
                resident += memory.resident(spares, layout.spares_size)
        return ReaderStats(
            owner_pid=self._share.pid,
            owner_alive=owner and not table.closed,
            owner_closed=table.closed,
            generation=table.generation,
            loaded=tuple(sorted(table.loaded)),
            mapped=self._arena_layout.size - self._arena_layout.control_size,
            pinned=pinned,
            resident=resident,
        )

    def __repr__(self) -> str:
        state = "closed" if self._holdings.closed else "attached"
        return (
            f"<SharedReader {state} to process {self._share.pid} "
            f"({format_size(self._arena_layout.size)})>"
        )

    # -- closing ------------------------------------------------------------------------

    def close(self) -> None:
        """Let go of the shared memory; views still held keep it, and its pins, until they
        are gone and then this process's next garbage collection or next call of a reader
        that takes a lock (``stats``, ``is_loaded``, a read after the owner published)."""
        self._table = _NOTHING
        self._holdings.close()

    def __enter__(self) -> SharedReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _require_open(self, operation: str) -> None:
        if self._holdings.closed:
            raise InvalidState(f"{operation}: the reader is closed")


class _Holdings:
    """What a reader holds: its pinned units' leases, the views its threads slice, and the
    reservation (with the arena's mapping and descriptor) they keep. Apart from the reader,
    so that one dropped without ``close()`` gives them back too."""

    __slots__ = ("closed", "leases", "lock", "reservation", "shown")

    def __init__(self, lock: ForkSafeLock, reservation: Reservation) -> None:
        self.lock = lock
        self.reservation = reservation
        self.leases: dict[int, Lease] = {}  # pinned units
        self.shown: dict[int, memoryview] = {}  # a view of each, that threads slice
        self.closed = False

    def close(self) -> None:
        """Give back all that no view reaches now, the rest as its last view goes; whole,
        whatever interrupts it."""
        with interrupts_deferred(), self.lock:
            if self.closed:
                return
            self.closed = True
            for shown in self.shown.values():
                shown.release()
            self.shown.clear()
            leases = list(self.leases.values())
            self.leases.clear()
            reservation = self.reservation
            for lease in leases:
                if not lease.close():
                    reservation.hold()
                    lease.close_when_idle(reservation.drop)
            reservation.drop()


def _abandon(holdings: _Holdings, memory: AttachedArena) -> None:
    """``close()`` for a reader collected without it; then its control area can go too."""
    holdings.close()
    memory.forget()
