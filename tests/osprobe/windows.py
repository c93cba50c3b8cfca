"""Windows (x64): the process's memory as kernel32 reports it, through ctypes.

``VirtualQuery`` describes one region at a time: a run of pages of one allocation with the
same state (``MEM_COMMIT``, ``MEM_RESERVE`` or ``MEM_FREE``), protection and type; walking
from an address to the next region's base lists them all. ``K32GetProcessMemoryInfo``
(kernel32 since Windows 7; ``GetProcessMemoryInfo`` in psapi before) gives the working set.
Layouts are those of winnt.h and psapi.h for 64-bit Windows.

Importable on any OS (the structures are plain ctypes); only calling a probe needs Windows.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable, Iterator
from ctypes import c_size_t, c_uint16, c_uint32, c_void_p
from typing import Any

from tests.osprobe.spans import NONE, OTHER, READ, READ_WRITE, Region

MEM_COMMIT = 0x1000
MEM_RESERVE = 0x2000
MEM_FREE = 0x10000
PAGE_NOACCESS = 0x01
PAGE_READONLY = 0x02
PAGE_READWRITE = 0x04
_ACCESS = {PAGE_NOACCESS: NONE, PAGE_READONLY: READ, PAGE_READWRITE: READ_WRITE}

TOP = 1 << 64
"""Past every user address: the walks stop where VirtualQuery fails, above the last region."""


class MemoryBasicInformation(ctypes.Structure):
    """MEMORY_BASIC_INFORMATION (winnt.h), 48 bytes on x64."""

    _fields_ = (
        ("BaseAddress", c_void_p),
        ("AllocationBase", c_void_p),
        ("AllocationProtect", c_uint32),  # DWORD
        ("PartitionId", c_uint16),  # WORD, x64 only
        ("RegionSize", c_size_t),
        ("State", c_uint32),
        ("Protect", c_uint32),
        ("Type", c_uint32),
    )


class ProcessMemoryCountersEx(ctypes.Structure):
    """PROCESS_MEMORY_COUNTERS_EX (psapi.h), 80 bytes on x64."""

    _fields_ = (
        ("cb", c_uint32),
        ("PageFaultCount", c_uint32),
        ("PeakWorkingSetSize", c_size_t),
        ("WorkingSetSize", c_size_t),
        ("QuotaPeakPagedPoolUsage", c_size_t),
        ("QuotaPagedPoolUsage", c_size_t),
        ("QuotaPeakNonPagedPoolUsage", c_size_t),
        ("QuotaNonPagedPoolUsage", c_size_t),
        ("PagefileUsage", c_size_t),
        ("PeakPagefileUsage", c_size_t),
        ("PrivateUsage", c_size_t),
    )


class _Api:
    """The kernel32 (or psapi) functions the probes call, with their C signatures."""

    def __init__(self) -> None:
        if sys.platform != "win32":
            raise OSError("the Windows probes need Windows")
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        self.virtual_query: Callable[..., int] = kernel32.VirtualQuery
        self.virtual_query.argtypes = [
            c_void_p,
            ctypes.POINTER(MemoryBasicInformation),
            c_size_t,
        ]
        self.virtual_query.restype = c_size_t
        self.current_process: Callable[[], Any] = kernel32.GetCurrentProcess
        self.current_process.argtypes = []
        self.current_process.restype = c_void_p
        try:
            counters = kernel32.K32GetProcessMemoryInfo
        except AttributeError:
            counters = ctypes.WinDLL("psapi", use_last_error=True).GetProcessMemoryInfo
        counters.argtypes = [c_void_p, ctypes.POINTER(ProcessMemoryCountersEx), c_uint32]
        counters.restype = ctypes.c_int
        self.memory_info: Callable[..., int] = counters
        self.handle_count: Callable[..., int] = kernel32.GetProcessHandleCount
        self.handle_count.argtypes = [c_void_p, ctypes.POINTER(c_uint32)]
        self.handle_count.restype = ctypes.c_int


@functools.cache
def _api() -> _Api:
    return _Api()


def _walk(start: int, end: int) -> Iterator[MemoryBasicInformation]:
    """Every region from the one holding ``start`` up to ``end``, free ones included."""
    api = _api()
    address = start
    while address < end:
        info = MemoryBasicInformation()
        if not api.virtual_query(address, ctypes.byref(info), ctypes.sizeof(info)):
            return  # past the highest user address (ERROR_INVALID_PARAMETER)
        yield info
        following = (info.BaseAddress or 0) + info.RegionSize
        if following <= address:
            return
        address = following


def to_region(info: MemoryBasicInformation) -> Region | None:
    """The region a VirtualQuery answer describes, or None for free address space.

    Reserved pages cannot be touched whatever ``Protect`` says (it is undefined for them);
    committed ones allow what their protection constant does (``other`` for any modifier,
    such as ``PAGE_GUARD``, or execute access).
    """
    if info.State == MEM_FREE:
        return None
    base = info.BaseAddress or 0
    access = _ACCESS.get(info.Protect, OTHER) if info.State == MEM_COMMIT else NONE
    return Region(base, base + info.RegionSize, access)


def regions(start: int, end: int) -> Iterator[Region]:
    """Reserved and committed regions that overlap ``[start, end)``."""
    for info in _walk(start, end):
        region = to_region(info)
        if region is not None:
            yield region


def mapping_count() -> int:
    """Regions in use (reserved or committed): Windows' counterpart of a mapping."""
    return sum(1 for _ in regions(0, TOP))


def address_space_bytes() -> int:
    """Bytes of address space reserved or committed."""
    return sum(region.end - region.start for region in regions(0, TOP))


def open_handles() -> int:
    """Kernel handles this process holds."""
    api = _api()
    count = c_uint32()
    if not api.handle_count(api.current_process(), ctypes.byref(count)):
        raise ctypes.WinError(ctypes.get_last_error())
    return count.value


def resident_bytes() -> int:
    """The working set: pages of this process in physical memory."""
    api = _api()
    counters = ProcessMemoryCountersEx()
    counters.cb = ctypes.sizeof(counters)
    if not api.memory_info(api.current_process(), ctypes.byref(counters), counters.cb):
        raise ctypes.WinError(ctypes.get_last_error())
    return int(counters.WorkingSetSize)
