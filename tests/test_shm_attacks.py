"""Attacks on macOS's sharing backend (``mmkit.platform.shm``): its socket, its hand-over
thread and its directory. They run on macOS, and on Linux inside ``test_shm_sharing``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import mmkit
from mmkit import LayerId, MmapManager
from mmkit.platform import SHARING
from tests import markers
from tests.osprobe import open_handles
from tests.test_sharing import Child, shared_config, stamp

pytestmark = [markers.sharing, markers.shm_sharing]

if sys.platform != "win32":
    from mmkit.platform import bytelocks, shm
    from mmkit.platform.bytelocks import LOCKS


@pytest.fixture
def owner() -> Iterator[MmapManager]:
    with MmapManager(shared_config()) as mgr:
        mgr.load_dimension(1, b"".join(stamp(LayerId(1, i), 0) for i in range(4)))
        yield mgr


def socket_of(mgr: MmapManager) -> str:
    handle = mgr.share()
    return str(shm.directory() / f"{handle.pid}-{handle.handle}")


@pytest.mark.timeout(120)
def test_owners_made_at_once_by_many_threads_all_keep_their_sockets() -> None:
    made: list[MmapManager] = []
    lock = threading.Lock()

    def make() -> None:
        for _ in range(10):
            mgr = MmapManager(shared_config())
            with lock:
                made.append(mgr)

    threads = [threading.Thread(target=make) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sockets = [socket_of(mgr) for mgr in made]
    try:
        assert all(os.path.exists(path) for path in sockets)
    finally:
        for mgr in made:
            mgr.close()
    assert not any(os.path.exists(path) for path in sockets)


@pytest.mark.timeout(60)
def test_closing_an_owner_whose_socket_was_removed_stops_its_thread(
    owner: MmapManager,
) -> None:
    os.unlink(socket_of(owner))
    owner.close()
    assert not [t for t in threading.enumerate() if t.name == "mmkit-share"]


@pytest.mark.timeout(60)
def test_a_caller_that_stalls_holds_up_other_attaches_only_briefly(owner: MmapManager) -> None:
    stalled = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
    try:
        for conn in stalled:
            conn.connect(socket_of(owner))  # and never answers: each holds the owner 1 s
        with mmkit.attach(owner.share()) as reader:
            assert bytes(reader.access_layer(LayerId(1, 2))) == stamp(LayerId(1, 2), 0)
    finally:
        for conn in stalled:
            conn.close()


@pytest.mark.timeout(60)
def test_a_caller_that_sends_garbage_is_cut_off(owner: MmapManager) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(socket_of(owner))
        conn.recv(64)
        conn.sendall(b"\xff" * 4096)
    with mmkit.attach(owner.share()) as reader:
        assert reader.is_loaded(1)


@pytest.mark.timeout(60)
def test_an_owner_whose_thread_cannot_start_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before, names = open_handles(), set(os.listdir(shm.directory()))

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    with pytest.raises(RuntimeError):
        MmapManager(shared_config()).load_dimension(1)
    monkeypatch.undo()
    assert open_handles() == before
    assert set(os.listdir(shm.directory())) == names


OWNER_THAT_HANGS_UP = """
    import sys, socket, mmkit
    from mmkit import LayerId, MmapManager
    from mmkit.platform import bytelocks, shm
    from tests.test_sharing import shared_config
    first = True
    answer = shm._Server._answer
    def hang_up(self, conn, deadline):  # from the second caller on: gone after its hello
        global first
        if first:
            first = False
            return answer(self, conn, deadline)
        device, inode = shm.LOCKS.key(self.opened)
        socket.send_fds(conn, [b"%s %d %d" % (shm.HELLO, device, inode)], [self.readonly])
    shm._Server._answer = hang_up
    owner = MmapManager(shared_config())
    owner.load_dimension(1)
    print(owner.share(), flush=True)
    sys.stdin.read()
