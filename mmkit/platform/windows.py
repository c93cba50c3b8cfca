"""Windows x64 backend: VirtualAlloc reservations and commits over kernel32, through ctypes.

Importable everywhere so its pure helpers can be tested on any OS; only constructing
``WindowsMemory`` needs Windows. The struct layouts and the ``"Q"`` working-set entries are
those of 64-bit Windows; ``require_64_bit`` refuses a 32-bit interpreter before any is used.
"""

from __future__ import annotations

import array
import ctypes
import enum
import errno
import sys
from collections.abc import Callable, Iterable, Sequence
from ctypes import byref, c_size_t, c_uint16, c_uint32, c_void_p, sizeof
from typing import TYPE_CHECKING, Any

from mmkit.platform.base import (
    Advice,
    PlatformError,
    Protection,
    align_up,
    check_span,
    is_power_of_two,
)

if TYPE_CHECKING:
    from mmkit.platform.base import VirtualMemory

MEM_COMMIT = 0x00001000
MEM_RESERVE = 0x00002000
MEM_DECOMMIT = 0x00004000
MEM_RELEASE = 0x00008000
MEM_FREE = 0x00010000

PAGE_NOACCESS = 0x01
PAGE_READONLY = 0x02
PAGE_READWRITE = 0x04

ERROR_SUCCESS = 0
ERROR_ACCESS_DENIED = 5
ERROR_NOT_ENOUGH_MEMORY = 8
ERROR_OUTOFMEMORY = 14
ERROR_INVALID_PARAMETER = 87
ERROR_NOT_LOCKED = 158
ERROR_INVALID_ADDRESS = 487
ERROR_NOACCESS = 998
ERROR_NO_SYSTEM_RESOURCES = 1450
ERROR_WORKING_SET_QUOTA = 1453
ERROR_PAGEFILE_QUOTA = 1454
ERROR_COMMITMENT_LIMIT = 1455

RESERVE_ATTEMPTS = 5
"""Tries at re-reserving an aligned range before giving up (another thread may take it)."""

WORKING_SET_CHUNK = 1 << 16
"""Pages asked about per QueryWorkingSetEx call, bounding its buffer to 1 MiB."""

PREFAULT_WINDOW = 1 << 20
"""Bytes touched per step of ``prefault``; one fixed ctypes array type serves every span."""

_Window = ctypes.c_ubyte * PREFAULT_WINDOW
"""Byte window laid over a span by ``touch_pages``; only the span's own bytes are touched."""

VALID_BIT = 1
"""Bit 0 of PSAPI_WORKING_SET_EX_BLOCK: the page is in the process's working set."""

_MEM_NAMES = {
    MEM_COMMIT: "MEM_COMMIT",
    MEM_RESERVE: "MEM_RESERVE",
    MEM_DECOMMIT: "MEM_DECOMMIT",
    MEM_RELEASE: "MEM_RELEASE",
}
_PAGE_NAMES = {
    PAGE_NOACCESS: "PAGE_NOACCESS",
    PAGE_READONLY: "PAGE_READONLY",
    PAGE_READWRITE: "PAGE_READWRITE",
}

_EXHAUSTED = frozenset(
    {
        ERROR_NOT_ENOUGH_MEMORY,
        ERROR_OUTOFMEMORY,
        ERROR_COMMITMENT_LIMIT,
        ERROR_PAGEFILE_QUOTA,
        ERROR_WORKING_SET_QUOTA,
        ERROR_NO_SYSTEM_RESOURCES,
    }
)
_ERRNO = {
    ERROR_INVALID_ADDRESS: errno.EINVAL,
    ERROR_INVALID_PARAMETER: errno.EINVAL,
    ERROR_ACCESS_DENIED: errno.EACCES,
    ERROR_NOACCESS: errno.EACCES,
    ERROR_NOT_LOCKED: errno.EINVAL,
}


class SystemInfo(ctypes.Structure):
    """SYSTEM_INFO, x64 layout (48 bytes); the leading union is read as its WORD pair."""

    _fields_ = (
        ("wProcessorArchitecture", c_uint16),
        ("wReserved", c_uint16),
        ("dwPageSize", c_uint32),
        ("lpMinimumApplicationAddress", c_void_p),
        ("lpMaximumApplicationAddress", c_void_p),
        ("dwActiveProcessorMask", c_size_t),
        ("dwNumberOfProcessors", c_uint32),
        ("dwProcessorType", c_uint32),
        ("dwAllocationGranularity", c_uint32),
        ("wProcessorLevel", c_uint16),
        ("wProcessorRevision", c_uint16),
    )


