"""The budget's address space: one reservation, and where each region sits inside it."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from mmkit.platform import VirtualMemory, align_up
from mmkit.values.config import DimensionSpec, MemoryConfig
from mmkit.values.ids import DimensionId


class Reservation:
    """A span of address space reserved from the OS, released when nothing can reach it.

    The manager, every published generation of data and every pool block hold a reference;
    views hold those. So the OS gets the span back only after the last view is gone.
    """

    __slots__ = ("__weakref__", "address", "size", "vm")

    def __init__(self, vm: VirtualMemory, size: int, alignment: int) -> None:
        self.vm = vm
        self.size = size
        self.address = vm.reserve(size, alignment)
        # Not at exit: a daemon thread may still read a view while the interpreter shuts
        # down, and the OS takes the mapping back with the process anyway.
        weakref.finalize(self, vm.release, self.address, size).atexit = False

    def __repr__(self) -> str:
        return f"<Reservation {self.address:#x}+{self.size:#x}>"


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


def plan_layout(config: MemoryConfig, page_size: int, alignment: int) -> Layout:
    """Place the dimensions in id order, then the pool, each aligned and guarded."""
    alignment = max(alignment, page_size)
    offset = alignment
    placed: list[tuple[DimensionSpec, int]] = []
    for spec in config.dimensions:
        placed.append((spec, offset))
        offset = align_up(offset + spec.size + page_size, alignment)
    pool_offset = offset
    pool_size = config.pool_size
    if pool_size:
        offset = align_up(offset + pool_size + page_size, alignment)
    return Layout(offset, alignment, tuple(placed), pool_offset, pool_size)
