"""A backend that fails on cue: the N-th system call, once or from then on."""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

from mmkit.platform import Advice, PlatformError, Protection, SharedMemory, VirtualMemory

# What each call fails with when the OS refuses: resources for the calls that take them.
FAILURES = {
    "reserve": errno.ENOMEM,
    "commit": errno.ENOMEM,
    "decommit": errno.ENOMEM,
    "protect": errno.ENOMEM,
    "advise": errno.EAGAIN,
    "prefault": errno.ENOMEM,
    "lock": errno.EAGAIN,
    "unlock": errno.ENOMEM,
    "resident": errno.EAGAIN,
}


class FaultyMemory:
    """Wraps a ``VirtualMemory``; armed with ``fail_at(n)``, its n-th call from then raises.

    ``release`` is passed through untouched: it runs in a finalizer, where a failure could
    only be printed, and munmap of a whole reservation the process owns does not fail.
    """

    def __init__(self, inner: VirtualMemory) -> None:
        self.inner = inner
        self.name = f"faulty-{inner.name}"
        self.page_size = inner.page_size
        self.granularity = inner.granularity
        self.huge_page_size = inner.huge_page_size
        self.calls = 0
        self.failures = 0
        self._target: int | None = None
        self._persistent = False

    def fail_at(self, n: int | None, *, persistent: bool = False) -> None:
        """Fail the n-th call from now; with ``persistent`` every call after too. ``None``
        disarms, keeping the counts: how many calls the operation made."""
        if n is not None:
            self.calls = 0
            self.failures = 0
        self._target = n
        self._persistent = persistent

    def _check(self, call: str, *arguments: object) -> None:
        self.calls += 1
        target = self._target
        if target is None or self.calls < target or (self.calls > target and not self._persistent):
            return
        self.failures += 1
        code = FAILURES.get(call) or SHARING_FAILURES[call]
        raise PlatformError(
            call,
            ", ".join(str(a) for a in arguments),
            code,
            os.strerror(code),
            exhausted=code in (errno.ENOMEM, errno.EAGAIN, errno.EMFILE),
        )

    def reserve(self, size: int, alignment: int = 0) -> int:
        self._check("reserve", size, alignment)
        return self.inner.reserve(size, alignment)

    def release(self, address: int, size: int) -> None:
        self.inner.release(address, size)

    def commit(self, address: int, size: int) -> None:
        self._check("commit", address, size)
        self.inner.commit(address, size)

    def decommit(self, address: int, size: int) -> None:
        self._check("decommit", address, size)
        self.inner.decommit(address, size)

    def protect(self, address: int, size: int, protection: Protection) -> None:
        self._check("protect", address, size, protection)
        self.inner.protect(address, size, protection)

    def advise(self, address: int, size: int, advice: Advice) -> bool:
        self._check("advise", address, size, advice)
        return self.inner.advise(address, size, advice)

    def prefault(self, address: int, size: int) -> None:
        self._check("prefault", address, size)
        self.inner.prefault(address, size)

    def lock(self, address: int, size: int) -> None:
        self._check("lock", address, size)
        self.inner.lock(address, size)

    def unlock(self, address: int, size: int) -> None:
        self._check("unlock", address, size)
        self.inner.unlock(address, size)

    def resident(self, address: int, size: int) -> int:
        self._check("resident", address, size)
        return self.inner.resident(address, size)


def _conforms(memory: FaultyMemory) -> VirtualMemory:
    return memory


SHARING_FAILURES = {
    "create": errno.EMFILE,
    "reopen": errno.EMFILE,
    "size": errno.EIO,
    "read": errno.EIO,
    "map": errno.ENOMEM,
    "vacate": errno.ENOMEM,
    "punch": errno.EIO,
    "lock": errno.ENOLCK,
    "unlock": errno.ENOLCK,
    "locked": errno.ENOLCK,
}


class FaultySharing:
    """Wraps a ``SharedMemory``; its calls count, and fail, with a ``FaultyMemory``'s.

    ``release``, ``unmap`` and ``close`` are passed through: they give back, and cannot fail
    for what this process mapped and opened.
    """

    def __init__(self, inner: SharedMemory, clock: FaultyMemory) -> None:
        self.inner = inner
        self.clock = clock
        self.name = f"faulty-{inner.name}"
        self.gives_back = inner.gives_back

    def _check(self, call: str, *arguments: object) -> None:
        self.clock._check(call, *arguments)

    def create(self, size: int, control: int) -> int:
        self._check("create", size)
        return self.inner.create(size, control)

    def reopen(self, pid: int, handle: int) -> int:
        self._check("reopen", pid, handle)
        return self.inner.reopen(pid, handle)

    def size(self, handle: int) -> int:
        self._check("size", handle)
        return self.inner.size(handle)

    def read(self, handle: int, offset: int, size: int) -> bytes:
        self._check("read", handle, offset, size)
        return self.inner.read(handle, offset, size)

    def user(self) -> int:
        return self.inner.user()

    def reserve(self, size: int, alignment: int, private: Sequence[tuple[int, int]]) -> int:
        self._check("reserve", size, alignment)
        return self.inner.reserve(size, alignment, private)

    def release(self, address: int, size: int) -> None:
        self.inner.release(address, size)

    def map(
        self, address: int | None, size: int, handle: int, offset: int, *, writable: bool
    ) -> int:
        self._check("map", address, size, handle, offset)
        return self.inner.map(address, size, handle, offset, writable=writable)

    def vacate(self, address: int, size: int) -> None:
        self._check("vacate", address, size)
        self.inner.vacate(address, size)

    def unmap(self, address: int, size: int) -> None:
        self.inner.unmap(address, size)

    def blank(self, address: int, size: int) -> None:
        self.inner.blank(address, size)

    def punch(self, handle: int, offset: int, size: int) -> None:
        self._check("punch", handle, offset, size)
        self.inner.punch(handle, offset, size)

    def lock(self, handle: int, byte: int, *, exclusive: bool) -> bool:
        self._check("lock", handle, byte)
        return self.inner.lock(handle, byte, exclusive=exclusive)

    def unlock(self, handle: int, byte: int) -> None:
        self._check("unlock", handle, byte)
        self.inner.unlock(handle, byte)

    def locked(self, handle: int, byte: int) -> bool:
        self._check("locked", handle, byte)
        return self.inner.locked(handle, byte)

    def close(self, handle: int) -> None:
        self.inner.close(handle)


def _conforms_sharing(sharing: FaultySharing) -> SharedMemory:
    return sharing
