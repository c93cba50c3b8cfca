"""The portable face of the platform layer: the interface every backend implements."""

from __future__ import annotations

import enum
import errno
import os
from collections.abc import Sequence
from typing import Protocol, runtime_checkable


class Protection(enum.Enum):
    """Access allowed to a committed span."""

    NONE = "none"
    READ = "read"
    READ_WRITE = "read-write"


class Advice(enum.Enum):
    """Hints about how a span will be used; each backend maps what its OS supports."""

    NORMAL = "normal"
    SEQUENTIAL = "sequential"
    RANDOM = "random"
    WILLNEED = "willneed"
    DONTNEED = "dontneed"
    HUGEPAGE = "hugepage"
    DONTFORK = "dontfork"


class PlatformError(OSError):
    """A failed system call: names the call and its arguments, keeps errno / last-error.

    ``exhausted`` is true when the OS refused for lack of a resource (memory, address space,
    commit charge, lockable pages), so the layers above can tell pressure from misuse without
    knowing each OS's codes; ``mappings`` when that resource is the process's count of memory
    mappings (Linux ``vm.max_map_count``), which freeing memory elsewhere does not cure.
    """

    def __init__(
        self,
        call: str,
        arguments: str,
        code: int,
        reason: str,
        *,
        exhausted: bool,
        mappings: bool = False,
        winerror: int | None = None,
    ) -> None:
        super().__init__(code, f"{call}({arguments}) failed: {reason}")
        self.call = call
        self.arguments = arguments
        self.reason = reason
        self.exhausted = exhausted
        self.mappings = mappings
        self.winerror_code = winerror
        self.os_code = winerror if winerror is not None else code

    def __reduce__(self) -> tuple[object, ...]:
        # Pickled the way it was made (OSError's own pickling would call it with two args).
        keywords = {
            "exhausted": self.exhausted,
            "mappings": self.mappings,
            "winerror": self.winerror_code,
        }
        arguments = (self.call, self.arguments, self.errno, self.reason)
        return (_rebuild_platform_error, (arguments, keywords))


def _rebuild_platform_error(
    arguments: tuple[str, str, int, str], keywords: dict[str, object]
) -> PlatformError:
    call, text, code, reason = arguments
    return PlatformError(
        call,
        text,
        code,
        reason,
        exhausted=bool(keywords["exhausted"]),
        mappings=bool(keywords["mappings"]),
        winerror=keywords["winerror"] if isinstance(keywords["winerror"], int) else None,
    )


@runtime_checkable
class VirtualMemory(Protocol):
    """Reserve-then-commit virtual memory, as both OS families offer it.

    Addresses are plain ints. A reservation holds address space only; committing a span of
    it makes the span readable and writable and zero-filled; decommitting gives its physical
    memory back and leaves it reserved and inaccessible, zero again when next committed.
    """

    name: str
    page_size: int
    granularity: int
    huge_page_size: int

    def reserve(self, size: int, alignment: int = 0) -> int:
        """Reserve ``size`` bytes of inaccessible address space at a multiple of ``alignment``."""
        ...

    def release(self, address: int, size: int) -> None:
        """Give a whole reservation back to the OS."""
        ...

    def commit(self, address: int, size: int) -> None:
        """Make a reserved span readable and writable; its bytes read as zero."""
        ...

    def decommit(self, address: int, size: int) -> None:
        """Return a span's physical memory and make it inaccessible again, in one step.

        Afterwards the span reads as zero when next committed and holds no lock. If it fails,
        the span's state is unknown (old bytes, or inaccessible): it must not be used again
        until a later decommit of it succeeds.
        """
        ...

    def protect(self, address: int, size: int, protection: Protection) -> None:
        """Change the access allowed to a committed span."""
        ...

    def advise(self, address: int, size: int, advice: Advice) -> bool:
        """Pass a usage hint; False when this OS has no such hint (a documented no-op)."""
        ...

    def prefault(self, address: int, size: int) -> None:
        """Back every page of a committed, writable span with physical memory now."""
        ...

    def lock(self, address: int, size: int) -> None:
        """Keep a committed span in physical memory."""
        ...

    def unlock(self, address: int, size: int) -> None:
        """Undo ``lock``."""
        ...

    def resident(self, address: int, size: int) -> int:
        """Bytes of the span that are in physical memory right now, as the OS reports."""
        ...


