"""The operating system, and nothing else: one backend per OS family behind ``VirtualMemory``.

This package is the only place that looks at ``sys.platform``.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

from mmkit.platform.base import (
    Advice,
    NotShared,
    PlatformError,
    Protection,
    SharedMemory,
    VirtualMemory,
    align_down,
    align_up,
    is_power_of_two,
)

__all__ = [
    "BACKEND",
    "FREE_THREADED",
    "GRANULARITY",
    "PAGE_SIZE",
    "SHARING",
    "Advice",
    "NotShared",
    "PlatformError",
    "Protection",
    "SharedMemory",
    "VirtualMemory",
    "align_down",
    "align_up",
    "describe_system",
    "is_power_of_two",
    "populated_stdlib_map",
    "shell_command",
    "transparent_huge_pages",
    "user_cache_dir",
]


def _make_backend() -> VirtualMemory:
    if sys.platform == "win32":
        from mmkit.platform.windows import WindowsMemory, require_64_bit

        require_64_bit(ctypes.sizeof(ctypes.c_void_p))
        return WindowsMemory()
    if sys.platform == "darwin":
        from mmkit.platform.posix import DARWIN, PosixMemory

        return PosixMemory(DARWIN, "/usr/lib/libSystem.B.dylib")
    if sys.platform.startswith("linux"):
        from mmkit.platform.posix import LINUX, PosixMemory, check_against_stdlib

        check_against_stdlib(LINUX)
        return PosixMemory(LINUX)
    raise ImportError(f"mmkit supports Linux, macOS and Windows, not {sys.platform}")


BACKEND: VirtualMemory = _make_backend()
PAGE_SIZE: int = BACKEND.page_size


def _make_sharing() -> SharedMemory | None:
    if sys.platform == "linux" and os.environ.get("MMKIT_SHARING") != "shm":
        from mmkit.platform.memfd import MemfdSharing
        from mmkit.platform.posix import PosixMemory

        assert isinstance(BACKEND, PosixMemory)
        return MemfdSharing(BACKEND)
    if sys.platform != "win32":  # macOS; on Linux too with MMKIT_SHARING=shm, for its tests
        from mmkit.platform.posix import PosixMemory
        from mmkit.platform.shm import ShmSharing

        assert isinstance(BACKEND, PosixMemory)
        return ShmSharing(BACKEND)
    from mmkit.platform.sections import SectionSharing
    from mmkit.platform.windows import WindowsMemory

    assert isinstance(BACKEND, WindowsMemory)
    try:
        return SectionSharing(BACKEND)
    except OSError:  # before Windows 10 1803: no placeholders
        return None


SHARING: SharedMemory | None = _make_sharing()
"""How this OS shares memory between processes (``MemoryConfig(shared=True)``); None where
it cannot (Windows before 10 version 1803)."""

FREE_THREADED: bool = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
"""Whether this CPython is built without the GIL (PEP 703): threads then run at once, and
CPython's memoryview export counts are not atomic (gh-127716)."""
GRANULARITY: int = BACKEND.granularity


def describe_system() -> str:
    """The OS, its release and the machine: ``Linux 6.18.44 x86_64``."""
    return f"{platform.system()} {platform.release()} {platform.machine()}"


def transparent_huge_pages() -> str:
    """The kernel's THP mode (``always``, ``madvise``, ``never``), or ``n/a``."""
    if not sys.platform.startswith("linux"):
        return "n/a"
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "n/a"
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else text.strip()


def populated_stdlib_map(size: int) -> mmap.mmap | None:
    """A stdlib anonymous map with every page populated, where the OS can (the benchmarks' peer)."""
    if sys.platform == "win32":
        return None
    populate = getattr(mmap, "MAP_POPULATE", None)
    if populate is None:
        return None
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)


def user_cache_dir() -> Path:
    """This OS's per-user cache directory for mmkit (``MMKIT_CACHE`` overrides it)."""
    override = os.environ.get("MMKIT_CACHE")
    if override:
        return Path(override)
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = str(Path.home() / "Library" / "Caches")
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mmkit"


def shell_command(*words: str) -> str:
    """A command line the user can paste into this OS's shell."""
    if sys.platform == "win32":
        return subprocess.list2cmdline(words)
    return shlex.join(words)
