"""POSIX shared memory for macOS: ``shm_open`` unlinked at once, descriptors over a socket.

macOS has no memfd and no ``/proc``. The owner creates a POSIX shared memory object under a
random name, opens a read-only twin, sizes it (macOS lets that happen once) and unlinks the
name at once, so nothing is left by name however the processes die. Other processes get
the read-only descriptor from the owner: a thread of the owner's answers on a Unix socket
in a directory only this user can enter, and checks the caller's user before it sends.

Byte locks cannot be taken on a shared memory object, so each object comes with an
unlinked lock file whose descriptor travels with it; ``ByteLocks`` makes their POSIX record
locks behave like Linux's per-open ones. A socket is the one trace a killed owner leaves:
it holds no memory, refuses connections, and the next owner of the user removes it.

The memory behind part of the object cannot be given back while it lives (``gives_back``).
This module runs on Linux as well, where the test suite drives it.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import importlib
import os
import secrets
import select
import socket
import stat
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mmkit.platform.base import NotShared, os_error
from mmkit.platform.posix import PosixMemory

assert sys.platform != "win32"

import fcntl  # noqa: E402  (after the platform assertion, which mypy reads)

from mmkit.platform.bytelocks import GUARD, LOCKS, inside, later, settled  # noqa: E402
from mmkit.platform.fdsharing import FdSharing  # noqa: E402

_shm = importlib.import_module("_posixshmem")  # the stdlib's shm_open (shared_memory's)
_shm_open: Callable[[str, int, int], int] = _shm.shm_open
_shm_unlink: Callable[[str], None] = _shm.shm_unlink

HELLO = b"mmkit-shm-1"
PATIENCE = 5.0
"""Seconds a reader waits for the owner's answer before it gives up."""
HANDOVER = 1.0
"""Seconds the owner gives one caller to take its descriptors: it serves one at a time."""
_CS_DARWIN_USER_TEMP_DIR = 65537
_RECEIVE_FLAGS = getattr(socket, "MSG_CMSG_CLOEXEC", 0)  # Linux: never inheritable, at once


def directory() -> Path:
    """Where this user's owners listen, the same in every process of the user: under
    macOS's per-user temporary directory, which the system makes and only the user can
    enter (Linux, which runs this backend for its tests, uses ``/tmp/mmkit-<uid>``)."""
    if sys.platform == "darwin":
        private = os.confstr(_CS_DARWIN_USER_TEMP_DIR)
        if not private:
            raise NotShared(errno.ENOENT, "macOS reports no per-user temporary directory")
        return Path(private) / "mmkit"
    return Path(f"/tmp/mmkit-{os.geteuid()}")


def _private(path: Path) -> None:
    """Refuse a directory that is not this user's own and closed to everyone else."""
    info = os.lstat(path)
    if (
        not stat.S_ISDIR(info.st_mode)
        or info.st_uid != os.geteuid()
        or stat.S_IMODE(info.st_mode) & 0o077
    ):
        raise PermissionError(
            errno.EPERM,
            f"{path} is not a directory of this user closed to others; remove it and retry",
        )


def peer_user(conn: socket.socket) -> int:
    """The effective user of the process at the other end of a Unix socket."""
    if sys.platform == "darwin":
        uid, gid = ctypes.c_uint32(), ctypes.c_uint32()
        if _getpeereid(conn.fileno(), ctypes.byref(uid), ctypes.byref(gid)) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return uid.value
    credentials = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    return int.from_bytes(credentials[4:8], sys.byteorder)  # struct ucred: pid, uid, gid


if sys.platform == "darwin":
    _getpeereid = ctypes.CDLL("/usr/lib/libSystem.B.dylib", use_errno=True).getpeereid
    _getpeereid.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    _getpeereid.restype = ctypes.c_int


@dataclass(eq=False)
class _Object:
    """A shared object as one handle of this process has it."""

    fd: int
    readonly: int
    """A read-only descriptor of it (the owner's twin; ``fd`` itself in a reader)."""
    opened: int
    """The handle's open of the lock file (``LOCKS``)."""
    server: _Server | None = None


