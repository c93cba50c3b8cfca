"""POSIX backend (Linux and macOS): mmap, mprotect, madvise, mlock and mincore through ctypes.

One implementation, two constant tables: the numbers differ between the kernels in ways
that silently lose data (macOS ``MADV_FREE`` is 5, Linux's 8 is macOS ``MADV_FREE_REUSE``),
so nothing here is shared by value. The values come from each kernel's ``<sys/mman.h>``
(Linux uapi asm-generic/mman-common.h, XNU bsd/sys/mman.h); ``check_against_stdlib`` compares
them with the running interpreter's ``mmap`` module.

Decommitting is one system call on both kernels: fresh ``PROT_NONE`` pages are mapped over
the span with ``MAP_FIXED``. That drops the old pages and any ``mlock`` at once, so there is
no state in which a span is inaccessible yet still counted as committed (``mprotect`` then
``madvise(MADV_DONTNEED)`` has one, and ``MADV_DONTNEED`` fails with EINVAL on locked pages).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from mmkit.platform.base import Advice, PlatformError, Protection, align_up, check_span


@dataclass(frozen=True)
class PosixConstants:
    """The numeric values one POSIX kernel uses."""

    os_name: str
    prot_none: int
    prot_read: int
    prot_write: int
    map_shared: int
    map_private: int
    map_fixed: int
    map_anonymous: int
    map_noreserve: int
    advice: Mapping[Advice, int]
    madv_populate_write: int | None
    hugepage_size_file: str | None = None
    max_map_count_file: str | None = None
    names: Mapping[int, str] = field(default_factory=dict)


LINUX = PosixConstants(
    os_name="linux",
    prot_none=0x0,
    prot_read=0x1,
    prot_write=0x2,
    map_shared=0x01,
    map_private=0x02,
    map_fixed=0x10,
    map_anonymous=0x20,
    map_noreserve=0x4000,
    advice=MappingProxyType(
        {
            Advice.NORMAL: 0,
            Advice.RANDOM: 1,
            Advice.SEQUENTIAL: 2,
            Advice.WILLNEED: 3,
            Advice.DONTNEED: 4,
            Advice.HUGEPAGE: 14,
            Advice.DONTFORK: 10,
        }
    ),
    madv_populate_write=23,
    hugepage_size_file="/sys/kernel/mm/transparent_hugepage/hpage_pmd_size",
    max_map_count_file="/proc/sys/vm/max_map_count",
)

# macOS: MAP_ANON is 0x1000 (0x20 is MAP_RENAME), MAP_NORESERVE 0x40 is accepted and ignored,
# there is no THP, no MADV_POPULATE_* and no map count limit to report.
DARWIN = PosixConstants(
    os_name="darwin",
    prot_none=0x00,
    prot_read=0x01,
    prot_write=0x02,
    map_shared=0x0001,
    map_private=0x0002,
    map_fixed=0x0010,
    map_anonymous=0x1000,
    map_noreserve=0x0040,
    advice=MappingProxyType(
        {
            Advice.NORMAL: 0,
            Advice.RANDOM: 1,
            Advice.SEQUENTIAL: 2,
            Advice.WILLNEED: 3,
            Advice.DONTNEED: 4,
        }
    ),
    madv_populate_write=None,
)

_MAP_FAILED = ctypes.c_void_p(-1).value
_LOW_BIT = bytes(b & 1 for b in range(256))
_MINCORE_CHUNK_PAGES = 1 << 16


def protection_flags(protection: Protection, constants: PosixConstants) -> int:
    """The ``PROT_*`` bits for a protection on this kernel."""
    if protection is Protection.NONE:
        return constants.prot_none
    if protection is Protection.READ:
        return constants.prot_read
    return constants.prot_read | constants.prot_write


def advice_value(advice: Advice, constants: PosixConstants) -> int | None:
    """The ``MADV_*`` value for a hint, or None where this kernel has no such hint."""
    return constants.advice.get(advice)


def reserve_flags(constants: PosixConstants) -> int:
    """``mmap`` flags for an inaccessible, uncharged reservation."""
    return constants.map_private | constants.map_anonymous | constants.map_noreserve


def count_resident(vector: bytes) -> int:
    """Pages marked resident in a ``mincore`` vector (bit 0 on both kernels)."""
    return vector.translate(_LOW_BIT).count(1)


def aligned_trim(mapped: int, size: int, alignment: int) -> tuple[int, int, int]:
    """For an over-sized mapping at ``mapped``: the aligned start, and the head and tail to unmap.

    The mapping is ``size + alignment`` bytes long, so an aligned start always fits.
    """
    start = align_up(mapped, alignment)
    head = start - mapped
    tail = alignment - head
    return start, head, tail


def _page_size() -> int:
    if sys.platform == "win32":
        raise OSError("the POSIX backend needs a POSIX system")
    return os.sysconf("SC_PAGE_SIZE")


def _error(call: str, arguments: str, constants: PosixConstants | None = None) -> PlatformError:
    code = ctypes.get_errno()
    reason = os.strerror(code)
    mappings = False
    if code == errno.ENOMEM and constants is not None:
        counts = map_counts(constants)
        if counts is not None and near_map_limit(*counts):
            used, limit = counts
            reason = f"the process has {used} memory mappings and vm.max_map_count is {limit}"
            mappings = True
    return PlatformError(
        call,
        arguments,
        code,
        reason,
        exhausted=code in (errno.ENOMEM, errno.EAGAIN),
        mappings=mappings,
    )


def near_map_limit(used: int, limit: int) -> bool:
    """Whether ENOMEM from a mapping call is the map count limit: one more split would pass it.

    mprotect or a MAP_FIXED remap in the middle of a mapping can need two more entries.
    """
    return used + 2 >= limit


_MAPS_BUFFER = bytearray(1 << 16)
"""Read buffer for /proc/self/maps, made up front: at the map count limit nothing new can be
mapped, and a fresh buffer might need a mapping."""


def map_counts(constants: PosixConstants) -> tuple[int, int] | None:
    """This process's mapping count and the kernel's limit on it, where the kernel has one."""
    if constants.max_map_count_file is None or sys.platform == "win32":
        return None
    buffer = _MAPS_BUFFER
    try:
        with open(constants.max_map_count_file, "rb", buffering=0) as file:
            limit = int(file.read(32))
        fd = os.open("/proc/self/maps", os.O_RDONLY)
        try:
            used = 0
            while count := os.readv(fd, [buffer]):
                used += buffer.count(b"\n", 0, count)
        finally:
            os.close(fd)
    except (OSError, ValueError, MemoryError):
        return None
    return used, limit


class PosixMemory:
    """``VirtualMemory`` over libc for one POSIX kernel's constants."""

    def __init__(self, constants: PosixConstants, library: str | None = None) -> None:
        self.constants = constants
        self.name = constants.os_name
        self.page_size = _page_size()
        self.granularity = self.page_size
        self.huge_page_size = self._read_huge_page_size()
        self._populate_works = constants.madv_populate_write is not None
        libc = ctypes.CDLL(library, use_errno=True)
        self._mmap = libc.mmap
        self._mmap.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int64,
        ]
        self._mmap.restype = ctypes.c_void_p
        self._munmap = libc.munmap
        self._munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self._munmap.restype = ctypes.c_int
        self._mprotect = libc.mprotect
        self._mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self._mprotect.restype = ctypes.c_int
        self._madvise = libc.madvise
        self._madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self._madvise.restype = ctypes.c_int
        self._mlock = libc.mlock
        self._mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self._mlock.restype = ctypes.c_int
        self._munlock = libc.munlock
        self._munlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self._munlock.restype = ctypes.c_int
        self._mincore = libc.mincore
        self._mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
        self._mincore.restype = ctypes.c_int

    def _read_huge_page_size(self) -> int:
        path = self.constants.hugepage_size_file
        if path is None:
            return 0
        try:
            enabled = Path(path).with_name("enabled").read_text()
            size = int(Path(path).read_text())
        except (OSError, ValueError):
            return 0
        return 0 if "[never]" in enabled else size

    def _map(
        self,
        address: int | None,
        size: int,
        prot: int,
        flags: int,
        *,
        fd: int = -1,
        offset: int = 0,
    ) -> int:
        result = self._mmap(address, size, prot, flags, fd, offset)
        if result is None or result == _MAP_FAILED:
            arguments = f"{address or 0:#x}, {size}, {prot:#x}, {flags:#x}, {fd}, {offset:#x}"
            raise _error("mmap", arguments, self.constants)
        if flags & self.constants.map_fixed and result != address:
            raise PlatformError(
                "mmap",
                f"{address or 0:#x}, {size}, {prot:#x}, MAP_FIXED",
                errno.EINVAL,
                f"kernel placed the mapping at {result:#x}",
                exhausted=False,
            )
        return int(result)

    def map_file(
        self, address: int | None, size: int, fd: int, offset: int, *, writable: bool
    ) -> int:
        """Map ``size`` bytes of a file from ``offset``, shared with every process that maps
        it: over ``address`` (replacing what is there) or wherever the kernel chooses."""
        check_span("map_file", address or 0, size, self.page_size)
        constants = self.constants
        prot = constants.prot_read | (constants.prot_write if writable else 0)
        flags = constants.map_shared | (constants.map_fixed if address is not None else 0)
        return self._map(address, size, prot, flags, fd=fd, offset=offset)

    def blank(self, address: int, size: int) -> None:
        """Replace a span with private, read-only zeros in one call (no moment unmapped)."""
        check_span("blank", address, size, self.page_size)
        constants = self.constants
        flags = constants.map_fixed | constants.map_private | constants.map_anonymous
        self._map(address, size, constants.prot_read, flags)

    def unmap(self, address: int, size: int) -> None:
        """Unmap a span mapped with ``map_file`` anywhere (not inside a reservation)."""
        check_span("unmap", address, size, self.page_size)
        self._unmap(address, size)

    def _unmap(self, address: int, size: int) -> None:
        if self._munmap(address, size) != 0:
            raise _error("munmap", f"{address:#x}, {size}", self.constants)

    def reserve(self, size: int, alignment: int = 0) -> int:
        check_span("reserve", 0, size, self.page_size)
        prot = self.constants.prot_none
        flags = reserve_flags(self.constants)
        if alignment <= self.page_size:
            return self._map(None, size, prot, flags)
        mapped = self._map(None, size + alignment, prot, flags)
        start, head, tail = aligned_trim(mapped, size, alignment)
        if head:
            self._unmap(mapped, head)
        if tail:
            self._unmap(start + size, tail)
        return start

    def release(self, address: int, size: int) -> None:
        check_span("release", address, size, self.page_size)
        self._unmap(address, size)

    def commit(self, address: int, size: int) -> None:
        self.protect(address, size, Protection.READ_WRITE)

    def decommit(self, address: int, size: int) -> None:
        check_span("decommit", address, size, self.page_size)
        constants = self.constants
        flags = constants.map_fixed | reserve_flags(constants)
        self._map(address, size, constants.prot_none, flags)

    def protect(self, address: int, size: int, protection: Protection) -> None:
        check_span("protect", address, size, self.page_size)
        if self._mprotect(address, size, protection_flags(protection, self.constants)) != 0:
            raise _error("mprotect", f"{address:#x}, {size}, {protection.name}", self.constants)

    def advise(self, address: int, size: int, advice: Advice) -> bool:
        check_span("advise", address, size, self.page_size)
        value = advice_value(advice, self.constants)
        if value is None:
            return False
        if self._madvise(address, size, value) == 0:
            return True
        if ctypes.get_errno() == errno.EINVAL:
            return False
        raise _error("madvise", f"{address:#x}, {size}, MADV_{advice.name}")

    def prefault(self, address: int, size: int) -> None:
        check_span("prefault", address, size, self.page_size)
        populate = self.constants.madv_populate_write
        if populate is not None and self._populate_works:
            if self._madvise(address, size, populate) == 0:
                return
            if ctypes.get_errno() != errno.EINVAL:
                raise _error("madvise", f"{address:#x}, {size}, MADV_POPULATE_WRITE")
            self._populate_works = False
        pages = memoryview((ctypes.c_ubyte * size).from_address(address)).cast("B")
        step = self.page_size
        pages[::step] = bytes(pages[::step])
        pages.release()

    def lock(self, address: int, size: int) -> None:
        check_span("lock", address, size, self.page_size)
        if self._mlock(address, size) != 0:
            raise _error("mlock", f"{address:#x}, {size}", self.constants)

    def unlock(self, address: int, size: int) -> None:
        check_span("unlock", address, size, self.page_size)
        if self._munlock(address, size) != 0:
            raise _error("munlock", f"{address:#x}, {size}")

    def resident(self, address: int, size: int) -> int:
        check_span("resident", address, size, self.page_size)
        page = self.page_size
        pages = size // page
        chunk = min(pages, _MINCORE_CHUNK_PAGES)
        vector = (ctypes.c_ubyte * chunk)()
        total = 0
        for first in range(0, pages, chunk):
            count = min(chunk, pages - first)
            start = address + first * page
            if self._mincore(start, count * page, vector) != 0:
                raise _error("mincore", f"{start:#x}, {count * page}, vec")
            total += count_resident(bytes(vector)[:count])
        return total * page


def check_against_stdlib(constants: PosixConstants) -> None:
    """Refuse to run where the stdlib's ``mmap`` constants disagree with our table.

    The table is written for x86-64 and aarch64; other Linux architectures (MIPS, SPARC,
    PowerPC) number some flags differently, and a wrong flag can lose data silently.
    """
    expected = {
        "PROT_READ": constants.prot_read,
        "PROT_WRITE": constants.prot_write,
        "MAP_SHARED": constants.map_shared,
        "MAP_PRIVATE": constants.map_private,
        "MAP_ANONYMOUS": constants.map_anonymous,
        "MAP_NORESERVE": constants.map_noreserve,
    }
    expected.update({f"MADV_{advice.name}": value for advice, value in constants.advice.items()})
    if constants.madv_populate_write is not None:
        expected["MADV_POPULATE_WRITE"] = constants.madv_populate_write
    for name, value in expected.items():
        actual: int | None = getattr(mmap, name, None)
        if actual is not None and actual != value:
            raise ImportError(
                f"mmkit's {constants.os_name} table has {name}={value:#x}, "
                f"but this system's is {actual:#x}: unsupported architecture"
            )