class MemoryBasicInformation(ctypes.Structure):
    """MEMORY_BASIC_INFORMATION, x64 layout (48 bytes)."""

    _fields_ = (
        ("BaseAddress", c_void_p),
        ("AllocationBase", c_void_p),
        ("AllocationProtect", c_uint32),
        ("PartitionId", c_uint16),
        ("RegionSize", c_size_t),
        ("State", c_uint32),
        ("Protect", c_uint32),
        ("Type", c_uint32),
    )


class MemoryRangeEntry(ctypes.Structure):
    """WIN32_MEMORY_RANGE_ENTRY (16 bytes), the span PrefetchVirtualMemory reads."""

    _fields_ = (("VirtualAddress", c_void_p), ("NumberOfBytes", c_size_t))


class WorkingSetExInformation(ctypes.Structure):
    """PSAPI_WORKING_SET_EX_INFORMATION (16 bytes): one page asked about, one answer."""

    _fields_ = (("VirtualAddress", c_void_p), ("VirtualAttributes", c_size_t))


class AdviceAction(enum.Enum):
    """What ``advise`` does on Windows for a given hint."""

    PREFETCH = "PrefetchVirtualMemory"
    DISCARD = "DiscardVirtualMemory"
    IGNORE = "no-op"


_ADVICE_ACTIONS = {
    Advice.WILLNEED: AdviceAction.PREFETCH,
    Advice.DONTNEED: AdviceAction.DISCARD,
    Advice.NORMAL: AdviceAction.IGNORE,
    Advice.SEQUENTIAL: AdviceAction.IGNORE,
    Advice.RANDOM: AdviceAction.IGNORE,
    Advice.HUGEPAGE: AdviceAction.IGNORE,
    Advice.DONTFORK: AdviceAction.IGNORE,
}

_PROTECTIONS = {
    Protection.NONE: PAGE_NOACCESS,
    Protection.READ: PAGE_READONLY,
    Protection.READ_WRITE: PAGE_READWRITE,
}


def page_protection(protection: Protection) -> int:
    """The PAGE_* value VirtualProtect takes for ``protection``."""
    return _PROTECTIONS[protection]


def advice_action(advice: Advice) -> AdviceAction:
    """Windows has prefetch and discard only; the other hints have no equivalent."""
    return _ADVICE_ACTIONS[advice]


def reservation_size(size: int, alignment: int, granularity: int) -> int:
    """Bytes to reserve so an ``alignment``-aligned span of ``size`` fits in the reservation.

    Reservations start on ``granularity`` boundaries, so alignments up to it come free and
    larger ones need at most ``alignment - granularity`` bytes of slack.
    """
    if alignment < 0 or (alignment and not is_power_of_two(alignment)):
        raise ValueError(f"reserve: alignment {alignment} is not a power of two")
    if alignment <= granularity:
        return size
    return size + alignment - granularity


def aligned_placement(base: int, reserved: int, size: int, alignment: int) -> int:
    """First ``alignment`` boundary in the reservation [base, base + reserved) with room for
    ``size`` bytes after it."""
    address = align_up(base, alignment)
    if address + size > base + reserved:
        raise ValueError(
            f"reserve: no {alignment:#x}-aligned span of {size} bytes within "
            f"{reserved} bytes at {base:#x}"
        )
    return address


def valid_pages(attributes: Iterable[int]) -> int:
    """Pages whose VirtualAttributes (from QueryWorkingSetEx) have the Valid bit set."""
    return sum(value & VALID_BIT for value in attributes)


def working_set_request(
    start: int, count: int, page_size: int
) -> ctypes.Array[WorkingSetExInformation]:
    """QueryWorkingSetEx input asking about ``count`` pages from ``start``.

    The array length is rounded up to a power of two so few distinct ctypes array types
    (which ctypes caches forever) are ever made; only the first ``count`` entries are passed.
    """
    entries = (WorkingSetExInformation * (1 << (count - 1).bit_length()))()
    words = memoryview(entries).cast("B").cast("Q")
    words[0 : 2 * count : 2] = array.array("Q", range(start, start + count * page_size, page_size))
    return entries


def working_set_attributes(entries: ctypes.Array[WorkingSetExInformation], count: int) -> list[int]:
    """VirtualAttributes of the first ``count`` entries QueryWorkingSetEx filled in."""
    words = memoryview(entries).cast("B").cast("Q")
    return words[1 : 2 * count : 2].tolist()


