"""Byte locks that belong to one open of a file, built on POSIX record locks (for macOS).

A POSIX ``fcntl`` record lock belongs to a *process*: two opens in one process never
conflict, every lock the process has on a file goes when it closes *any* descriptor of that
file, and a forked child holds none of them. Linux has locks that belong to one open
(``F_OFD_SETLK``); macOS has not. ``ByteLocks`` gives macOS the same behaviour:

- conflicts between this process's opens are settled here, and the process holds each byte's
  record lock as the union of what its opens hold (exclusive if one holds it exclusively);
- an open is an id, not a descriptor: the table keeps one descriptor of each file for as
  long as any open of it is left, and a second descriptor of a file already open is never
  taken (closing it would drop the process's locks);
- across ``fork`` the child takes the shared locks it inherits *before* the parent goes on,
  the way an inherited open would share them. A child that cannot say so in time leaves the
  parent holding those bytes for good (``kept``), since the child may rely on them.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import os
import select
import struct
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

assert sys.platform != "win32"

import fcntl  # noqa: E402  (after the platform assertion, which mypy reads)

from mmkit.platform.base import PlatformError, os_error  # noqa: E402

if sys.platform == "darwin":
    FLOCK = struct.Struct("@qqihh")
    """``struct flock`` on macOS: start, len, pid, type, whence."""
else:
    FLOCK = struct.Struct("@hhqqi4x")
    """``struct flock`` on Linux: type, whence, start, len, pid."""

LOCK_FAILED = frozenset({errno.EAGAIN, errno.EACCES})
"""What ``F_SETLK`` answers when another holds the lock."""
P = ParamSpec("P")
R = TypeVar("R")
FORK_PATIENCE = 5.0
"""Seconds the parent waits after ``fork`` for the child to take its inherited locks."""


def flock(kind: int, byte: int) -> bytes:
    """A ``struct flock`` for one byte from the start of the file."""
    if sys.platform == "darwin":
        return FLOCK.pack(byte, 1, 0, kind, os.SEEK_SET)
    return FLOCK.pack(kind, os.SEEK_SET, byte, 1, 0)


def flock_kind(answer: bytes) -> int:
    """The lock type of a ``struct flock`` the kernel filled in (``F_GETLK``)."""
    fields = FLOCK.unpack(answer)
    return int(fields[3] if sys.platform == "darwin" else fields[0])


GUARD = threading.RLock()
"""Guards the byte-lock table and the shm backend's handles; held across ``fork``."""
_WAITING: list[Callable[[], None]] = []


def inside() -> bool:
    """Whether this thread holds ``GUARD``: a call now re-enters one under way.

    A collection runs Python code (``gc.callbacks``, weak-reference callbacks) in the middle
    of any allocation, and mmkit gives memory back from there. A close or an unlock that
    comes that way must not change the state the interrupted call is using: it waits
    (``later``) until that call is done (``settle``), microseconds later.
    """
    return bool(GUARD._is_owned())  # type: ignore[attr-defined]  # Condition uses it too


def later(action: Callable[[], None]) -> None:
    _WAITING.append(action)


def settle() -> None:
    """Run what re-entries left, once this thread is out of every guarded call. (A signal
    handler's exception between a call and its ``settle`` leaves them to the next call.)"""
    while _WAITING and not inside():
        try:
            action = _WAITING.pop(0)
        except IndexError:
            return
        try:
            action()
        except Exception as error:  # what the collection's callback would have printed
            traceback.print_exception(error)


def settled(method: Callable[P, R]) -> Callable[P, R]:
    """``method``, followed by ``settle``: for the calls that change the table. (Queries
    do not settle: the shm backend's hand-over thread asks them, and must never run a
    close, which could be of its own owner.)"""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        finally:
            settle()

    return call


