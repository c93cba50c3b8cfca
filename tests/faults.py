"""A backend that fails on cue: the N-th system call, once or from then on."""

from __future__ import annotations

import errno
import os

from mmkit.platform import Advice, PlatformError, Protection, VirtualMemory

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
        """Fail the n-th call from now (None: never); with ``persistent`` every call after too."""
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
        code = FAILURES[call]
        raise PlatformError(
            call,
            ", ".join(str(a) for a in arguments),
            code,
            os.strerror(code),
            exhausted=code in (errno.ENOMEM, errno.EAGAIN),
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
