"""Attacks on macOS's sharing backend (``mmkit.platform.shm``): its socket, its hand-over
thread and its directory. They run on macOS, and on Linux inside ``test_shm_sharing``.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Iterator

import pytest

import mmkit
from mmkit import LayerId, MmapManager
from mmkit.platform import SHARING
from tests import markers
from tests.test_sharing import Child, shared_config, stamp

pytestmark = [
    markers.sharing,
    pytest.mark.skipif(
        SHARING is None or SHARING.name != "shm", reason="about macOS's sharing backend"
    ),
]

if sys.platform != "win32":
    from mmkit.platform import shm
    from mmkit.platform.bytelocks import LOCKS


def descriptors() -> int:
    return len(os.listdir("/proc/self/fd" if sys.platform.startswith("linux") else "/dev/fd"))


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
    stalled = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2)]
    try:
        for conn in stalled:
            conn.connect(socket_of(owner))  # and never answers the owner
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
    before, names = descriptors(), set(os.listdir(shm.directory()))

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    with pytest.raises(RuntimeError):
        MmapManager(shared_config()).load_dimension(1)
    monkeypatch.undo()
    assert descriptors() == before
    assert set(os.listdir(shm.directory())) == names


OWNER_THAT_HANGS_UP = """
    import sys, socket, mmkit
    from mmkit import LayerId, MmapManager
    from mmkit.platform import shm
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
        before, files = descriptors(), len(LOCKS._files)
        first = mmkit.attach(token)
        try:
            with mmkit.attach(token):  # the lock file is had already: "have", then nothing
                pass
        except mmkit.AttachError:
            pass
        first.close()
        assert descriptors() == before
        assert len(LOCKS._files) == files