def touch_pages(address: int, size: int, page_size: int) -> None:
    """Rewrite the first byte of each page with its own value, making the OS back the page.

    Writers racing on the span could lose the byte being rewritten.
    """
    for offset in range(0, size, PREFAULT_WINDOW):
        length = min(PREFAULT_WINDOW, size - offset)
        window = memoryview(_Window.from_address(address + offset)).cast("B")
        window[:length:page_size] = bytes(window[:length:page_size])


def errno_for(winerror: int) -> tuple[int, bool]:
    """The errno closest to a Win32 error code, and whether it means a resource ran out."""
    if winerror in _EXHAUSTED:
        return errno.ENOMEM, True
    return _ERRNO.get(winerror, errno.EINVAL), False


def windows_error(
    call: str, arguments: str, winerror: int, message: str | None = None
) -> PlatformError:
    """A PlatformError for a failed Win32 call; ``message`` defaults to the bare code."""
    code, exhausted = errno_for(winerror)
    reason = message or f"Windows error {winerror}"
    return PlatformError(call, arguments, code, reason, exhausted=exhausted, winerror=winerror)


def address_text(address: int | None) -> str:
    """An address as it reads in an error message: hex, or NULL."""
    return f"{address:#x}" if address else "NULL"


def span_arguments(address: int | None, size: int, *names: str) -> str:
    """Arguments of a span call, e.g. ``0x7ff6a0000000, 4096, MEM_COMMIT, PAGE_READWRITE``."""
    return ", ".join((address_text(address), str(size), *names))


def mem_name(value: int) -> str:
    """Name of a MEM_* constant used here, hex for anything else."""
    return _MEM_NAMES.get(value, f"{value:#x}")


def page_name(value: int) -> str:
    """Name of a PAGE_* constant used here, hex for anything else."""
    return _PAGE_NAMES.get(value, f"{value:#x}")


def last_error() -> int:
    """The last-error value ctypes saved right after the most recent call on this thread."""
    if sys.platform == "win32":
        return ctypes.get_last_error()
    raise OSError("WindowsMemory needs Windows")


def _message(winerror: int) -> str:
    """The system's text for a Win32 error code."""
    if sys.platform == "win32":
        return ctypes.FormatError(winerror).strip()
    return f"Windows error {winerror}"


def failure(call: str, arguments: str, winerror: int | None = None) -> PlatformError:
    """The error for a call that just failed; reads last-error unless the call returned it."""
    code = last_error() if winerror is None else winerror
    return windows_error(call, arguments, code, _message(code))


Function = Callable[..., Any]


def declare(
    library: ctypes.CDLL, name: str, argtypes: Sequence[Any], restype: Any
) -> Function | None:
    """The named export with its C signature declared, or None when this Windows lacks it."""
    try:
        function = library[name]
    except AttributeError:
        return None
    function.argtypes = argtypes
    function.restype = restype
    return function


def require(library: ctypes.CDLL, name: str, argtypes: Sequence[Any], restype: Any) -> Function:
    """Like ``declare`` for exports every supported Windows has."""
    function = declare(library, name, argtypes, restype)
    if function is None:
        raise OSError(f"kernel32 has no {name}")
    return function