@dataclass(eq=False)
class _File:
    """One file as this process has it: its descriptor, its opens and their locks."""

    fd: int
    key: tuple[int, int]
    opens: set[int] = field(default_factory=set)
    held: dict[int, dict[int, bool]] = field(default_factory=dict)
    """byte → {open: exclusive}"""
    kept: set[int] = field(default_factory=set)
    """Bytes held for a forked child that never said it holds them itself."""
    spare: list[int] = field(default_factory=list)
    """Descriptors of the file that came while it was locked: closed with the last open."""

    def want(self, byte: int, holders: dict[int, bool]) -> int:
        """The record lock the process needs on ``byte`` with these holders."""
        if any(holders.values()):
            return fcntl.F_WRLCK
        if holders or byte in self.kept:
            return fcntl.F_RDLCK
        return fcntl.F_UNLCK

    def set(self, byte: int, kind: int) -> bool:
        """Set the process's record lock on ``byte``; False if another process conflicts."""
        try:
            fcntl.fcntl(self.fd, fcntl.F_SETLK, flock(kind, byte))
        except OSError as exc:
            if exc.errno in LOCK_FAILED and kind != fcntl.F_UNLCK:
                return False
            raise os_error("fcntl", f"{self.fd}, F_SETLK, byte {byte}", exc) from None
        return True


