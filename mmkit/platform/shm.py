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
import socket
import stat
import sys
import tempfile
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mmkit.platform.base import NotShared, os_error
from mmkit.platform.posix import PosixMemory

assert sys.platform != "win32"

import fcntl  # noqa: E402  (after the platform assertion, which mypy reads)

from mmkit.platform.bytelocks import LOCKS  # noqa: E402

_shm = importlib.import_module("_posixshmem")  # the stdlib's shm_open (shared_memory's)
_shm_open: Callable[[str, int, int], int] = _shm.shm_open
_shm_unlink: Callable[[str], None] = _shm.shm_unlink

HELLO = b"mmkit-shm-1"
PATIENCE = 5.0
"""Seconds either side of the socket waits for the other before it gives up."""


def directory() -> Path:
    """Where this user's owners listen: the same path in every process of the user."""
    return Path(f"/tmp/mmkit-{os.geteuid()}")


def _private(path: Path) -> None:
    """Refuse a directory that is not this user's own and closed to everyone else."""
    info = os.lstat(path)
    if (
        not stat.S_ISDIR(info.st_mode)
        or info.st_uid != os.geteuid()
        or stat.S_IMODE(info.st_mode) & 0o077
    ):
        raise NotShared(
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
    this user that connect; one thread, one connection at a time, each with a deadline."""

    def __init__(self, path: Path, readonly: int, opened: int) -> None:
        self.path, self.readonly, self.opened = path, readonly, opened
        self.pid = os.getpid()
        self.stopping = False
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                self.sock.bind(str(path))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                path.unlink()  # left by a killed process that had our pid
                self.sock.bind(str(path))
            self.sock.listen(16)
        except BaseException:
            self.sock.close()
            raise
        self.thread = threading.Thread(target=self._serve, name="mmkit-share", daemon=True)
        self.thread.start()
        _SERVERS.add(self)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                if self.stopping:
                    return
                with contextlib.suppress(OSError, KeyError):
                    self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(PATIENCE)
        if peer_user(conn) != os.geteuid():
            return
        device, inode = LOCKS.key(self.opened)
        socket.send_fds(conn, [b"%s %d %d" % (HELLO, device, inode)], [self.readonly])
        if conn.recv(4) == b"need":
            socket.send_fds(conn, [b"lock"], [LOCKS.fd(self.opened)])

    def stop(self) -> None:
        """Stop answering and remove the socket (only the process that made it does)."""
        if os.getpid() != self.pid:  # a forked child's copy: the parent still serves
            self.sock.close()
            return
        self.stopping = True
        with (
            contextlib.suppress(OSError),
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as wake,
        ):
            wake.settimeout(PATIENCE)
            wake.connect(str(self.path))  # accept returns, sees ``stopping`` and ends
        self.thread.join(2 * PATIENCE)  # a stalled caller is cut off after PATIENCE
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.sock.close()
        _SERVERS.discard(self)


_SERVERS: weakref.WeakSet[_Server] = weakref.WeakSet()


def _stop_servers() -> None:
    """At exit, remove the sockets of owners never closed: no name outlives the process."""
    for server in list(_SERVERS):
        with contextlib.suppress(OSError):
            server.stop()


class ShmSharing:
    """``SharedMemory`` for macOS: ``shm_open`` objects, socket hand-over, ``ByteLocks``."""

    name = "shm"
    gives_back = False

    def __init__(self, memory: PosixMemory) -> None:
        self.memory = memory
        self._objects: dict[int, _Object] = {}
        self._mutex = threading.Lock()

    def create(self, size: int) -> int:
        """A new object of ``size`` zero bytes, open read-write; it has no name left."""
        where = directory()
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(where, 0o700)
            _private(where)
            self._sweep(where)
        except OSError as exc:
            raise os_error("mkdir", str(where), exc) from None
        name = f"/mmkit-{secrets.token_hex(8)}"  # 23 characters: macOS allows 31
        try:
            fd = _shm_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        except OSError as exc:
            raise os_error("shm_open", f"{name!r}, O_CREAT|O_EXCL|O_RDWR, 0o600", exc) from None
        readonly, opened = -1, -1
        try:
            try:
                readonly = _shm_open(name, os.O_RDONLY, 0)
                os.ftruncate(fd, size)  # before the unlink: old macOS leaked otherwise
            finally:
                _shm_unlink(name)
            lock_fd, lock_path = tempfile.mkstemp(prefix="locks-", dir=where)
            os.unlink(lock_path)
            opened = LOCKS.open(lock_fd)
            server = _Server(where / f"{os.getpid()}-{fd}", readonly, opened)
        except OSError as exc:
            if opened >= 0:
                LOCKS.close(opened)
            for each in (readonly, fd):
                if each >= 0:
                    os.close(each)
            raise os_error("shm_open+ftruncate+listen", f"{name!r}, {size}", exc) from None
        with self._mutex:
            self._objects[fd] = _Object(fd, readonly, opened, server)
        return fd

    @staticmethod
    def _sweep(where: Path) -> None:
        """Remove the sockets of owners that are gone (killed before they could)."""
        mine = {server.path for server in _SERVERS}
        for entry in os.scandir(where):
            pid_text, _, _ = entry.name.partition("-")
            if not pid_text.isdigit() or Path(entry.path) in mine:
                continue
            pid = int(pid_text)
            if pid != os.getpid():
                try:
                    os.kill(pid, 0)
                    continue  # alive (or another user's, which cannot be in this directory)
                except ProcessLookupError:
                    pass
                except OSError:
                    continue
            with contextlib.suppress(OSError):
                os.unlink(entry.path)

    def reopen(self, pid: int, handle: int) -> int:
        """A read-only handle of our own for an owner's object, asked of the owner's socket
        (in the owner's own process, taken from the handle directly)."""
        if pid == os.getpid():
            with self._mutex:
                mine = self._objects.get(handle)
            if mine is not None:
                readonly = os.dup(mine.readonly)
                return self._adopt(readonly, LOCKS.again(mine.opened))
        where = directory()
        _private(where)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(PATIENCE)
            conn.connect(str(where / f"{pid}-{handle}"))
            message, fds, _, _ = socket.recv_fds(conn, 64, 1)
            readonly = fds[0] if fds else -1
            try:
                words = message.split()
                if len(fds) != 1 or len(words) != 3 or words[0] != HELLO:
                    raise NotShared(errno.EINVAL, f"{where / f'{pid}-{handle}'} is not an owner")
                os.set_inheritable(readonly, False)
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
                for fd in fds:
                    os.close(fd)
                raise
        return self._adopt(readonly, opened)

    @staticmethod
    def _lock_file(conn: socket.socket, key: tuple[int, int]) -> int:
        """Receive the owner's lock file, the one it announced."""
        message, fds, _, _ = socket.recv_fds(conn, 16, 1)
        for fd in fds:
            os.set_inheritable(fd, False)
        try:
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
        with self._mutex:
            self._objects[readonly] = _Object(readonly, readonly, opened)
        return readonly

    def size(self, handle: int) -> int:
        return os.fstat(handle).st_size

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

    def user(self) -> int:
        return os.geteuid()

    def map(
        self, address: int | None, size: int, handle: int, offset: int, *, writable: bool
    ) -> int:
        return self.memory.map_file(address, size, handle, offset, writable=writable)

    def unmap(self, address: int, size: int) -> None:
        self.memory.unmap(address, size)

    def blank(self, address: int, size: int) -> None:
        self.memory.blank(address, size)

    def punch(self, handle: int, offset: int, size: int) -> None:
        """Nothing: macOS frees a shared memory object's pages only with the object."""

    def lock(self, handle: int, byte: int, *, exclusive: bool) -> bool:
        return LOCKS.lock(self._opened(handle), byte, exclusive=exclusive)

    def unlock(self, handle: int, byte: int) -> None:
        LOCKS.unlock(self._opened(handle), byte)

    def locked(self, handle: int, byte: int) -> bool:
        return LOCKS.locked(self._opened(handle), byte)

    def _opened(self, handle: int) -> int:
        with self._mutex:
            return self._objects[handle].opened

    def close(self, handle: int) -> None:
        with self._mutex:
            mine = self._objects.pop(handle)
        try:
            if mine.server is not None:
                mine.server.stop()
            LOCKS.close(mine.opened)
        finally:
            if mine.readonly != mine.fd:
                os.close(mine.readonly)
            os.close(mine.fd)


atexit.register(_stop_servers)
