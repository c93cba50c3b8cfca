"""The file system side: only regular files are read or replaced, and replaced atomically.

A save acts like ``open(path, "wb")`` (through symlinks, keeping the mode), but by rename.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mmkit.values.errors import DataFileError, InvalidArgument

Buffer = bytes | bytearray | memoryview

# O_NONBLOCK makes opening a FIFO that has no writer return at once instead of waiting for
# one; it is cleared again on the regular files that pass the check. Both are POSIX only.
_NONBLOCK: int = getattr(os, "O_NONBLOCK", 0)
_SET_BLOCKING = getattr(os, "set_blocking", None)
_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def identity(status: os.stat_result) -> tuple[int, ...]:
    """A file's identity: equal only while nothing has written, renamed or replaced it."""
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)


def reason(exc: OSError) -> str:
    """The OS's words for a failure, without the errno and file name ``str`` adds."""
    return exc.strerror or str(exc)


def checked_path(path: object) -> str:
    """``path`` as a str; ``InvalidArgument`` for what cannot name a file: "", a NUL byte."""
    if not isinstance(path, str | os.PathLike):
        raise InvalidArgument(
            f"a data file path must be a str or a path, not {type(path).__name__}"
        )
    name = os.fspath(path)
    if not isinstance(name, str):
        raise InvalidArgument(f"a data file path must be text, not {name!r}")
    if not name:
        raise InvalidArgument("a data file path must not be empty")
    if "\0" in name:
        raise InvalidArgument(f"a data file path cannot contain a NUL byte: {name!r}")
    return name


def not_regular(mode: int) -> str | None:
    """Why a file of this mode cannot be a data file; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a directory"
    kind = next((name for test, name in _KINDS if test(mode)), f"mode {stat.filemode(mode)}")
    return f"not a regular file ({kind})"


def _open_nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | _NONBLOCK)


def open_regular(path: Path | str) -> io.FileIO:
    """Open a data file unbuffered (``readinto`` then fills memory straight from the kernel).

    ``DataFileError`` at once unless ``fstat`` of the open descriptor says it is regular.
    """
    name = checked_path(path)
    try:
        file = io.FileIO(name, "rb", opener=_open_nonblocking)
    except OSError as exc:
        if os.path.isdir(name):
            raise DataFileError(path, "is a directory") from exc
        raise DataFileError(path, f"cannot open: {reason(exc)}") from exc
    try:
        problem = not_regular(os.fstat(file.fileno()).st_mode)
        if problem is None and _NONBLOCK and _SET_BLOCKING is not None:
            _SET_BLOCKING(file.fileno(), True)
    except BaseException as exc:
        file.close()
        if isinstance(exc, OSError):
            raise DataFileError(path, f"cannot open: {reason(exc)}") from exc
        raise
    if problem is not None:
        file.close()
        raise DataFileError(path, problem)
    return file


@dataclass(frozen=True, slots=True)
class SaveTarget:
    """A file to replace: the path given (for messages), the file it names, its status now."""

    path: Path
    final: Path
    existing: os.stat_result | None


def save_target(path: Path | str) -> SaveTarget:
    """Where a save goes; ``DataFileError`` if a directory, FIFO or device is in the way.

    A symlink is followed, so the link stays and the file it points to is replaced.
    """
    name = checked_path(path)
    final = Path(os.path.realpath(name))
    try:
        existing: os.stat_result | None = os.stat(final)
    except FileNotFoundError:
        existing = None
    except OSError as exc:
        raise DataFileError(path, f"cannot write: {reason(exc)}") from exc
    if existing is not None:
        problem = not_regular(existing.st_mode)
        if problem is not None:
            raise DataFileError(path, problem)
    return SaveTarget(Path(name), final, existing)


def _keep_owner_and_mode(temporary: Path, fd: int, existing: os.stat_result) -> None:
    """Give the new file the replaced one's permission bits, and its owner where allowed."""
    chown = getattr(os, "chown", None)  # POSIX only
    mine = os.fstat(fd)
    if chown is not None and (mine.st_uid, mine.st_gid) != (existing.st_uid, existing.st_gid):
        with contextlib.suppress(OSError):  # best effort: only root may give a file away
            chown(temporary, existing.st_uid, existing.st_gid)
    mode = stat.S_IMODE(existing.st_mode) & 0o777
    if stat.S_IMODE(mine.st_mode) != mode:
        os.chmod(temporary, mode)


@dataclass(slots=True)
class Temporary:
    """A hidden file beside the target, being written; then renamed over it or removed."""

    target: SaveTarget
    path: Path
    file: BinaryIO

    def discard(self) -> None:
        """Close and remove the file; the target is left as it was."""
        self.file.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
            return
        with contextlib.suppress(OSError):  # Windows keeps a read-only file (a 0o444 target's)
            os.chmod(self.path, 0o600)
            os.unlink(self.path)

    def commit(self) -> tuple[int, ...]:
        """fsync the file, rename it over the target, fsync the directory; or discard it.

        Returns the renamed file's ``identity``.
        """
        try:
            with self.file:
                os.fsync(self.file.fileno())
            os.replace(self.path, self.target.final)
            renamed = identity(os.stat(self.target.final))
        except BaseException as exc:
            self.discard()
            if isinstance(exc, OSError):
                raise DataFileError(self.target.path, f"write failed: {reason(exc)}") from exc
            raise
        _fsync_directory(self.target.final.parent)
        return renamed


def create_temporary(target: SaveTarget) -> Temporary:
    """A new file beside the target, with the mode ``open(target, "wb")`` would leave.

    That is 0o666 less the umask, or the replaced file's mode (and owner, where allowed).
    """
    final = target.final
    for _ in range(100):
        temporary = final.with_name(f".{final.name}.{secrets.token_hex(4)}.tmp")
        try:
            file = io.FileIO(temporary, "xb")
        except FileExistsError:
            continue
        except OSError as exc:
            problem = f"cannot create a temporary file: {reason(exc)}"
            raise DataFileError(target.path, problem) from exc
        try:
            if target.existing is not None:
                _keep_owner_and_mode(temporary, file.fileno(), target.existing)
        except BaseException as exc:
            Temporary(target, temporary, file).discard()
            if isinstance(exc, OSError):
                raise DataFileError(target.path, f"write failed: {reason(exc)}") from exc
            raise
        return Temporary(target, temporary, file)
    raise DataFileError(target.path, "cannot create a temporary file: no free name")


def write_all(file: BinaryIO, data: Buffer) -> None:
    """Write every byte of ``data``, however short the OS's writes are."""
    with memoryview(data) as raw, raw.cast("B") as view:
        written = 0
        while written < view.nbytes:
            written += file.write(view[written:])


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable; skipped where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
