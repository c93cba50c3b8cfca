"""Linux: the process's memory as procfs shows it (``/proc/self/maps`` and ``/status``)."""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator

from tests.osprobe.spans import Region, parse_maps_line, status_kib


def regions(start: int, end: int) -> Iterator[Region]:
    """The mappings that overlap ``[start, end)``, one per line of ``/proc/self/maps``."""
    with open("/proc/self/maps") as maps:
        lines = maps.readlines()
    for line in lines:
        region = parse_maps_line(line)
        if region.start < end and start < region.end:
            yield region


def mapping_count() -> int:
    """Lines of ``/proc/self/maps``: one per mapping (VMA), what ``vm.max_map_count`` caps."""
    with open("/proc/self/maps") as maps:
        return sum(1 for _ in maps)


def _status(key: str) -> int:
    with open("/proc/self/status") as status:
        return status_kib(status.read(), key) * 1024


def address_space_bytes() -> int:
    """``VmSize``: every mapping, accessible or not."""
    return _status("VmSize")


def open_handles() -> int:
    """Descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


def resident_bytes() -> int:
    """``VmRSS``: pages of this process in physical memory."""
    return _status("VmRSS")


def locked_bytes() -> int:
    """``VmLck``: pages locked by mlock or mlockall."""
    return _status("VmLck")


def exhaust_mappings(page_size: int) -> list[object]:
    """Map single pages until the kernel refuses one more (its ``vm.max_map_count`` limit).

    Neighbours alternate protections, so the kernel cannot merge them into one mapping.
    Keep the result alive while the limit should hold; drop it to give the mappings back.
    """
    maps: list[object] = []
    try:
        while True:
            prot = mmap.PROT_READ if len(maps) % 2 else mmap.PROT_READ | mmap.PROT_WRITE
            maps.append(mmap.mmap(-1, page_size, prot=prot))
    except OSError:
        return maps