class _Kernel32:
    """Private kernel32 bindings (never the shared ``ctypes.windll``), saving last-error."""

    virtual_alloc: Function
    virtual_free: Function
    virtual_protect: Function
    virtual_lock: Function
    virtual_unlock: Function
    virtual_query: Function
    get_system_info: Function
    get_current_process: Function
    get_large_page_minimum: Function | None
    prefetch_virtual_memory: Function | None
    discard_virtual_memory: Function | None
    query_working_set_ex: Function | None

    def __init__(self) -> None:
        if sys.platform != "win32":
            raise OSError("WindowsMemory needs Windows")
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        self.virtual_alloc = require(
            kernel32, "VirtualAlloc", [c_void_p, c_size_t, c_uint32, c_uint32], c_void_p
        )
        self.virtual_free = require(
            kernel32, "VirtualFree", [c_void_p, c_size_t, c_uint32], ctypes.c_int
        )
        self.virtual_protect = require(
            kernel32,
            "VirtualProtect",
            [c_void_p, c_size_t, c_uint32, ctypes.POINTER(c_uint32)],
            ctypes.c_int,
        )
        self.virtual_lock = require(kernel32, "VirtualLock", [c_void_p, c_size_t], ctypes.c_int)
        self.virtual_unlock = require(kernel32, "VirtualUnlock", [c_void_p, c_size_t], ctypes.c_int)
        self.virtual_query = require(
            kernel32,
            "VirtualQuery",
            [c_void_p, ctypes.POINTER(MemoryBasicInformation), c_size_t],
            c_size_t,
        )
        self.get_system_info = require(
            kernel32, "GetSystemInfo", [ctypes.POINTER(SystemInfo)], None
        )
        self.get_current_process = require(kernel32, "GetCurrentProcess", [], c_void_p)
        self.get_large_page_minimum = declare(kernel32, "GetLargePageMinimum", [], c_size_t)
        self.prefetch_virtual_memory = declare(
            kernel32,
            "PrefetchVirtualMemory",
            [c_void_p, c_size_t, ctypes.POINTER(MemoryRangeEntry), c_uint32],
            ctypes.c_int,
        )
        self.discard_virtual_memory = declare(
            kernel32, "DiscardVirtualMemory", [c_void_p, c_size_t], c_uint32
        )
        query_signature = ([c_void_p, c_void_p, c_uint32], ctypes.c_int)
        self.query_working_set_ex = declare(kernel32, "K32QueryWorkingSetEx", *query_signature)
        if self.query_working_set_ex is None:
            try:
                psapi = ctypes.WinDLL("psapi", use_last_error=True)
            except OSError:
                return
            self.query_working_set_ex = declare(psapi, "QueryWorkingSetEx", *query_signature)


def require_64_bit(pointer_size: int) -> None:
    """Refuse a 32-bit interpreter: the layouts here would misread its structs."""
    if pointer_size != 8:
        raise ImportError(
            f"mmkit's Windows backend needs 64-bit Python; this interpreter's pointers are "
            f"{pointer_size * 8}-bit"
        )