class NotShared(OSError):
    """A process's handle that names something other than mmkit's shared memory."""


@runtime_checkable
class SharedMemory(Protocol):
    """Memory that several processes map at once: made by one, opened read-only by others.

    A *handle* is this process's descriptor (or OS handle) of one shared object. Byte locks
    on a handle are advisory, belong to that handle's open of the object, and go away when
    it is closed or its process dies; the owner and its readers use them to publish and pin.
    """

    name: str
    gives_back: bool
    """Whether ``punch`` returns memory to the OS (else it does nothing)."""

    def create(self, size: int, control: int) -> int:
        """A new shared object of ``size`` zero bytes that nobody can resize, open read-write.

        Its first ``control`` bytes are the control area, the one part ``map`` maps anywhere
        (Windows keeps it apart, so that a closed reader's lingering control view does not
        hold the whole object).
        """
        ...

    def reopen(self, pid: int, handle: int) -> int:
        """A read-only handle of our own for another process's shared object.

        ``NotShared`` if the handle names something else (checked before it is opened, so
        a FIFO or a device is never opened); otherwise ``OSError`` as the OS says.
        """
        ...

    def size(self, handle: int) -> int: ...

    def read(self, handle: int, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of the object from ``offset``, without mapping it."""
        ...

    def user(self) -> int:
        """Who this process runs as: only the same user may attach to its shared memory."""
        ...

    def reserve(self, size: int, alignment: int, private: Sequence[tuple[int, int]]) -> int:
        """Reserve address space as ``VirtualMemory.reserve`` does, in which ``map`` can map
        shared spans, and ``VirtualMemory`` commit the ``private`` ones (offset, size; whole
        granules)."""
        ...

    def release(self, address: int, size: int) -> None:
        """Give back a whole ``reserve``d span, with everything mapped in it."""
        ...

    def map(
        self, address: int | None, size: int, handle: int, offset: int, *, writable: bool
    ) -> int:
        """Map part of the object over a shared span of a reservation, or the control area
        anywhere (``address`` None); the address it is at."""
        ...

    def vacate(self, address: int, size: int) -> None:
        """Put back the reservation where ``map`` mapped: inaccessible, mapping nothing (where
        a span is part of what one call mapped, Windows makes it inaccessible only)."""
        ...

    def unmap(self, address: int, size: int) -> None:
        """Unmap what ``map`` mapped anywhere."""
        ...

    def blank(self, address: int, size: int) -> None:
        """Replace what ``map`` mapped with read-only zeros, in one step."""
        ...

    def punch(self, handle: int, offset: int, size: int) -> None:
        """Give back the memory behind a span of the object, which then reads as zero (where
        ``gives_back``; elsewhere it does nothing)."""
        ...

    def lock(self, handle: int, byte: int, *, exclusive: bool) -> bool:
        """Lock one byte for this handle without waiting; False if another holds it."""
        ...

    def unlock(self, handle: int, byte: int) -> None: ...

    def locked(self, handle: int, byte: int) -> bool:
        """Whether another handle holds a lock on ``byte``."""
        ...

    def close(self, handle: int) -> None: ...


def os_error(call: str, arguments: str, exc: OSError) -> PlatformError:
    """A ``PlatformError`` for an ``OSError`` the standard library raised for ``call``."""
    code = exc.errno or errno.EIO
    return PlatformError(
        call,
        arguments,
        code,
        exc.strerror or os.strerror(code),
        exhausted=code in (errno.ENOMEM, errno.ENOSPC, errno.EMFILE, errno.ENFILE, errno.ENOLCK),
    )


def align_down(value: int, alignment: int) -> int:
    """Largest multiple of ``alignment`` (a power of two) not above ``value``."""
    return value & ~(alignment - 1)


def align_up(value: int, alignment: int) -> int:
    """Smallest multiple of ``alignment`` (a power of two) not below ``value``."""
    return (value + alignment - 1) & ~(alignment - 1)


def is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def check_span(call: str, address: int, size: int, page_size: int) -> None:
    """Reject a span the OS would refuse, before any call is made."""
    if address % page_size or size <= 0 or size % page_size:
        raise ValueError(
            f"{call}: span at {address:#x} of {size} bytes is not whole pages of {page_size}"
        )