class _Server:
    """Hands a shared object's read-only descriptor, and its lock file, to the processes of
    this user that connect: one thread, one caller at a time, each within ``HANDOVER``.

    A pipe wakes the thread to stop, so stopping needs neither the socket's name nor a
    caller's cooperation.
    """

    def __init__(self, path: Path, readonly: int, opened: int) -> None:
        self.path, self.readonly, self.opened = path, readonly, opened
        self.pid = os.getpid()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.wake = (-1, -1)
        bound = False
        try:
            self.wake = os.pipe()
            try:
                self.sock.bind(str(path))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                path.unlink()  # left by a process that had our pid and was killed
                self.sock.bind(str(path))
            bound = True
            self.sock.listen(128)
            self.sock.setblocking(False)
            self.thread = threading.Thread(target=self._serve, name="mmkit-share", daemon=True)
            self.thread.start()
        except BaseException:
            if bound:
                with contextlib.suppress(OSError):
                    path.unlink()
            self._close()
            raise
        _SERVERS.add(self)

    def _serve(self) -> None:
        while True:
            ready, _, _ = select.select([self.sock.fileno(), self.wake[0]], [], [])
            if self.wake[0] in ready:
                return
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                continue  # the caller went away before we took it
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                self._answer(conn, time.monotonic() + HANDOVER)

    def _answer(self, conn: socket.socket, deadline: float) -> None:
        def remaining() -> float:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(errno.ETIMEDOUT, "the caller took too long")
            return left

        conn.settimeout(remaining())
        if peer_user(conn) != os.geteuid():
            return
        device, inode = LOCKS.key(self.opened)
        socket.send_fds(conn, [b"%s %d %d" % (HELLO, device, inode)], [self.readonly])
        conn.settimeout(remaining())
        if conn.recv(4) == b"need":
            conn.settimeout(remaining())
            socket.send_fds(conn, [b"lock"], [LOCKS.fd(self.opened)])

    def stop(self) -> None:
        """Stop answering and remove the socket (only the process that made it does)."""
        if os.getpid() == self.pid:  # a forked child's copy only closes: the parent serves
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # first: nobody new finds it
            os.write(self.wake[1], b"x")
            self.thread.join()  # at most HANDOVER: the caller being served is cut off
        self._close()
        _SERVERS.discard(self)

    def _close(self) -> None:
        self.sock.close()
        for fd in self.wake:
            if fd >= 0:
                os.close(fd)
        self.wake = (-1, -1)


_SERVERS: weakref.WeakSet[_Server] = weakref.WeakSet()


def _stop_servers() -> None:
    """At exit, remove the sockets of owners never closed: no name outlives the process."""
    for server in list(_SERVERS):
        with contextlib.suppress(OSError):
            server.stop()