class WindowsMemory:
    """VirtualMemory over kernel32: reservations in 64 KiB granules, commits in pages."""

    name = "windows"

    def __init__(self) -> None:
        self._api = _Kernel32()
        info = SystemInfo()
        self._api.get_system_info(byref(info))
        self.page_size = int(info.dwPageSize)
        self.granularity = int(info.dwAllocationGranularity)
        minimum = self._api.get_large_page_minimum
        self.huge_page_size = int(minimum() or 0) if minimum is not None else 0

    def reserve(self, size: int, alignment: int = 0) -> int:
        """Reserve inaccessible address space; larger-than-granule alignment costs a retry loop.

        A reservation cannot be trimmed, so an over-sized one is taken to find an aligned
        address, released, and the aligned span reserved in its place.
        """
        check_span("reserve", 0, size, self.page_size)
        span = reservation_size(size, alignment, self.granularity)
        if span == size:
            return self._reserve(None, size)
        failure: PlatformError | None = None
        for _ in range(RESERVE_ATTEMPTS):
            base = self._reserve(None, span)
            self._free(base, 0, MEM_RELEASE)
            address = aligned_placement(base, span, size, alignment)
            try:
                return self._reserve(address, size)
            except PlatformError as error:
                if error.os_code != ERROR_INVALID_ADDRESS:
                    raise
                failure = error
        assert failure is not None
        raise failure

    def release(self, address: int, size: int) -> None:
        """Release a whole reservation; ``size`` must be all of it, as Windows frees no less."""
        check_span("release", address, size, self.page_size)
        reserved = self._reservation_size(address)
        if reserved != size:
            raise ValueError(
                f"release: the reservation at {address:#x} is {reserved} bytes, not {size}"
            )
        self._free(address, 0, MEM_RELEASE)

    def commit(self, address: int, size: int) -> None:
        """Commit a reserved span read-write; Windows hands out zeroed pages."""
        check_span("commit", address, size, self.page_size)
        self._alloc(address, size, MEM_COMMIT, PAGE_READWRITE)

    def decommit(self, address: int, size: int) -> None:
        """Decommit a span, leaving it reserved."""
        check_span("decommit", address, size, self.page_size)
        self._free(address, size, MEM_DECOMMIT)

    def protect(self, address: int, size: int, protection: Protection) -> None:
        """Change the protection of committed pages within one reservation."""
        check_span("protect", address, size, self.page_size)
        new = page_protection(protection)
        old = c_uint32()
        if not self._api.virtual_protect(address, size, new, byref(old)):
            arguments = span_arguments(address, size, page_name(new), "&old")
            raise failure("VirtualProtect", arguments)

    def advise(self, address: int, size: int, advice: Advice) -> bool:
        """WILLNEED prefetches and DONTNEED discards; the other hints do nothing (False).

        Discarded pages stay committed but their contents become undefined (not zeroed, unlike
        Linux); DiscardVirtualMemory needs PAGE_READWRITE pages. Either call missing on an older
        Windows also returns False.
        """
        check_span("advise", address, size, self.page_size)
        action = advice_action(advice)
        if action is AdviceAction.PREFETCH:
            prefetch = self._api.prefetch_virtual_memory
            if prefetch is None:
                return False
            entry = MemoryRangeEntry(address, size)
            if not prefetch(self._api.get_current_process(), 1, byref(entry), 0):
                arguments = f"GetCurrentProcess(), 1, {{{span_arguments(address, size)}}}, 0"
                raise failure("PrefetchVirtualMemory", arguments)
            return True
        if action is AdviceAction.DISCARD:
            discard = self._api.discard_virtual_memory
            if discard is None:
                return False
            code = int(discard(address, size))
            if code != ERROR_SUCCESS:
                raise failure("DiscardVirtualMemory", span_arguments(address, size), code)
            return True
        return False

    def prefault(self, address: int, size: int) -> None:
        """Write one byte per page back to itself, so every page joins the working set.

        PrefetchVirtualMemory does not add pages to the working set; a write does.
        """
        check_span("prefault", address, size, self.page_size)
        touch_pages(address, size, self.page_size)

    def lock(self, address: int, size: int) -> None:
        """Lock committed pages into the working set (bounded by the minimum working set)."""
        check_span("lock", address, size, self.page_size)
        if not self._api.virtual_lock(address, size):
            raise failure("VirtualLock", span_arguments(address, size))

    def unlock(self, address: int, size: int) -> None:
        """Unlock pages; fails with ERROR_NOT_LOCKED if any page was not locked."""
        check_span("unlock", address, size, self.page_size)
        if not self._api.virtual_unlock(address, size):
            raise failure("VirtualUnlock", span_arguments(address, size))

    def resident(self, address: int, size: int) -> int:
        """Bytes of the span in the working set, per QueryWorkingSetEx's Valid bit."""
        check_span("resident", address, size, self.page_size)
        query = self._api.query_working_set_ex
        if query is None:
            raise OSError(errno.ENOSYS, "QueryWorkingSetEx is not available")
        process = self._api.get_current_process()
        pages = size // self.page_size
        valid = 0
        for first in range(0, pages, WORKING_SET_CHUNK):
            count = min(WORKING_SET_CHUNK, pages - first)
            start = address + first * self.page_size
            entries = working_set_request(start, count, self.page_size)
            length = count * sizeof(WorkingSetExInformation)
            if not query(process, entries, length):
                arguments = f"GetCurrentProcess(), {address_text(start)} ({count} pages), {length}"
                raise failure("QueryWorkingSetEx", arguments)
            valid += valid_pages(working_set_attributes(entries, count))
        return valid * self.page_size

    def _alloc(self, address: int | None, size: int, kind: int, protection: int) -> int:
        result = self._api.virtual_alloc(address, size, kind, protection)
        if not result:
            arguments = span_arguments(address, size, mem_name(kind), page_name(protection))
            raise failure("VirtualAlloc", arguments)
        return int(result)

    def _reserve(self, address: int | None, size: int) -> int:
        return self._alloc(address, size, MEM_RESERVE, PAGE_NOACCESS)

    def _free(self, address: int, size: int, kind: int) -> None:
        if not self._api.virtual_free(address, size, kind):
            raise failure("VirtualFree", span_arguments(address, size, mem_name(kind)))

    def _reservation_size(self, base: int) -> int:
        """Total size of the reservation starting exactly at ``base`` (all its regions)."""
        info = MemoryBasicInformation()
        total = 0
        while True:
            address = base + total
            if not self._api.virtual_query(address, byref(info), sizeof(info)):
                if total:
                    break
                arguments = f"{address_text(address)}, &info, {sizeof(info)}"
                raise failure("VirtualQuery", arguments)
            if info.State == MEM_FREE or (info.AllocationBase or 0) != base:
                break
            total += int(info.RegionSize)
        if total == 0:
            raise ValueError(f"release: {base:#x} is not the base of a reservation")
        return total


if TYPE_CHECKING:

    def _conforms(memory: WindowsMemory) -> VirtualMemory:
        return memory