"""


@pytest.mark.timeout(60)
def test_an_owner_that_hangs_up_midway_leaves_the_reader_nothing_open() -> None:
    with Child(OWNER_THAT_HANGS_UP) as owner:
        token = owner.line()
        before, files = open_handles(), len(LOCKS._files)
        first = mmkit.attach(token)
        try:
            with mmkit.attach(token):  # the lock file is had already: "have", then nothing
                pass
        except mmkit.AttachError:
            pass
        first.close()
        assert open_handles() == before
        assert len(LOCKS._files) == files


class FakeOwner:
    """A socket where an owner's would be, answering as ``answer`` says: what a process of
    the same user could put there."""

    def __init__(self, answer: Callable[[socket.socket], None]) -> None:
        self.handle = 90000 + threading.get_ident() % 1000
        self.path = shm.directory() / f"{os.getpid()}-{self.handle}"
        os.makedirs(self.path.parent, mode=0o700, exist_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.path))
        self.sock.listen(1)
        self.answer = answer
        self.thread = threading.Thread(target=self._serve)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn, contextlib.suppress(OSError):
            self.answer(conn)

    def token(self) -> mmkit.ShareHandle:
        return mmkit.ShareHandle(os.geteuid(), os.getpid(), self.handle, "0" * 32)

    def close(self) -> None:
        self.thread.join(30)
        self.sock.close()
        self.path.unlink()


@contextlib.contextmanager
def fake_owner(answer: Callable[[socket.socket], None]) -> Iterator[FakeOwner]:
    fake = FakeOwner(answer)
    try:
        yield fake
    finally:
        fake.close()


def hello(conn: socket.socket, fd: int, key: tuple[int, int] = (1, 2)) -> None:
    socket.send_fds(conn, [b"%s %d %d" % (shm.HELLO, *key)], [fd])


def test_a_socket_that_answers_garbage_is_refused() -> None:
    before = open_handles()
    with (
        fake_owner(lambda conn: conn.sendall(b"hello there")) as fake,
        pytest.raises(mmkit.AttachError, match="not mmkit"),
    ):
        mmkit.attach(fake.token())
    assert open_handles() == before


def test_a_writable_descriptor_is_refused(tmp_path: Path) -> None:
    before = open_handles()
    writable = os.open(tmp_path / "data", os.O_RDWR | os.O_CREAT)
    try:
        with (
            fake_owner(lambda conn: hello(conn, writable)) as fake,
            pytest.raises(mmkit.AttachError, match="not mmkit"),
        ):
            mmkit.attach(fake.token())
    finally:
        os.close(writable)
    assert open_handles() == before


def test_a_lock_file_other_than_the_one_announced_is_refused(tmp_path: Path) -> None:
    before = open_handles()
    (tmp_path / "data").write_bytes(b"\0" * 4096)
    readonly = os.open(tmp_path / "data", os.O_RDONLY)
    other = os.open(tmp_path / "other", os.O_RDWR | os.O_CREAT)

    def answer(conn: socket.socket) -> None:
        hello(conn, readonly, (1, 2))  # a lock file nobody has
        if conn.recv(4) == b"need":
            socket.send_fds(conn, [b"lock"], [other])

    try:
        with fake_owner(answer) as fake, pytest.raises(mmkit.AttachError, match="not mmkit"):
            mmkit.attach(fake.token())
    finally:
        os.close(readonly)
        os.close(other)
    assert open_handles() == before
    assert not [file for file in LOCKS._files.values() if file.key == (1, 2)]


@pytest.mark.timeout(60)
def test_an_owner_that_never_answers_is_given_up_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shm, "PATIENCE", 0.3)
    done = threading.Event()
    with fake_owner(lambda conn: done.wait(30)) as fake:
        try:
            with pytest.raises(mmkit.AttachError, match="timed out"):
                mmkit.attach(fake.token())
        finally:
            done.set()


def test_a_directory_open_to_others_is_refused_by_owners_and_readers() -> None:
    directory = shm.directory()
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o755)
    try:
        with pytest.raises(mmkit.SystemCallFailed, match="closed to others"):
            MmapManager(shared_config()).load_dimension(1)
        token = mmkit.ShareHandle(os.geteuid(), os.getpid(), 99999, "0" * 32)
        with pytest.raises(mmkit.AttachError, match=r"not allowed.*closed to others"):
            mmkit.attach(token)
    finally:
        os.chmod(directory, 0o700)


def test_a_socket_left_by_a_killed_process_of_our_pid_is_replaced(tmp_path: Path) -> None:
    path = shm.directory() / f"{os.getpid()}-77777"
    os.makedirs(path.parent, mode=0o700, exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(path))  # and never listens: what a SIGKILL leaves
    (tmp_path / "data").write_bytes(b"")
    readonly = os.open(tmp_path / "data", os.O_RDONLY)
    opened = LOCKS.open(os.open(tmp_path / "locks", os.O_RDWR | os.O_CREAT))
    try:
        server = shm._Server(path, readonly, opened)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(10)
            conn.connect(str(path))
            message, fds, _, _ = socket.recv_fds(conn, 64, 1)
            for fd in fds:
                os.close(fd)
            assert message.startswith(shm.HELLO) and len(fds) == 1
        server.stop()
        assert not path.exists()
    finally:
        LOCKS.close(opened)
        os.close(readonly)


def test_handles_it_never_made_are_bad_open_handles() -> None:
    assert SHARING is not None
    for call in (
        lambda: SHARING.close(99999),
        lambda: SHARING.lock(99999, 0, exclusive=False),
        lambda: LOCKS.unlock(10**9, 0),
    ):
        with pytest.raises(OSError, match=r"Errno 9|not a handle|is closed"):
            call()


def test_a_collection_in_the_middle_of_a_call_closes_only_after_it(owner: MmapManager) -> None:
    assert SHARING is not None
    handle = SHARING.reopen(os.getpid(), owner.share().handle)
    with bytelocks.GUARD:  # as a collection's callback that gives memory back finds it
        SHARING.close(handle)
        os.fstat(handle)  # still open: the interrupted call may be using it
    bytelocks.settle()  # what the interrupted call does as it returns
    with pytest.raises(OSError):
        os.fstat(handle)
