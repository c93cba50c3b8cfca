"""The owner's side of a shared arena: the ``VirtualMemory`` its regions are committed through.

A shared manager reserves its budget as usual, but committing a dimension's region or a
spare layer maps that span of the arena over it (``MAP_SHARED``) instead of private memory,
and decommitting maps the reservation back and gives the arena's pages back to the OS. So
loading, eviction, updates and closing work as for a private manager, on memory that
readers in other processes map too.

What readers can reach is never reused: a unit (a dimension's span, a spare layer) goes back
to the OS or to the free spares only when it is not in the last table readers were given,
and no reader's open of the arena holds a pin on it. Readers pin with shared byte locks
(``mmkit.memory.arena``); the owner only looks (``locked``), so a pin never waits for it.

A forked child of the owner shares the arena's pages with it. It must not change them, and
what its copy of the manager can still read must stay as it is: before ``fork`` every unit
in use is pinned through a fresh open of the arena, which the child keeps and the parent
closes; in the child the arena refuses to write, punch or publish.
"""

from __future__ import annotations

import array
import bisect
import contextlib
import ctypes
import errno
import os
import secrets
import time
from collections.abc import Iterable, Mapping

from mmkit.memory.arena import (
    CLOSED,
    DESCRIPTION_OFFSET,
    FIRST_PIN,
    FLAGS_OFFSET,
    GENERATION_OFFSET,
    HEADER,
    MAGIC,
    OWNER_BYTE,
    PUBLISH_BYTE,
    ArenaLayout,
)
from mmkit.memory.lease import Lease
from mmkit.memory.locks import ForkAware, ForkSafeLock, watch_fork
from mmkit.memory.region import Layout
from mmkit.platform import Advice, PlatformError, Protection, SharedMemory, VirtualMemory
from mmkit.platform.interrupts import interrupts_deferred
from mmkit.values.errors import LimitExceeded
from mmkit.values.ids import DimensionId
from mmkit.values.share import FORMAT, ShareHandle
from mmkit.values.units import format_size

LOCK_PATIENCE = 2.0
"""Seconds the owner waits for readers to let go of the table (a reader holds it only while
it copies it, so longer means a stopped reader), and a reader for the owner to finish
writing it (longer means a stopped owner)."""


REMIND_EVERY = 0.1
"""Seconds between the owner's reminders to readers to let go of idle pins."""


def wait_for_lock(sharing: SharedMemory, handle: int, byte: int, *, exclusive: bool) -> bool:
    """Take a byte lock, polling for up to ``LOCK_PATIENCE`` seconds; False if it stays held."""
    if sharing.lock(handle, byte, exclusive=exclusive):
        return True
    deadline = time.monotonic() + LOCK_PATIENCE
    pause = 20e-6
    while time.monotonic() < deadline:
        time.sleep(pause)
        if sharing.lock(handle, byte, exclusive=exclusive):
            return True
        pause = min(pause * 2, 1e-3)
    return False


def shared_parts(layout: Layout, arena: ArenaLayout) -> list[tuple[int, int, int]]:
    """The parts of the reservation the arena is mapped over, in address order: (offset in
    the reservation, size, offset in the arena)."""
    parts = [
        (start, spec.size, offset)
        for (spec, start), offset in zip(layout.dimensions, arena.offsets, strict=True)
    ]
    if layout.spares_size:
        parts.append((layout.spares_offset, layout.spares_size, arena.spares_offset))
    return parts


class _Over:
    """A ``VirtualMemory`` over another one: what a subclass does not change, it passes on."""

    def __init__(self, inner: VirtualMemory) -> None:
        self.name = inner.name
        self.page_size = inner.page_size
        self.granularity = inner.granularity
        self.huge_page_size = inner.huge_page_size
        self.inner = inner

    def reserve(self, size: int, alignment: int = 0) -> int:
        return self.inner.reserve(size, alignment)

    def release(self, address: int, size: int) -> None:
        self.inner.release(address, size)

    def commit(self, address: int, size: int) -> None:
        self.inner.commit(address, size)

    def decommit(self, address: int, size: int) -> None:
        self.inner.decommit(address, size)

    def protect(self, address: int, size: int, protection: Protection) -> None:
        self.inner.protect(address, size, protection)

    def advise(self, address: int, size: int, advice: Advice) -> bool:
        return self.inner.advise(address, size, advice)

    def prefault(self, address: int, size: int) -> None:
        self.inner.prefault(address, size)

    def lock(self, address: int, size: int) -> None:
        self.inner.lock(address, size)

    def unlock(self, address: int, size: int) -> None:
        self.inner.unlock(address, size)

    def resident(self, address: int, size: int) -> int:
        return self.inner.resident(address, size)


