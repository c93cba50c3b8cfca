"""What the descriptor-based sharing backends (Linux's memfd, macOS's shm) have in common:
the object is a file descriptor, mapped through ``PosixMemory`` and owned by a user id."""

from __future__ import annotations

import os
import sys

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

    def map(
        self, address: int | None, size: int, handle: int, offset: int, *, writable: bool
    ) -> int:
        return self.memory.map_file(address, size, handle, offset, writable=writable)

    def unmap(self, address: int, size: int) -> None:
        self.memory.unmap(address, size)

    def blank(self, address: int, size: int) -> None:
        """Put read-only zeros where a mapping was, in one step: threads may be reading it."""
        self.memory.blank(address, size)