class ShmSharing(FdSharing):
    """``SharedMemory`` for macOS: ``shm_open`` objects, socket hand-over, ``ByteLocks``."""

    name = "shm"
    gives_back = False

    def __init__(self, memory: PosixMemory) -> None:
        super().__init__(memory)
        self._objects: dict[int, _Object] = {}

    @settled
    def create(self, size: int, control: int) -> int:
        """A new object of ``size`` zero bytes, open read-write; it has no name left."""
        try:
            where = directory()
            with contextlib.suppress(FileExistsError):
                os.mkdir(where, 0o700)
            _private(where)
            self._sweep(where)
        except OSError as exc:
            named = str(exc.filename or "mmkit's directory of owners")
            raise os_error("mkdir", named, exc) from None
        name = f"/mmkit-{secrets.token_hex(8)}"  # 23 characters: macOS allows 31
        try:
            fd = _shm_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        except OSError as exc:
            raise os_error("shm_open", f"{name!r}, O_CREAT|O_EXCL|O_RDWR, 0o600", exc) from None
        readonly, opened = -1, -1
        try:
            try:
                readonly = _shm_open(name, os.O_RDONLY, 0)
                for each in (fd, readonly):
                    os.set_inheritable(each, False)
                os.ftruncate(fd, size)  # before the unlink: old macOS leaked otherwise
            finally:
                _shm_unlink(name)
            lock_fd, lock_path = tempfile.mkstemp(prefix="locks-", dir=where)
            os.unlink(lock_path)
            opened = LOCKS.open(lock_fd)
            server = _Server(where / f"{os.getpid()}-{fd}", readonly, opened)
        except BaseException as exc:
            if opened >= 0:
                LOCKS.close(opened)
            for each in (readonly, fd):
                if each >= 0:
                    os.close(each)
            if isinstance(exc, OSError):
                raise os_error("shm_open+ftruncate+listen", f"{name!r}, {size}", exc) from None
            raise
        with GUARD:
            self._objects[fd] = _Object(fd, readonly, opened, server)
        return fd

    @staticmethod
    def _sweep(where: Path) -> None:
        """Remove the sockets of owners that are gone (killed before they could). Ours are
        left alone: one of this pid's is either live or replaced when its name is bound."""
        for entry in os.scandir(where):
            pid_text, _, _ = entry.name.partition("-")
            if not pid_text.isdigit() or int(pid_text) == os.getpid():
                continue
            try:
                os.kill(int(pid_text), 0)
                continue  # alive
            except ProcessLookupError:
                pass
            except OSError:
                continue
            with contextlib.suppress(OSError):
                os.unlink(entry.path)

    @settled
    def reopen(self, pid: int, handle: int) -> int:
        """A read-only handle of our own for an owner's object, asked of the owner's socket
        (in the owner's own process, taken from the handle directly)."""
        if pid == os.getpid():
            mine = self._reopen_here(handle)
            if mine is not None:
                return mine
        where = directory()
        _private(where)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(PATIENCE)
            conn.connect(str(where / f"{pid}-{handle}"))
            fds: list[int] = []
            opened: int | None = None
            try:
                message, fds, _, _ = socket.recv_fds(conn, 64, 1, _RECEIVE_FLAGS)
                for fd in fds:
                    os.set_inheritable(fd, False)
                words = message.split()
                if len(fds) != 1 or len(words) != 3 or words[0] != HELLO:
                    raise NotShared(errno.EINVAL, f"{where / f'{pid}-{handle}'} is not an owner")
                readonly = fds[0]
                if fcntl.fcntl(readonly, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY:
                    raise NotShared(errno.EINVAL, "the owner sent a writable descriptor")
                key = (int(words[1]), int(words[2]))
                opened = LOCKS.join(key)
                if opened is None:
                    conn.sendall(b"need")
                    opened = LOCKS.open(self._lock_file(conn, key))
                else:
                    conn.sendall(b"have")
            except BaseException:
                if opened is not None:
                    LOCKS.close(opened)
                for fd in fds:
                    os.close(fd)
                raise
        return self._adopt(readonly, opened)

    def _reopen_here(self, handle: int) -> int | None:
        """Another handle of an object this process has, if it has it."""
        with GUARD:
            mine = self._objects.get(handle)
            if mine is None:
                return None
            readonly = os.dup(mine.readonly)
            try:
                opened = LOCKS.again(mine.opened)
            except BaseException:
                os.close(readonly)
                raise
            return self._adopt(readonly, opened)

    @staticmethod
    def _lock_file(conn: socket.socket, key: tuple[int, int]) -> int:
        """Receive the owner's lock file, the one it announced."""
        message, fds, _, _ = socket.recv_fds(conn, 16, 1, _RECEIVE_FLAGS)
        try:
            for fd in fds:
                os.set_inheritable(fd, False)
            info = os.fstat(fds[0]) if len(fds) == 1 else None
            if (
                message != b"lock"
                or info is None
                or (info.st_dev, info.st_ino) != key
                or not stat.S_ISREG(info.st_mode)
            ):
                raise NotShared(errno.EINVAL, "the owner sent no lock file, or another one")
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return fds[0]

    def _adopt(self, readonly: int, opened: int) -> int:
        with GUARD:
            self._objects[readonly] = _Object(readonly, readonly, opened)
        return readonly

    @settled
    def read(self, handle: int, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``offset``, through a short-lived read-only mapping
        (macOS cannot ``read`` a shared memory object)."""
        end = min(offset + size, os.fstat(handle).st_size)
        if end <= offset:
            return b""
        page = self.memory.page_size
        start = offset - offset % page
        length = -(-(end - start) // page) * page
        address = self.memory.map_file(None, length, handle, start, writable=False)
        try:
            return ctypes.string_at(address + offset - start, end - offset)
        finally:
            self.memory.unmap(address, length)

    def punch(self, handle: int, offset: int, size: int) -> None:
        """Nothing: macOS frees a shared memory object's pages only with the object."""

    def lock(self, handle: int, byte: int, *, exclusive: bool) -> bool:
        return LOCKS.lock(self._opened(handle), byte, exclusive=exclusive)

    def unlock(self, handle: int, byte: int) -> None:
        LOCKS.unlock(self._opened(handle), byte)

    def locked(self, handle: int, byte: int) -> bool:
        return LOCKS.locked(self._opened(handle), byte)

    def _opened(self, handle: int) -> int:
        with GUARD:
            mine = self._objects.get(handle)
        if mine is None:
            raise OSError(errno.EBADF, f"{handle} is not a handle of shared memory")
        return mine.opened

    @settled
    def close(self, handle: int) -> None:
        if inside():  # a collection's callback, in the middle of one of our calls
            later(lambda: self.close(handle))
            return
        with GUARD:
            mine = self._objects.pop(handle, None)
        if mine is None:
            raise OSError(errno.EBADF, f"{handle} is not a handle of shared memory")
        try:
            if mine.server is not None:
                mine.server.stop()
            LOCKS.close(mine.opened)
        finally:
            if mine.readonly != mine.fd:
                os.close(mine.readonly)
            os.close(mine.fd)


atexit.register(_stop_servers)