class SharedArena(_Over, ForkAware):
    """``VirtualMemory`` for a shared manager, and the arena behind it: publishing, pins,
    spare layers. Not thread-safe by itself: the manager calls it under its lock (the fork
    hooks, which run between writes, aside)."""

    def __init__(
        self, inner: VirtualMemory, sharing: SharedMemory, layout: Layout, arena: ArenaLayout
    ) -> None:
        super().__init__(inner)
        self.sharing = sharing
        self.layout = layout
        self.arena = arena
        self.nonce = secrets.token_hex(16)
        self.owner = os.getpid()
        self.handle = -1
        self.control = 0
        self.base = 0
        self.generation = 0
        self.busy: set[int] = set()
        self.published: frozenset[int] = frozenset()
        self.closed = False
        self.forked = False
        self._layers = arena.layers()
        self._first_slot: dict[DimensionId, int] = {}
        for slot, layer in enumerate(self._layers):
            self._first_slot.setdefault(layer.dimension, slot)
        self._shared = shared_parts(layout, arena)
        self._starts = [start for start, _, _ in self._shared]
        self._free = list(range(arena.spare_layers - 1, -1, -1))
        self._unsettled: set[int] = set()
        self._fork_pins = -1
        self._kept: set[int] = set()  # in use at a fork whose pins could not be made
        self._impatient = False
        self._reminded = 0.0
        self._lock = ForkSafeLock()
        watch_fork(self)

    # -- VirtualMemory ------------------------------------------------------------------

    def reserve(self, size: int, alignment: int = 0) -> int:
        """Make the shared object and its control area, then reserve the budget."""
        sharing, arena = self.sharing, self.arena
        handle = sharing.create(arena.size, arena.control_size)
        control = 0
        try:
            control = sharing.map(None, arena.control_size, handle, 0, writable=True)
            self.inner.advise(control, arena.control_size, Advice.DONTFORK)
            header = HEADER.pack(
                MAGIC,
                FORMAT,
                len(arena.description),
                bytes.fromhex(self.nonce),
                self.owner,
                0,
                0,
                arena.table_offset,
            )
            ctypes.memmove(control, header, len(header))
            ctypes.memmove(control + DESCRIPTION_OFFSET, arena.description, len(arena.description))
            if not sharing.lock(handle, OWNER_BYTE, exclusive=True):
                raise PlatformError("lock", "owner byte", errno.EAGAIN, "held", exhausted=False)
            layout = self.layout
            pool = [(layout.pool_offset, size - layout.pool_offset)] if layout.pool_size else []
            self.base = sharing.reserve(size, alignment, pool)
        except BaseException:
            if control:
                sharing.unmap(control, arena.control_size)
            sharing.close(handle)
            raise
        self.handle, self.control = handle, control
        return self.base

    def release(self, address: int, size: int) -> None:
        """Give the reservation back, and with it this process's hold on the arena."""
        try:
            self.sharing.release(address, size)
        finally:
            self.finish()
            if self.control and not self.forked:
                self.sharing.unmap(self.control, self.arena.control_size)
            self.control = 0
            for name in ("handle", "_fork_pins"):
                handle = getattr(self, name)
                if handle >= 0:
                    setattr(self, name, -1)
                    self.sharing.close(handle)

    def commit(self, address: int, size: int) -> None:
        offset = self._offset(address, size)
        if offset is None:
            self.inner.commit(address, size)
            return
        if self.forked or self.closed:
            who = "a forked child of the owner" if self.forked else "a closed owner"
            raise PlatformError(
                "mmap",
                f"{address:#x}, {size}, shared",
                errno.EPERM,
                f"{who} may not write the shared memory",
                exhausted=False,
            )
        self.sharing.map(address, size, self.handle, offset, writable=True)
        self.busy.update(self._units(offset, size))

    def decommit(self, address: int, size: int) -> None:
        offset = self._offset(address, size)
        if offset is None:
            self.inner.decommit(address, size)
            return
        self.sharing.vacate(address, size)
        if not (self.forked or self.closed):
            self.sharing.punch(self.handle, offset, size)
        self.busy.difference_update(self._units(offset, size, whole=True))

    # -- sharing ------------------------------------------------------------------------

    def handle_for(self) -> ShareHandle:
        return ShareHandle(self.sharing.user(), self.owner, self.handle, self.nonce)

    def publish(self, spans: Mapping[DimensionId, Iterable[tuple[Lease, int, int]]]) -> None:
        """Give readers a new table: where each published layer's bytes are now."""
        if self.forked or self.closed or not self.control:
            return
        arena, first_slot = self.arena, self._first_slot
        words = [0] * len(self._layers)
        units = []
        for dimension, layer_spans in spans.items():
            first = first_slot[dimension]
            for index, (lease, start, _) in enumerate(layer_spans):
                offset = self._offset(lease.address + start, arena.layer_size)
                if offset is not None:
                    words[first + index] = offset | 1
                    units.append(arena.unit_of(offset))
        self._write_table(array.array("Q", words).tobytes(), 0, frozenset(units))

    def finish(self) -> None:
        """The owner closes: readers keep the last table, marked closed; nothing is reused
        or given back from under them any more (the OS frees the arena with its last user)."""
        if self.forked or self.closed or not self.control:
            return
        self.closed = True
        table = ctypes.string_at(self.control + self.arena.table_offset, 8 * len(self._layers))
        self._write_table(table, CLOSED, self.published)
        with contextlib.suppress(PlatformError):
            self.sharing.unlock(self.handle, OWNER_BYTE)

    def remind(self) -> None:
        """``nudge``, at most every ``REMIND_EVERY`` seconds: for refused evictions, which a
        resident limit retries at every write."""
        now = time.monotonic()
        if now - self._reminded >= REMIND_EVERY:
            self._reminded = now
            self.nudge()

    def nudge(self) -> None:
        """Publish the same table again: every reader's next call then lets go of the pins
        no view of it needs any more (readers look at their pins when the table changes)."""
        if self.forked or self.closed or not self.control:
            return
        table = ctypes.string_at(self.control + self.arena.table_offset, 8 * len(self._layers))
        self._write_table(table, 0, self.published)

    def _write_table(self, table: bytes, flags: int, units: frozenset[int]) -> None:
        """Write the table, then the new generation, holding the publish lock if readers let
        it be taken: one stopped while it copies the table must not stop the owner. Without
        the lock the write goes ahead; a reader that copied meanwhile sees the generation
        move when it checks it after letting go, and copies again (``SharedReader``)."""
        with self._lock:
            try:
                if self._impatient:  # a reader kept it too long last time: do not wait again
                    locked = self.sharing.lock(self.handle, PUBLISH_BYTE, exclusive=True)
                else:
                    locked = wait_for_lock(self.sharing, self.handle, PUBLISH_BYTE, exclusive=True)
            except PlatformError:
                locked = False
            self._impatient = not locked
            ctypes.memmove(self.control + self.arena.table_offset, table, len(table))
            ctypes.c_uint64.from_address(self.control + FLAGS_OFFSET).value = flags
            self.generation += 1
            ctypes.c_uint64.from_address(self.control + GENERATION_OFFSET).value = self.generation
            self.published = units
            with contextlib.suppress(PlatformError):  # else held by us until the next publish
                self.sharing.unlock(self.handle, PUBLISH_BYTE)  # a no-op if not taken

    def pinned(self, address: int, *, published: bool = True) -> bool:
        """Whether a reader may still reach the unit at ``address``: it is in the table readers
        have (unless not ``published``: asking before withdrawing it), or some open of the
        arena other than ours holds a pin on it, or a child forked while it was in use may."""
        offset = self._offset(address, self.page_size)
        if offset is None:
            return False
        unit = self.arena.unit_of(offset)
        if self.forked or unit in self._kept or (published and unit in self.published):
            return True
        with self._lock:
            try:
                return self.sharing.locked(self.handle, FIRST_PIN + unit)
            except PlatformError:
                return True  # cannot tell: keep it

    def reader_pins(self) -> int:
        """How many units some other open of the arena pins now (0 if it cannot tell)."""
        if self.forked or self.handle < 0:
            return 0
        with self._lock:
            try:
                return sum(
                    self.sharing.locked(self.handle, FIRST_PIN + unit)
                    for unit in range(self.arena.units)
                )
            except PlatformError:
                return 0

    # -- spare layers -------------------------------------------------------------------

    def allocate_readonly(self, nbytes: int) -> tuple[int, int]:
        """A free spare layer, committed (shared, writable) for a layer update to fill."""
        layer = self.arena.layer_size
        if nbytes != layer:
            raise ValueError(f"a spare layer holds {layer} bytes, not {nbytes}")
        for index in list(self._unsettled):  # a failed give-back: try it again first
            with contextlib.suppress(PlatformError):
                self.decommit(self._spare_address(index), layer)
                self._unsettled.remove(index)
                self._free.append(index)
        if not self._free:
            self.nudge()
            count = self.arena.spare_layers
            raise LimitExceeded(
                f"all {count} spare layers of the shared memory ({format_size(count * layer)}) "
                "hold replaced layers that views still reach: in this process, in readers "
                "attached to it, or in children forked from it (which keep what was in use when "
                "they were forked until they exit or close the manager). Each is reused once its "
                "views are released and their reader has called mmkit again (or has exited); "
                "or give the manager more with MemoryConfig(spare_layers=…)"
            )
        index = self._free.pop()
        address = self._spare_address(index)
        try:
            self.commit(address, layer)
        except BaseException:
            self._free.append(index)
            raise
        return address, layer

    def owns(self, address: int) -> bool:
        start = self.base + self.layout.spares_offset
        return start <= address < start + self.layout.spares_size

    def free(self, address: int) -> None:
        """Give a spare layer's memory back and make it free; ``PlatformError`` keeps it."""
        self.decommit(address, self.arena.layer_size)
        self._free.append(self._spare_index(address))

    def rollback(self, address: int) -> None:
        """Undo ``allocate_readonly``; a spare layer whose give-back fails waits to be retried."""
        try:
            self.free(address)
        except PlatformError:
            self._unsettled.add(self._spare_index(address))

    def _spare_address(self, index: int) -> int:
        return self.base + self.layout.spares_offset + index * self.arena.layer_size

    def _spare_index(self, address: int) -> int:
        return (address - self.base - self.layout.spares_offset) // self.arena.layer_size

    @property
    def spares_free(self) -> int:
        """Spare layers nobody uses: free ones, and those whose give-back failed and will be
        tried again before any is handed out (not counted as committed, as in the pool)."""
        return len(self._free) + len(self._unsettled)

    # -- addresses ----------------------------------------------------------------------

    def _offset(self, address: int, size: int) -> int | None:
        """The arena offset of a span of the reservation, if it lies in a shared part."""
        if not self.base:
            return None
        where = address - self.base
        index = bisect.bisect_right(self._starts, where) - 1
        if index < 0:
            return None
        start, length, offset = self._shared[index]
        if where + size > start + length:
            return None
        return offset + where - start

    def _units(self, offset: int, size: int, *, whole: bool = False) -> range:
        """The units a span of the arena touches (``whole``: only those it covers)."""
        arena = self.arena
        first = arena.unit_of(offset)
        last = arena.unit_of(offset + size - 1)
        if whole:
            first += offset != arena.unit_offset(first)
            last -= offset + size != arena.unit_offset(last + 1)
        return range(first, last + 1)

    # -- fork ---------------------------------------------------------------------------

    def before_fork(self) -> None:
        """Pin every unit in use through a fresh open, for the child to keep.

        If that fails, nothing in use now is ever reused (``_kept``): the child may read it.
        """
        if self.forked or self.handle < 0 or not self.busy:
            return
        pins = -1
        try:
            pins = self.sharing.reopen(os.getpid(), self.handle)
            for unit in sorted(self.busy):
                if not self.sharing.lock(pins, FIRST_PIN + unit, exclusive=False):
                    raise OSError(errno.EAGAIN, "pin refused")
        except OSError:
            self._kept |= self.busy
            if pins >= 0:
                self.sharing.close(pins)
            return
        self._fork_pins = pins

    def after_fork_in_parent(self) -> None:
        pins, self._fork_pins = self._fork_pins, -1
        if pins >= 0:
            self.sharing.close(pins)

    def after_fork_in_child(self) -> None:
        self.forked = True
        self.control = 0  # not inherited (MADV_DONTFORK)
        handle, self.handle = self.handle, -1
        if handle >= 0:
            self.sharing.close(handle)


