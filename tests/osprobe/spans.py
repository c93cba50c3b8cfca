"""The pure part of the probes: regions as each OS lists them, and the bytes they cover."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

NONE = "none"
READ = "read"
READ_WRITE = "read-write"
OTHER = "other"
"""What a region allows, named as ``mmkit.platform.Protection`` names it (``other`` is any
mix it never asks for, such as executable pages)."""

UNMAPPED = "unmapped"


class Region(NamedTuple):
    """A span of this process's address space that is mapped (or, on Windows, reserved).

    ``access`` is ``none`` for pages that cannot be touched: on Linux and macOS a
    ``PROT_NONE`` mapping (mmkit reserves and decommits that way), on Windows a reserved
    (``MEM_RESERVE``) or ``PAGE_NOACCESS`` region.
    """

    start: int
    end: int
    access: str

    @property
    def accessible(self) -> bool:
        return self.access != NONE


def covered(regions: Iterable[Region], address: int, size: int, *, accessible: bool) -> int:
    """Bytes of ``[address, address + size)`` inside the regions (the accessible ones only,
    if ``accessible``). The regions must not overlap one another, as no OS lists them so."""
    end = address + size
    total = 0
    for region in regions:
        if accessible and not region.accessible:
            continue
        total += max(0, min(end, region.end) - max(address, region.start))
    return total


def access_at(regions: Iterable[Region], address: int) -> str:
    """The access of the region holding ``address``, or ``unmapped``."""
    for region in regions:
        if region.start <= address < region.end:
            return region.access
    return UNMAPPED


def posix_access(readable: bool, writable: bool, executable: bool) -> str:
    """The access name for a POSIX-style protection."""
    if executable:
        return OTHER
    if readable:
        return READ_WRITE if writable else READ
    return NONE if not writable else OTHER


def parse_maps_line(line: str) -> Region:
    """One line of Linux's ``/proc/self/maps``: ``start-end perms offset dev inode [path]``."""
    span, perms = line.split()[:2]
    start, end = (int(part, 16) for part in span.split("-"))
    access = posix_access(perms[0] == "r", perms[1] == "w", perms[2] == "x")
    return Region(start, end, access)


def status_kib(text: str, key: str) -> int:
    """The value of a ``Key:   123 kB`` line of Linux's ``/proc/self/status``, in KiB."""
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name == key:
            return int(rest.split()[0])
    raise LookupError(f"no {key} in the status text")
