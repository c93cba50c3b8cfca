"""Linux shared memory: a sealed memfd, opened read-only by other processes, and OFD locks.

A memfd is anonymous shared memory with no name anywhere: it lives while some process has it
open or mapped, and goes with the last of them, however they die. Its size is sealed
(``F_SEAL_SHRINK | F_SEAL_GROW``), so no process can truncate it under a reader's mapping
(the ``SIGBUS`` that ``/dev/shm`` users meet). Other processes of the same user open it
through ``/proc/<pid>/fd/<n>`` with ``O_RDONLY``: a new open file description that the
kernel refuses to map writable (``EACCES``), even through ``mprotect``.

Locks are open-file-description locks (``F_OFD_SETLK``): they belong to one open of the file,
not to a process, so two opens in one process conflict like two processes do, and they vanish
when the last descriptor of that open closes: a killed process drops its locks.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import sys

from mmkit.platform.base import NotShared, PlatformError, os_error
from mmkit.platform.posix import PosixMemory

assert sys.platform == "linux"

import fcntl  # noqa: E402  (after the platform assertion, which mypy reads)

from mmkit.platform.bytelocks import LOCK_FAILED, flock, flock_kind  # noqa: E402
from mmkit.platform.fdsharing import FdSharing  # noqa: E402

MFD_CLOEXEC = 0x1
MFD_ALLOW_SEALING = 0x2
FALLOC_FL_KEEP_SIZE = 0x1
FALLOC_FL_PUNCH_HOLE = 0x2
SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
NAME = "mmkit-arena"
"""What ``/proc/<pid>/fd/<n>`` links to: ``/memfd:mmkit-arena (deleted)``."""


class MemfdSharing(FdSharing):
    """``SharedMemory`` for Linux: memfd, ``/proc`` reopening, OFD byte locks."""

    name = "memfd"
    gives_back = True

    def __init__(self, memory: PosixMemory) -> None:
        super().__init__(memory)
        libc = ctypes.CDLL(None, use_errno=True)
        self._fallocate = libc.fallocate
        self._fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        self._fallocate.restype = ctypes.c_int

    def create(self, size: int, control: int) -> int:
        """A new sealed-size memfd of ``size`` zero bytes, open read-write, close-on-exec."""
        try:
            fd = os.memfd_create(NAME, MFD_CLOEXEC | MFD_ALLOW_SEALING)
        except OSError as exc:
            flags = "MFD_CLOEXEC|MFD_ALLOW_SEALING"
            raise os_error("memfd_create", f"{NAME!r}, {flags}", exc) from None
        try:
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
        except OSError as exc:
            os.close(fd)
            raise os_error("ftruncate+F_ADD_SEALS", f"{fd}, {size}", exc) from None
        return fd

    def reopen(self, pid: int, handle: int) -> int:
        """A read-only descriptor of our own for another process's memfd, sealed as ours are.

        The number is first opened with ``O_PATH``, which touches nothing, and what that
        names is checked; only then is it opened for reading, through the ``O_PATH``
        descriptor, so a number reused meanwhile for a FIFO or a device is never opened.
        """
        link = f"/proc/{pid}/fd/{handle}"
        path = os.open(link, os.O_PATH | os.O_CLOEXEC)
        try:
            if not os.readlink(f"/proc/self/fd/{path}").startswith(f"/memfd:{NAME} "):
                raise NotShared(errno.EINVAL, f"{link} is not an mmkit memfd")
            flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
            fd = os.open(f"/proc/self/fd/{path}", flags)
        finally:
            os.close(path)
        try:
            info = os.fstat(fd)
            sealed = fcntl.fcntl(fd, fcntl.F_GET_SEALS) & SEALS == SEALS
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 0 or not sealed:
                raise NotShared(
                    errno.EINVAL, f"{link} is not an mmkit memfd sealed against resizing"
                )
        except BaseException:
            os.close(fd)
            raise
        return fd

    def read(self, handle: int, offset: int, size: int) -> bytes:
        return os.pread(handle, size, offset)

    def punch(self, handle: int, offset: int, size: int) -> None:
        """Free the memory behind a span of the file; it reads as zero afterwards."""
        mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        if self._fallocate(handle, mode, offset, size) != 0:
            code = ctypes.get_errno()
            raise PlatformError(
                "fallocate",
                f"{handle}, PUNCH_HOLE|KEEP_SIZE, {offset:#x}, {size}",
                code,
                os.strerror(code),
                exhausted=False,
            )

    def lock(self, handle: int, byte: int, *, exclusive: bool) -> bool:
        """Lock one byte of the file for this open, without waiting: False if another has it."""
        kind = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
        try:
            fcntl.fcntl(handle, fcntl.F_OFD_SETLK, flock(kind, byte))
        except OSError as exc:
            if exc.errno in LOCK_FAILED:
                return False
            raise os_error("fcntl", f"{handle}, F_OFD_SETLK, byte {byte}", exc) from None
        return True

    def unlock(self, handle: int, byte: int) -> None:
        request = flock(fcntl.F_UNLCK, byte)
        try:
            fcntl.fcntl(handle, fcntl.F_OFD_SETLK, request)
        except OSError as exc:
            raise os_error("fcntl", f"{handle}, F_OFD_SETLK F_UNLCK, byte {byte}", exc) from None

    def locked(self, handle: int, byte: int) -> bool:
        """Whether another open of the file holds a lock on ``byte`` (any kind)."""
        request = flock(fcntl.F_WRLCK, byte)
        try:
            answer = fcntl.fcntl(handle, fcntl.F_OFD_GETLK, request)
        except OSError as exc:
            raise os_error("fcntl", f"{handle}, F_OFD_GETLK, byte {byte}", exc) from None
        return flock_kind(answer) != fcntl.F_UNLCK

    def close(self, handle: int) -> None:
        os.close(handle)