class AttachedArena(_Over, ForkAware):
    """A reader's side: the arena mapped read-only into a reservation laid out like the
    owner's, its control area, and this process's open of it, which holds its pins.

    Pins are shared byte locks of that open. Across ``fork`` the child gets an open of its
    own holding the same pins, so what either process lets go of, the other keeps.
    """

    def __init__(
        self,
        inner: VirtualMemory,
        sharing: SharedMemory,
        handle: int,
        layout: Layout,
        arena: ArenaLayout,
    ) -> None:
        super().__init__(inner)
        self.sharing = sharing
        self.handle = handle
        self.layout = layout
        self.arena = arena
        self.base = 0
        self.control = 0
        self.pins: set[int] = set()
        self.orphaned = False
        self._fork_pins = -1
        self._shared_pins: set[int] = set()
        self._lock = ForkSafeLock()
        self._released = self._forgotten = False

    def reserve(self, size: int, alignment: int = 0) -> int:
        """Reserve the address space and map the control area and every unit read-only."""
        sharing, arena, layout = self.sharing, self.arena, self.layout
        control = sharing.map(None, arena.control_size, self.handle, 0, writable=False)
        base = 0
        try:
            base = sharing.reserve(size, alignment, [])
            for start, length, offset in shared_parts(layout, arena):
                sharing.map(base + start, length, self.handle, offset, writable=False)
        except BaseException:
            if base:
                sharing.release(base, size)
            sharing.unmap(control, arena.control_size)
            raise
        self.base, self.control = base, control
        watch_fork(self)
        return base

    def release(self, address: int, size: int) -> None:
        """Unmap everything and close the open: this process's pins go with it.

        Where the control area was stays readable (private zeros, so the generation a late
        reader compares never matches) until ``forget``: a thread may be about to read it.
        """
        with interrupts_deferred():  # whole, or the arena would stay mapped for good
            self._release(address, size)

    def _release(self, address: int, size: int) -> None:
        try:
            self.sharing.release(address, size)
        finally:
            with self._lock:
                self._released = True
                control, size = self.control, self.arena.control_size
                if self._forgotten:
                    self.control = 0  # first: a forget run by a collection in between is a no-op
                    self.sharing.unmap(control, size)
                else:
                    self.sharing.blank(control, size)
            handle, self.handle = self.handle, -1
            self.pins.clear()
            if handle >= 0:
                self.sharing.close(handle)

    def forget(self) -> None:
        """Nothing reads the control area any more (its reader object is gone)."""
        with interrupts_deferred(), self._lock:
            self._forgotten = True
            if self._released and self.control:
                self.sharing.unmap(self.control, self.arena.control_size)
                self.control = 0

    def unit_address(self, unit: int) -> int:
        """Where a unit is mapped in this process."""
        offset = self.arena.unit_offset(unit)
        for (spec, start), home in zip(self.layout.dimensions, self.arena.offsets, strict=True):
            if home <= offset < home + spec.size:
                return self.base + start + offset - home
        return self.base + self.layout.spares_offset + offset - self.arena.spares_offset

    def pin(self, unit: int) -> bool:
        """Pin a unit. It is recorded in ``pins`` first, so that an exception anywhere (a
        signal handler's) never leaves a lock unrecorded; a record without its lock is
        harmless, and the reader lets go of records it has no lease for. Nobody holds a pin
        byte exclusively but for an instant (Windows' ``locked`` takes it to look)."""
        self.pins.add(unit)
        if wait_for_lock(self.sharing, self.handle, FIRST_PIN + unit, exclusive=False):
            return True
        self.pins.discard(unit)
        return False

    def unpin(self, unit: int) -> None:
        """Let go of a pin (one that cannot be let go stays until the reader closes).

        Pins shared with a forked child that could not get an open of its own stay:
        the child's views depend on them (``orphaned``).
        """
        if not (self.orphaned or unit in self._shared_pins):
            with contextlib.suppress(PlatformError):
                self.sharing.unlock(self.handle, FIRST_PIN + unit)
        self.pins.discard(unit)  # last, for the same reason as in ``pin``

    def before_fork(self) -> None:
        """Hold this process's pins again through a fresh open, for the child."""
        if self.handle < 0:
            return
        pins = -1
        try:
            pins = self.sharing.reopen(os.getpid(), self.handle)
            for unit in sorted(self.pins):
                if not self.sharing.lock(pins, FIRST_PIN + unit, exclusive=False):
                    raise OSError(errno.EAGAIN, "pin refused")
        except OSError:
            if pins >= 0:
                self.sharing.close(pins)
            pins = -1
            self._shared_pins |= self.pins  # the child will read through these: keep them
        self._fork_pins = pins

    def after_fork_in_parent(self) -> None:
        pins, self._fork_pins = self._fork_pins, -1
        if pins >= 0:
            self.sharing.close(pins)

    def after_fork_in_child(self) -> None:
        """The child pins through its own open; if it could not get one, it is ``orphaned``."""
        pins, self._fork_pins = self._fork_pins, -1
        if self.handle < 0:  # another thread released it while the fork was being made
            if pins >= 0:
                self.sharing.close(pins)
            return
        if pins < 0:
            self.orphaned = True  # its pins are the parent's: it must not make new views
            return
        handle, self.handle = self.handle, pins
        self.sharing.close(handle)
