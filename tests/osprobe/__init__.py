"""What the OS says about this process's memory, for tests that must hold on every OS.

One module per OS reads it through the OS's own interface (ctypes only): ``linux`` from
procfs, ``darwin`` from Mach (``task_info``, ``mach_vm_region``), ``windows`` from kernel32
(``VirtualQuery``, ``K32GetProcessMemoryInfo``). ``exits`` tells a crashed child from one
that failed. A test that needs something only one OS has imports that OS's module itself,
under a platform guard (``tests.markers``).
"""

from __future__ import annotations

import sys

from tests.osprobe.exits import crashed, describe
from tests.osprobe.spans import Region, access_at, covered

if sys.platform == "win32":
    from tests.osprobe import windows as _os
elif sys.platform == "darwin":
    from tests.osprobe import darwin as _os
else:
    from tests.osprobe import linux as _os

__all__ = [
    "Region",
    "accessible_bytes_in",
    "address_space_bytes",
    "crashed",
    "describe",
    "mapped_bytes_in",
    "mapping_count",
    "open_handles",
    "protection_at",
    "resident_bytes",
]


def mapping_count() -> int:
    """Entries in this process's memory map: Linux mappings (VMAs), macOS VM map entries,
    Windows regions in use. Each OS merges neighbours with equal attributes its own way, so
    compare counts on one OS, not across them."""
    return _os.mapping_count()


def mapped_bytes_in(address: int, size: int) -> int:
    """Bytes of ``[address, address + size)`` that are mapped or reserved, committed or not."""
    return covered(_os.regions(address, address + size), address, size, accessible=False)


def accessible_bytes_in(address: int, size: int) -> int:
    """Bytes of ``[address, address + size)`` that can be touched: committed, in mmkit's
    words (a decommitted span is ``PROT_NONE`` on Linux and macOS, reserved on Windows)."""
    return covered(_os.regions(address, address + size), address, size, accessible=True)


def protection_at(address: int) -> str:
    """What the page at ``address`` allows: ``none``, ``read``, ``read-write``, ``other``, or
    ``unmapped`` where nothing is mapped or reserved."""
    return access_at(_os.regions(address, address + 1), address)


def address_space_bytes() -> int:
    """All of this process's mapped or reserved address space, in bytes."""
    return _os.address_space_bytes()


def open_handles() -> int:
    """Descriptors this process has open (kernel handles on Windows): what an operation
    that leaks none leaves as it found it."""
    return _os.open_handles()


def resident_bytes() -> int:
    """This process's pages in physical memory (RSS; the working set on Windows)."""
    return _os.resident_bytes()
