"""What the descriptor-based sharing backends (Linux's memfd, macOS's shm) have in common:
the object is a file descriptor, mapped through ``PosixMemory`` and owned by a user id."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from mmkit.platform.posix import PosixMemory

assert sys.platform != "win32"


class FdSharing:
    """The parts of ``SharedMemory`` that are the same for every descriptor."""

    def __init__(self, memory: PosixMemory) -> None:
        self.memory = memory

    def size(self, handle: int) -> int:
        return os.fstat(handle).st_size

    def user(self) -> int:
        return os.geteuid()

    def reserve(self, size: int, alignment: int, private: Sequence[tuple[int, int]]) -> int:
        """Plain reserved address space: ``mmap`` maps a file over any part of it."""
        return self.memory.reserve(size, alignment)

    def release(self, address: int, size: int) -> None:
        self.memory.release(address, size)

    def map(
        self, address: int | None, size: int, handle: int, offset: int, *, writable: bool
    ) -> int:
        return self.memory.map_file(address, size, handle, offset, writable=writable)

    def vacate(self, address: int, size: int) -> None:
        """Map the reservation back over a shared span, in one step."""
        self.memory.decommit(address, size)

    def unmap(self, address: int, size: int) -> None:
        self.memory.unmap(address, size)

    def blank(self, address: int, size: int) -> None:
        """Put read-only zeros where a mapping was, in one step: threads may be reading it."""
        self.memory.blank(address, size)
