"""The operating system, and nothing else: one backend per OS family behind ``VirtualMemory``.

This package is the only place that looks at ``sys.platform``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mmkit.platform.base import (
    Advice,
    PlatformError,
    Protection,
    VirtualMemory,
    align_down,
    align_up,
    is_power_of_two,
)

__all__ = [
    "BACKEND",
    "GRANULARITY",
    "PAGE_SIZE",
    "Advice",
    "PlatformError",
    "Protection",
    "VirtualMemory",
    "align_down",
    "align_up",
    "is_power_of_two",
    "user_cache_dir",
]


def _make_backend() -> VirtualMemory:
    if sys.platform == "win32":
        from mmkit.platform.windows import WindowsMemory

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
GRANULARITY: int = BACKEND.granularity


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
