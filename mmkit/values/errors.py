"""The error tree. Every error mmkit raises on purpose is an ``MmkitError``."""

from __future__ import annotations

import errno
from pathlib import Path


class MmkitError(Exception):
    """Base of every error mmkit raises."""


class ConfigError(MmkitError, ValueError):
    """A ``MemoryConfig`` that cannot work; the message names the rule and the values."""


class InvalidId(MmkitError, ValueError):
    """A dimension or layer id that is malformed (not a positive int, say)."""


class UnknownDimension(MmkitError, LookupError):
    """A well-formed dimension id that the configuration does not have."""


class LayerOutOfRange(MmkitError, IndexError):
    """A layer index past the end of its dimension."""


class InvalidState(MmkitError):
    """An operation the manager's current state does not allow (e.g. anything after close)."""


class AlreadyLoaded(MmkitError):
    """``load_dimension`` on a dimension that is loaded."""


class NotLoaded(MmkitError):
    """Access to a dimension that is not loaded, with no data directory to load it from."""


class InvalidArgument(MmkitError, ValueError):
    """An argument of the wrong type or value, such as a block size of zero."""


class InvalidSource(MmkitError, ValueError):
    """A load source of the wrong type or size."""


class DataFileError(MmkitError):
    """A dimension data file that is missing, unreadable or corrupt."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem

    def __reduce__(self) -> tuple[type[DataFileError], tuple[Path, str]]:
        # Pickled the way it was made, so a worker process can send one back.
        return (DataFileError, (self.path, self.problem))


class NotABuffer(MmkitError, TypeError):
    """An object that does not support the buffer protocol where one was needed."""


class InvalidBlock(MmkitError, ValueError):
    """A block that is not live in this manager: freed already, or another manager's."""


class BlockInUse(MmkitError, BufferError):
    """``free`` of a block whose views are still held; release them first."""


class NotCopyable(MmkitError, TypeError):
    """A copy or pickle of an object that owns memory of this process (a manager, a block)."""


class OwnsMemory:
    """A mixin for objects that own memory of this process: copying or pickling one refuses.

    A copy would be a second owner of the same pages; closing either would pull the memory
    from under the other.
    """

    __slots__ = ()

    def __reduce_ex__(self, protocol: object) -> str | tuple[object, ...]:
        raise NotCopyable(
            f"a {type(self).__name__} owns memory of this process; it cannot be copied or pickled"
        )


class LimitExceeded(MmkitError, MemoryError):
    """A request the budget cannot satisfy."""


class OutOfMemory(MmkitError, MemoryError):
    """The OS refused memory: ENOMEM, RLIMIT_AS, the commit limit, the lock limit."""


class OutOfMappings(OutOfMemory):
    """The OS refused because the process has as many memory mappings as it may have.

    On Linux that limit is ``vm.max_map_count``; freeing memory does not help, unmapping does.
    """


class AttachError(MmkitError):
    """``mmkit.attach`` refused: a malformed or foreign token, an owner that is gone or
    closed, another user's memory, an incompatible version. Nothing was mapped."""


class SystemCallFailed(MmkitError):
    """A system call failed for a reason other than memory pressure."""


_EXHAUSTION_ERRNOS = frozenset({errno.ENOMEM, errno.EAGAIN})


def from_os_error(exc: OSError, action: str) -> MmkitError:
    """Translate a failed system call into the ``MmkitError`` a caller can act on."""
    exhausted = getattr(exc, "exhausted", exc.errno in _EXHAUSTION_ERRNOS)
    kind: type[MmkitError] = OutOfMemory if exhausted else SystemCallFailed
    if getattr(exc, "mappings", False):
        kind = OutOfMappings
    error = kind(f"{action}: {exc}")
    error.__cause__ = exc
    return error
