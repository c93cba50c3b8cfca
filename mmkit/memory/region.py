"""The budget's address space: one reservation, and where each region sits inside it."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from mmkit.memory.locks import ForkSafeLock
from mmkit.platform import PlatformError, VirtualMemory, align_up
from mmkit.values.config import DimensionSpec, MemoryConfig
from mmkit.values.errors import InvalidState, OwnsMemory, from_os_error
from mmkit.values.ids import DimensionId
from mmkit.values.units import format_size


class Reservation(OwnsMemory):
    """A span of address space reserved from the OS, given back when its last holder lets go.

    Holders are counted, not inferred from object lifetimes: the manager holds it while open,
    and after ``close`` each lease that still had views holds it until its last view is gone.
    """

    __slots__ = ("_holds", "_lock", "address", "size", "vm")

    def __init__(self, vm: VirtualMemory, size: int, alignment: int) -> None:
        self.vm = vm
        self.size = size
        self.address = vm.reserve(size, alignment)
        self._holds = 1
        self._lock = ForkSafeLock()

    def __repr__(self) -> str:
        return f"<Reservation {self.address:#x}+{self.size:#x} holds={self._holds}>"

    def hold(self) -> None:
        """One more holder; the address space stays until it calls ``drop``."""
        with self._lock:
            if not self._holds:
                raise InvalidState(f"the reservation at {self.address:#x} was given back")
            self._holds += 1

    def drop(self) -> None:
        """One holder fewer; the last one gives the address space back to the OS."""
        with self._lock:
            self._holds -= 1
            last = self._holds == 0
        if last:
            # munmap of a whole reservation this process made does not fail; if the OS
            # disagreed, the span would only stay reserved until the process exits.
            with contextlib.suppress(PlatformError):
                self.vm.release(self.address, self.size)


@dataclass(frozen=True, slots=True)
class Region:
    """Where a dimension lives: a page-aligned span of the reservation."""

    id: DimensionId
    name: str
    address: int
    size: int
    layer_size: int

    @property
    def end(self) -> int:
        return self.address + self.size

    @property
    def layer_count(self) -> int:
        return self.size // self.layer_size

    def layer_address(self, index: int) -> int:
        return self.address + index * self.layer_size


@dataclass(frozen=True, slots=True)
class Layout:
    """Offsets of the regions and the pool inside the reservation, guard gaps between them.

    Every region starts at a multiple of ``alignment`` (the huge-page size where the OS has
    one, so transparent huge pages can back whole regions) and is followed by at least one
    page that is reserved and never committed, so an overrun faults instead of reading a
    neighbour.
    """

    size: int
    alignment: int
    dimensions: tuple[tuple[DimensionSpec, int], ...]
    pool_offset: int
    pool_size: int
    layer_size: int
    spares_offset: int = 0
    spares_size: int = 0

    def regions(self, base: int) -> dict[DimensionId, Region]:
        """Where each dimension lives in a reservation starting at ``base``."""
        return {
            spec.id: Region(spec.id, spec.name, base + offset, spec.size, self.layer_size)
            for spec, offset in self.dimensions
        }

    def reserve(self, vm: VirtualMemory, *, prefault: bool) -> Reservation:
        """Reserve the budget; with ``prefault``, commit and touch every page of it now."""
        try:
            reservation = Reservation(vm, self.size, self.alignment)
        except PlatformError as exc:
            raise from_os_error(
                exc, f"reserving {format_size(self.size)} of address space"
            ) from None
        if not prefault:
            return reservation
        spans = [(offset, spec.size) for spec, offset in self.dimensions]
        if self.pool_size:
            spans.append((self.pool_offset, self.pool_size))
        try:
            for offset, size in spans:
                vm.commit(reservation.address + offset, size)
                vm.prefault(reservation.address + offset, size)
        except BaseException as exc:
            reservation.drop()
            if isinstance(exc, PlatformError):
                raise from_os_error(exc, f"prefaulting {format_size(self.size)}") from None
            raise
        return reservation


def plan_layout(config: MemoryConfig, page_size: int, alignment: int) -> Layout:
    """Place the dimensions in id order, then the spare layers (shared only), then the pool,
    each aligned and guarded."""
    alignment = max(alignment, page_size)
    offset = alignment
    placed: list[tuple[DimensionSpec, int]] = []
    for spec in config.dimensions:
        placed.append((spec, offset))
        offset = align_up(offset + spec.size + page_size, alignment)
    spares_offset, spares_size = offset, config.spares_size
    if spares_size:
        offset = align_up(offset + spares_size + page_size, alignment)
    pool_offset = offset
    pool_size = config.pool_size
    if pool_size:
        offset = align_up(offset + pool_size + page_size, alignment)
    return Layout(
        offset,
        alignment,
        tuple(placed),
        pool_offset,
        pool_size,
        config.layer_size,
        spares_offset,
        spares_size,
    )