class ByteLocks:
    """This process's table of opens and their byte locks (one per process: ``LOCKS``)."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._files: dict[tuple[int, int], _File] = {}
        self._of: dict[int, _File] = {}
        self._pipe: tuple[int, int] | None = None
        self._shared_at_fork: dict[_File, set[int]] = {}

    @settled
    def open(self, fd: int) -> int:
        """A new open of the file ``fd`` refers to; the table owns ``fd`` from now on (it is
        closed at once if the table already has a descriptor of the file)."""
        try:
            info = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        key = (info.st_dev, info.st_ino)
        with GUARD:
            file = self._files.get(key)
            if file is None:
                file = self._files[key] = _File(fd, key)
            elif file.held or file.kept:
                file.spare.append(fd)  # closing it now would drop the process's locks
            else:
                os.close(fd)  # no lock to lose: one descriptor per file is enough
            return self._add(file)

    def join(self, key: tuple[int, int]) -> int | None:
        """A new open of a file the table has (``(st_dev, st_ino)``), or None if it has not."""
        with GUARD:
            file = self._files.get(key)
            return None if file is None else self._add(file)

    def again(self, opened: int) -> int:
        """Another open of the same file, with no locks of its own."""
        with GUARD:
            return self._add(self._file(opened))

    def _file(self, opened: int) -> _File:
        file = self._of.get(opened)
        if file is None:
            raise OSError(errno.EBADF, f"open {opened} of the byte-lock table is closed")
        return file

    def _add(self, file: _File) -> int:
        opened = next(self._ids)
        file.opens.add(opened)
        self._of[opened] = file
        return opened

    def key(self, opened: int) -> tuple[int, int]:
        with GUARD:
            return self._file(opened).key

    def fd(self, opened: int) -> int:
        """The descriptor behind an open (shared by every open of the file in the process)."""
        with GUARD:
            return self._file(opened).fd

    @settled
    def lock(self, opened: int, byte: int, *, exclusive: bool) -> bool:
        """Lock ``byte`` for this open without waiting; False if another open has it."""
        with GUARD:
            file = self._file(opened)
            holders = file.held.get(byte, {})
            others = [x for o, x in holders.items() if o != opened]
            if others and (exclusive or any(others)):
                return False
            wanted = dict(holders)
            wanted[opened] = exclusive
            before, after = file.want(byte, holders), file.want(byte, wanted)
            if before != after and not file.set(byte, after):
                return False
            file.held[byte] = wanted
            return True

    @settled
    def unlock(self, opened: int, byte: int) -> None:
        """Let go of ``byte`` (from a collection's callback inside a call here: right after
        that call, so it never changes a state the call is using)."""
        if inside():
            later(lambda: self.unlock(opened, byte))
            return
        with GUARD:
            self._unlock(self._file(opened), opened, byte)

    def _unlock(self, file: _File, opened: int, byte: int) -> None:
        """Set the process's lock to what the other opens need, whether or not this open's
        lock was recorded: a ``lock`` that a signal handler's exception cut short between
        taking the lock and recording it is let go of too."""
        holders = file.held.get(byte, {})
        left = {o: x for o, x in holders.items() if o != opened}
        file.set(byte, file.want(byte, left))
        if left:
            file.held[byte] = left
        else:
            file.held.pop(byte, None)

    def locked(self, opened: int, byte: int) -> bool:
        """Whether another open, in this process or another, holds a lock on ``byte`` (a
        byte kept for a forked child counts: the child may read through it)."""
        with GUARD:
            file = self._file(opened)
            if byte in file.kept or any(o != opened for o in file.held.get(byte, {})):
                return True
            try:
                answer = fcntl.fcntl(file.fd, fcntl.F_GETLK, flock(fcntl.F_WRLCK, byte))
            except OSError as exc:
                raise os_error("fcntl", f"{file.fd}, F_GETLK, byte {byte}", exc) from None
            return flock_kind(answer) != fcntl.F_UNLCK

    @settled
    def close(self, opened: int) -> None:
        """Let go of an open's locks; the file's descriptor closes with its last open."""
        if inside():
            later(lambda: self.close(opened))
            return
        with GUARD:
            file = self._of.pop(opened, None)
            if file is None:
                return
            try:
                for byte in [b for b, holders in file.held.items() if opened in holders]:
                    self._unlock(file, opened, byte)
            finally:
                file.opens.discard(opened)
                if not file.opens and not file.kept:
                    del self._files[file.key]
                    for fd in (file.fd, *file.spare):
                        os.close(fd)

    # -- fork ---------------------------------------------------------------------------

    def _before_fork(self) -> None:
        GUARD.acquire()
        shared = {
            file: {b for b, holders in file.held.items() if not any(holders.values())}
            for file in self._files.values()
        }
        self._shared_at_fork = {file: bytes_ for file, bytes_ in shared.items() if bytes_}
        if self._shared_at_fork:
            try:
                self._pipe = os.pipe()
            except OSError:
                self._pipe = None  # the parent keeps what the child may need

    def _after_fork_in_parent(self) -> None:
        try:
            if not self._shared_at_fork:
                return
            confirmed = False
            if self._pipe is not None:
                reader, writer = self._pipe
                os.close(writer)
                try:
                    ready, _, _ = select.select([reader], [], [], FORK_PATIENCE)
                    confirmed = bool(ready) and os.read(reader, 1) == b"1"
                except OSError:
                    confirmed = False
                finally:
                    os.close(reader)
            if not confirmed:
                for file, bytes_ in self._shared_at_fork.items():
                    file.kept |= bytes_
        finally:
            self._pipe, self._shared_at_fork = None, {}
            GUARD.release()

    def _after_fork_in_child(self) -> None:
        """Hold, as this process, the shared locks the parent's opens held; drop the rest."""
        ok = True
        for file in self._files.values():
            file.kept = set()
            for byte, holders in list(file.held.items()):
                if any(holders.values()):
                    del file.held[byte]  # the parent's exclusive lock: never the child's
                    continue
                try:
                    taken = file.set(byte, fcntl.F_RDLCK)
                except PlatformError:
                    taken = False
                if not taken:
                    del file.held[byte]
                    ok = False
        if self._pipe is not None:
            reader, writer = self._pipe
            with contextlib.suppress(OSError):
                os.write(writer, b"1" if ok else b"0")
            os.close(writer)
            os.close(reader)
        self._pipe, self._shared_at_fork = None, {}
        GUARD._at_fork_reinit()  # type: ignore[attr-defined]  # as threading resets its own


LOCKS = ByteLocks()
"""This process's byte-lock table."""

os.register_at_fork(
    before=LOCKS._before_fork,
    after_in_parent=LOCKS._after_fork_in_parent,
    after_in_child=LOCKS._after_fork_in_child,
)
