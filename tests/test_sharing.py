"""Sharing across processes: one owner, readers in any process, read-copy-update between them.

Each scenario that involves another process runs it for real (a subprocess, multiprocessing
with spawn, fork and forkserver, a forked child) with a timeout, and asserts on its exit code
and on what it read. Leaks are checked against the whole system: ``/proc/*/maps`` and
``/proc/*/fd`` of every process.
"""

from __future__ import annotations

import ast
import contextlib
import gc
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

import mmkit
from mmkit import (
    AttachError,
    DimensionId,
    InvalidState,
    LayerId,
    LimitExceeded,
    MemoryConfig,
    MmapManager,
    MmkitError,
    NotCopyable,
    NotLoaded,
    ShareHandle,
)
from mmkit.platform import BACKEND, PAGE_SIZE, SHARING
from tests import markers
from tests.conftest import ROOT, run_python, small_config
from tests.faults import FaultyMemory, FaultySharing
from tests.osprobe import crashed, describe

pytestmark = markers.sharing
MEMFD = SHARING is not None and SHARING.name == "memfd"
"""Linux's backend; the other is macOS's (``shm``), which Linux runs with MMKIT_SHARING=shm."""
ARENA = "memfd:mmkit-arena" if MEMFD else "/dev/shm/mmkit-"
"""How /proc shows the arena (an unlinked POSIX shared memory object is a /dev/shm file)."""


def stamp(layer: LayerId, version: int) -> bytes:
    """A layer's bytes for one version: its id and version in every 8 bytes."""
    return bytes([layer.dimension, layer.index, version % 256, 0xA5] * 2) * (PAGE_SIZE // 8)


def shared_config(**overrides: object) -> MemoryConfig:
    fields: dict[str, object] = {"shared": True, "spare_layers": 4}
    fields.update(overrides)
    return small_config(**fields)


@pytest.fixture
def owner() -> Iterator[MmapManager]:
    with MmapManager(shared_config()) as mgr:
        for spec in mgr.config.dimensions:
            count = spec.size // PAGE_SIZE
            data = b"".join(stamp(LayerId(spec.id, i), 0) for i in range(count))
            mgr.load_dimension(spec.id, data)
        yield mgr


def every_layer(config: MemoryConfig) -> list[LayerId]:
    return [
        LayerId(spec.id, index)
        for spec in config.dimensions
        for index in range(spec.size // config.layer_size)
    ]


def arena_users(inode: int | None = None) -> list[str]:
    """Every process that maps or holds an mmkit arena (the one with ``inode``, or any), as
    ``pid:where``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for line in (entry / "maps").read_text().splitlines():
                fields = line.split()
                if ARENA in line and (inode is None or fields[4] == str(inode)):
                    found.append(f"{entry.name}:maps")
                    break
            for fd in (entry / "fd").iterdir():
                if ARENA in os.readlink(fd) and (inode is None or fd.stat().st_ino == inode):
                    found.append(f"{entry.name}:fd")
                    break
        except OSError:
            continue  # exited meanwhile, or not ours to read
    return found


def shmem_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Shmem:"):
            return int(line.split()[1])
    raise AssertionError("no Shmem line in /proc/meminfo")


# -- handles and tokens ------------------------------------------------------------------------


def test_a_handle_is_a_short_token_that_pickles_and_parses_back(owner: MmapManager) -> None:
    handle = owner.share()
    token = str(handle)
    assert len(token) < 4096
    assert token == token.strip() and " " not in token
    assert ShareHandle.parse(token) == handle
    assert pickle.loads(pickle.dumps(handle)) == handle
    assert owner.share() == handle  # reusable: the same memory, any number of times


def test_shared_is_refused_where_the_os_cannot_share(monkeypatch: pytest.MonkeyPatch) -> None:
    from mmkit.values import config

    monkeypatch.setattr(config, "SHARING", None)
    with pytest.raises(mmkit.ConfigError, match="cannot share memory between processes"):
        MemoryConfig(shared=True)
    MemoryConfig()  # a private manager is fine


def test_a_resident_limit_is_refused_where_shared_memory_cannot_be_given_back() -> None:
    assert SHARING is not None
    keeper = FaultySharing(SHARING, FaultyMemory(BACKEND))
    keeper.gives_back = False  # as macOS's shm_open objects
    with pytest.raises(mmkit.ConfigError, match="cannot give part of itself back"):
        MmapManager(shared_config(resident_limit=8 * PAGE_SIZE), sharing=keeper)
    MmapManager(shared_config(), sharing=keeper).close()  # without a resident limit, fine


def test_a_reader_knows_the_owners_dimensions(owner: MmapManager) -> None:
    with mmkit.attach(owner.share()) as reader:
        assert reader.config.dimensions == owner.config.dimensions
        assert reader.config.layer_size == owner.config.layer_size
        assert reader.config.layer_count(1) == 4


def test_share_needs_a_shared_manager() -> None:
    with MmapManager(small_config()) as mgr, pytest.raises(InvalidState, match="shared=True"):
        mgr.share()


def test_share_after_close_is_refused() -> None:
    mgr = MmapManager(shared_config())
    mgr.close()
    with pytest.raises(InvalidState, match="closed"):
        mgr.share()


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        ("", "not a share token"),
        ("garbage", "not a share token"),
        ("mmkit-share-1:0:1:2", "not a share token"),
        ("mmkit-share-9:0:1:2:" + "0" * 32, "share format 9"),
        ("mmkit-share-1:0:0:3:" + "0" * 32, "process id 0"),
        ("mmkit-share-1:0:1:3:" + "g" * 32, "not a share token"),
        ("mmkit-share-1:0:1:" + "9" * 30 + ":" + "0" * 32, "not a share token"),
        ("x" * 100_000, "too long"),
        (b"mmkit-share-1", "not bytes"),
        (None, "not NoneType"),
    ],
)
def test_a_malformed_token_is_an_attach_error_at_once(token: object, problem: str) -> None:
    with pytest.raises(AttachError, match=problem.replace("not bytes", "bytes")):
        mmkit.attach(token)


def test_a_sharing_backend_that_is_not_one_is_refused(owner: MmapManager) -> None:
    with pytest.raises(mmkit.ConfigError, match="sharing must be a SharedMemory"):
        MmapManager(shared_config(), sharing=object())  # type: ignore[arg-type]
    with pytest.raises(AttachError, match="sharing must be a SharedMemory"):
        mmkit.attach(owner.share(), sharing=object())  # type: ignore[arg-type]


def test_a_token_of_an_exited_process_is_refused() -> None:
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert SHARING is not None
    token = f"mmkit-share-1:{SHARING.user()}:{child.stdout.strip()}:3:{'0' * 32}"
    with pytest.raises(AttachError, match=r"does not exist|not mmkit"):
        mmkit.attach(token)


@pytest.mark.parametrize("which", ["stdin", "a file", "another arena"])
def test_a_token_whose_number_names_something_else_is_refused(
    which: str, tmp_path: Path, owner: MmapManager
) -> None:
    if which == "another arena":
        with MmapManager(shared_config()) as other:
            refused_as_something_else(owner, other.share().handle)
        return
    fd = os.dup(0) if which == "stdin" else os.open(tmp_path / "file", os.O_RDWR | os.O_CREAT)
    try:
        refused_as_something_else(owner, fd)
    finally:
        os.close(fd)


@markers.needs_fifo
def test_a_token_whose_number_names_a_fifo_is_refused(tmp_path: Path, owner: MmapManager) -> None:
    os.mkfifo(tmp_path / "fifo")
    fd = os.open(tmp_path / "fifo", os.O_RDWR | os.O_NONBLOCK)
    try:
        refused_as_something_else(owner, fd)
    finally:
        os.close(fd)


def refused_as_something_else(owner: MmapManager, number: int) -> None:
    """A token of the owner's whose number names something else. memfd: the number is
    opened and refused; shm: no owner listens for that number; Windows: the number is no
    three handles of sections and a lock file."""
    handle = owner.share()
    forged = ShareHandle(handle.uid, handle.pid, number, handle.nonce)
    with pytest.raises(AttachError, match=r"not mmkit|another manager|does not exist"):
        mmkit.attach(forged)


def test_a_token_with_the_wrong_nonce_is_refused(owner: MmapManager) -> None:
    handle = owner.share()
    forged = ShareHandle(handle.uid, handle.pid, handle.handle, "f" * 32)
    with pytest.raises(AttachError, match="another manager"):
        mmkit.attach(forged)


def test_another_users_token_is_refused_before_anything_is_opened(owner: MmapManager) -> None:
    handle = owner.share()
    forged = ShareHandle(handle.uid + 1, handle.pid, handle.handle, handle.nonce)
    with pytest.raises(AttachError, match="only the same user"):
        mmkit.attach(forged)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_another_user_cannot_attach(owner: MmapManager) -> None:
    code = f"""
        import os, mmkit
        os.setgid(65534); os.setuid(65534)
        handle = mmkit.ShareHandle.parse({str(owner.share())!r})
        try:
            mmkit.attach(mmkit.ShareHandle(65534, handle.pid, handle.handle, handle.nonce))
        except mmkit.AttachError as exc:
            print("refused:", exc)
        else:
            raise SystemExit("attached as another user")
    """
    result = run_python(code, timeout=60, measured=False)
    assert result.returncode == 0, result.stderr
    # memfd: /proc refuses the other user; shm: the token's owner is not in this user's
    # directory of owners, which no other user can enter
    assert ("refused: not allowed to open" if MEMFD else "does not exist") in result.stdout


# -- reading ------------------------------------------------------------------------------------


def test_a_reader_sees_the_owners_layers_zero_copy_and_read_only(owner: MmapManager) -> None:
    with mmkit.attach(owner.share()) as reader:
        assert [r.id for r in reader.regions()] == [r.id for r in owner.regions()]
        assert [(r.name, r.size) for r in reader.regions()] == [
            (r.name, r.size) for r in owner.regions()
        ]
        for layer in every_layer(owner.config):
            view = reader.access_layer(layer)
            assert view.readonly and view.format == "B"
            assert bytes(view) == stamp(layer, 0)
            view.release()
        assert reader.is_loaded(DimensionId(2))
        stats = reader.stats()
        assert stats.owner_alive and not stats.owner_closed
        assert stats.loaded == tuple(spec.id for spec in owner.config.dimensions)


def test_an_update_is_seen_by_the_next_access_and_old_views_keep_their_bytes(
    owner: MmapManager,
) -> None:
    layer = LayerId(1, 2)
    with mmkit.attach(owner.share()) as reader:
        before = reader.access_layer(layer)
        for version in range(1, 12):  # more than the spare layers: they are reused
            owner.update_layer(layer, stamp(layer, version))
            now = reader.access_layer(layer)
            assert bytes(now) == stamp(layer, version)
            now.release()
        assert bytes(before) == stamp(layer, 0)


def test_a_reader_sees_dimensions_loaded_after_it_attached() -> None:
    with MmapManager(shared_config()) as mgr, mmkit.attach(mgr.share()) as reader:
        assert not reader.is_loaded(DimensionId(2))
        with pytest.raises(NotLoaded, match="not loaded in the owner"):
            reader.access_layer(LayerId(2, 0))
        mgr.load_dimension(DimensionId(2), stamp(LayerId(2, 0), 0) * 2)
        assert bytes(reader.access_layer(LayerId(2, 1))) == stamp(LayerId(2, 0), 0)


def test_bad_layers_get_the_managers_errors(owner: MmapManager) -> None:
    with mmkit.attach(owner.share()) as reader:
        with pytest.raises(mmkit.LayerOutOfRange):
            reader.access_layer(LayerId(2, 5))
        with pytest.raises(mmkit.UnknownDimension):
            reader.access_layer(LayerId(9, 0))
        with pytest.raises(mmkit.InvalidId):
            reader.access_layer((1, 0))  # type: ignore[arg-type]


def test_a_reader_cannot_be_copied_or_pickled(owner: MmapManager) -> None:
    import copy

    with mmkit.attach(owner.share()) as reader:
        with pytest.raises(NotCopyable):
            copy.copy(reader)
        with pytest.raises(NotCopyable):
            pickle.dumps(reader)


def test_a_closed_reader_refuses_and_its_views_keep_their_bytes(owner: MmapManager) -> None:
    reader = mmkit.attach(owner.share())
    view = reader.access_layer(LayerId(3, 1))
    reader.close()
    reader.close()
    with pytest.raises(InvalidState, match="closed"):
        reader.access_layer(LayerId(3, 1))
    with pytest.raises(InvalidState, match="closed"):
        reader.stats()
    owner.update_layer(LayerId(3, 1), stamp(LayerId(3, 1), 7))
    assert bytes(view) == stamp(LayerId(3, 1), 0)
    del view
    gc.collect()


# -- pins: what readers reach is never reused ------------------------------------------------


def test_views_of_replaced_layers_hold_spare_layers_until_released(owner: MmapManager) -> None:
    layer = LayerId(1, 0)
    with mmkit.attach(owner.share()) as reader:
        held = []
        with pytest.raises(LimitExceeded, match="spare layers") as raised:
            for version in range(1, 10):
                owner.update_layer(layer, stamp(layer, version))
                held.append(reader.access_layer(layer))
        assert isinstance(raised.value, MemoryError)
        assert [bytes(v) for v in held] == [stamp(layer, n + 1) for n in range(len(held))]
        for view in held:
            view.release()
        reader.access_layer(LayerId(2, 0)).release()  # the reader lets go at its next call
        owner.update_layer(layer, stamp(layer, 50))
        assert bytes(reader.access_layer(layer)) == stamp(layer, 50)


def test_eviction_leaves_what_a_reader_holds(tmp_path: Path) -> None:
    config = shared_config(data_dir=tmp_path)
    mmkit.generate_dataset(tmp_path, config)
    with MmapManager(config) as mgr, mmkit.attach(mgr.share()) as reader:
        mgr.load_dimension(DimensionId(1))
        view = reader.access_layer(LayerId(1, 0))
        expected = bytes(view)
        assert not mgr.evict(DimensionId(1))
        assert mgr.stats().loaded == (DimensionId(1),)
        view.release()
        reader.access_layer(LayerId(1, 0)).release()  # pinned again, and let go of
        reader.stats()  # a call after the owner published: the idle pin goes
        assert mgr.evict(DimensionId(1))
        with pytest.raises(NotLoaded, match="evicted"):
            reader.access_layer(LayerId(1, 0))
        assert bytes(mgr.access_layer(LayerId(1, 0))) == expected  # the owner loads it again
        assert bytes(reader.access_layer(LayerId(1, 0))) == expected


# -- across processes --------------------------------------------------------------------------


def _verify_in_child(token: str, layers: list[LayerId], version: int) -> int:
    reader = mmkit.attach(token)
    for layer in layers:
        if bytes(reader.access_layer(layer)) != stamp(layer, version):
            return 1
    reader.close()
    return 0


def test_spawned_multiprocessing_children_attach_with_the_pickled_handle(
    owner: MmapManager,
) -> None:
    children_attach_with_the_pickled_handle("spawn", owner)


@markers.needs_fork
@pytest.mark.parametrize("method", ["forkserver", "fork"])
def test_forked_multiprocessing_children_attach_with_the_pickled_handle(
    method: str, owner: MmapManager
) -> None:
    children_attach_with_the_pickled_handle(method, owner)


def children_attach_with_the_pickled_handle(method: str, owner: MmapManager) -> None:
    context = multiprocessing.get_context(method)
    layers = every_layer(owner.config)
    with context.Pool(2) as pool:
        results = pool.starmap_async(
            _verify_in_child, [(owner.share(), layers, 0), (str(owner.share()), layers, 0)]
        ).get(timeout=60)
    assert results == [0, 0]


def test_an_unrelated_process_attaches_with_the_token(owner: MmapManager) -> None:
    layer = LayerId(3, 2)
    owner.update_layer(layer, stamp(layer, 9))
    code = f"""
        import mmkit, zlib
        from mmkit import LayerId
        reader = mmkit.attach({str(owner.share())!r})
        print(zlib.crc32(reader.access_layer(LayerId(3, 2))))
    """
    result = run_python(code, timeout=60)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == zlib.crc32(stamp(layer, 9))


READER_THAT_HOLDS = """
    import sys, mmkit
    from mmkit import LayerId
    reader = mmkit.attach(sys.argv[1])
    views = [reader.access_layer(LayerId(1, 0))]
    print("holding", flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "take":
            views.append(reader.access_layer(LayerId(1, 0)))
        elif command == "check":
            print(",".join(str(v[2]) for v in views), flush=True)
        elif command == "release":
            views.clear()
            reader.stats()
        elif command == "write":
            import ctypes
            address = mmkit.address_of(views[0])
            ctypes.c_char.from_address(address).value = b"X"
        print("ok", flush=True)
"""


C = TypeVar("C", bound="Child")


class Child:
    """A script in another interpreter, talked to a line at a time over its stdin and stdout;
    killed if it still runs when the ``with`` block ends."""

    def __init__(
        self,
        script: str,
        *args: str,
        stderr: int = subprocess.PIPE,
        env: dict[str, str] | None = None,
        start_new_session: bool = False,
    ) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=ROOT,
            env=env,
            start_new_session=start_new_session,
        )

    def line(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def say(self, text: str = "") -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def wait(self, timeout: float = 30) -> int:
        """Its exit code, with its stdin closed first (end of input)."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        return self.process.wait(timeout=timeout)

    def errors(self) -> str:
        return self.process.stderr.read() if self.process.stderr is not None else ""

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)

    def __enter__(self: C) -> C:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:
            self.kill()
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


class Reader(Child):
    """``READER_THAT_HOLDS``, attached to ``token`` and holding a view of D01/L00."""

    def __init__(self, token: str) -> None:
        super().__init__(READER_THAT_HOLDS, token)
        assert self.line() == "holding"

    def send(self, command: str) -> str:
        self.say(command)
        answer = self.line()
        if command == "check":
            assert self.line() == "ok"
        return answer


@pytest.mark.timeout(60)
def test_a_reader_process_holds_replaced_layers_until_it_dies(owner: MmapManager) -> None:
    layer = LayerId(1, 0)
    with Reader(str(owner.share())) as reader:
        for version in range(1, 5):  # the reader takes a view of each version
            owner.update_layer(layer, stamp(layer, version))
            assert reader.send("take") == "ok"
        assert reader.send("check") == "0,1,2,3,4"  # byte 2 of a stamp is its version
        with pytest.raises(LimitExceeded, match="readers attached"):
            owner.update_layer(layer, stamp(layer, 5))
        assert reader.send("check") == "0,1,2,3,4"
        stats = owner.stats()
        assert (stats.spare_layers, stats.spare_layers_free) == (4, 0)
        assert stats.reader_pins == 5 * PAGE_SIZE  # its home and the four spare layers
        reader.kill()  # its pins go with it
        assert owner.stats().reader_pins == 0
        owner.update_layer(layer, stamp(layer, 5))
        for version in range(6, 12):
            owner.update_layer(layer, stamp(layer, version))


@markers.posix_backend
@pytest.mark.timeout(60)
def test_the_kernel_refuses_a_reader_that_writes(owner: MmapManager) -> None:
    code = f"""
        import ctypes, errno, mmap, os, mmkit
        reader = mmkit.attach({str(owner.share())!r})
        fd = reader._memory.handle
        try:
            mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except PermissionError:
            print("writable map refused", flush=True)
        try:
            os.pwrite(fd, b"X", 0)
        except OSError as exc:
            print("pwrite refused", errno.errorcode[exc.errno], flush=True)
        libc = ctypes.CDLL(None, use_errno=True)
        view = reader.access_layer(mmkit.LayerId(1, 0))
        address = mmkit.address_of(view)
        libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        if libc.mprotect(address, 4096, 3) != 0:
            print("mprotect refused", errno.errorcode[ctypes.get_errno()], flush=True)
        ctypes.c_char.from_address(address).value = b"X"
    """
    result = run_python(code, timeout=60, measured=False)
    assert result.stdout.splitlines() == [
        "writable map refused",
        "pwrite refused EBADF",
        "mprotect refused EACCES",
    ]
    assert crashed(result.returncode), describe(result.returncode)
    view = owner.access_layer(LayerId(1, 0))
    assert bytes(view) == stamp(LayerId(1, 0), 0)


@markers.windows_sharing
@pytest.mark.timeout(60)
def test_windows_refuses_a_reader_that_writes(owner: MmapManager) -> None:
    code = f"""
        import ctypes, mmkit
        from ctypes import c_size_t, c_uint32, c_void_p
        from mmkit.platform import sections
        reader = mmkit.attach({str(owner.share())!r})
        section = sections.unpack(reader._memory.handle)[0]
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        kernel32.MapViewOfFile.argtypes = [c_void_p, c_uint32, c_uint32, c_uint32, c_size_t]
        kernel32.MapViewOfFile.restype = c_void_p
        if not kernel32.MapViewOfFile(section, sections.FILE_MAP_WRITE, 0, 0, 4096):
            print("writable view refused", flush=True)
        view = reader.access_layer(mmkit.LayerId(1, 0))
        address = mmkit.address_of(view)
        protect = kernel32.VirtualProtect
        protect.argtypes = [c_void_p, c_size_t, c_uint32, ctypes.POINTER(c_uint32)]
        old = c_uint32()
        if not protect(address, 4096, 0x04, ctypes.byref(old)):
            print("VirtualProtect refused", flush=True)
        ctypes.c_char.from_address(address).value = b"X"
    """
    result = run_python(code, timeout=60, measured=False)
    assert result.stdout.splitlines() == ["writable view refused", "VirtualProtect refused"]
    assert crashed(result.returncode), describe(result.returncode)
    assert bytes(owner.access_layer(LayerId(1, 0))) == stamp(LayerId(1, 0), 0)


def read_after_the_owner_is_killed() -> None:
    code = """
        import sys, mmkit
        from mmkit import LayerId, MemoryConfig, MmapManager
        from tests.conftest import small_config
        from tests.test_sharing import stamp
        mgr = MmapManager(small_config(shared=True, spare_layers=4))
        mgr.load_dimension(1, b"".join(stamp(LayerId(1, i), 0) for i in range(4)))
        mgr.update_layer(LayerId(1, 3), stamp(LayerId(1, 3), 8))
        print(mgr.share(), flush=True)
        sys.stdin.read()
    """
    with Child(code) as owner:
        token = owner.line()
        reader = mmkit.attach(token)
        held = reader.access_layer(LayerId(1, 0))
        owner.kill()
        assert not reader.stats().owner_alive
        assert bytes(held) == stamp(LayerId(1, 0), 0)
        assert bytes(reader.access_layer(LayerId(1, 3))) == stamp(LayerId(1, 3), 8)
        assert bytes(reader.access_layer(LayerId(1, 1))) == stamp(LayerId(1, 1), 0)
        with pytest.raises(AttachError, match="does not exist"):
            mmkit.attach(token)
        held.release()
        reader.close()


@pytest.mark.timeout(60)
def test_a_reader_keeps_reading_after_its_owner_is_killed() -> None:
    read_after_the_owner_is_killed()


@markers.procfs
@pytest.mark.timeout(60)
def test_a_reader_of_a_killed_owner_leaves_nothing_once_closed() -> None:
    read_after_the_owner_is_killed()
    assert not [user for user in arena_users() if user.startswith(f"{os.getpid()}:")]


def test_after_the_owner_closes_readers_keep_what_was_published() -> None:
    mgr = MmapManager(shared_config())
    mgr.load_dimension(DimensionId(2), stamp(LayerId(2, 0), 0) + stamp(LayerId(2, 1), 0))
    mgr.update_layer(LayerId(2, 0), stamp(LayerId(2, 0), 1))
    handle = mgr.share()
    with mmkit.attach(handle) as reader:
        mgr.close()
        stats = reader.stats()
        assert stats.owner_closed and not stats.owner_alive
        assert bytes(reader.access_layer(LayerId(2, 1))) == stamp(LayerId(2, 1), 0)
        assert bytes(reader.access_layer(LayerId(2, 0))) == stamp(LayerId(2, 0), 1)
        with pytest.raises(NotLoaded, match="closed its manager"):
            reader.access_layer(LayerId(1, 0))
        with pytest.raises(AttachError):
            mmkit.attach(handle)


# -- fork ---------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@markers.needs_fork
def test_a_forked_child_of_the_owner_cannot_change_what_others_see(owner: MmapManager) -> None:
    layer = LayerId(1, 1)
    view = owner.access_layer(layer)
    reader = mmkit.attach(owner.share())
    read, write = os.pipe()
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: every write refused, and its view keeps its bytes
        code = 0
        try:
            os.close(read)
            os.close(go_write)  # so that a parent that dies ends the wait
            for attempt in (
                lambda: owner.update_layer(layer, stamp(layer, 99)),
                lambda: owner.load_dimension(DimensionId(1), b"\0" * 4 * PAGE_SIZE),
                lambda: owner.share(),
            ):
                try:
                    attempt()
                    code |= 1
                except MmkitError:
                    pass
            code |= 0 if owner.evict(DimensionId(2)) is False else 2
            os.write(write, b"r")
            os.read(go_read, 1)  # the parent updates the layer many times meanwhile
            code |= 0 if bytes(view) == stamp(layer, 0) else 4
            owner.close()
        finally:
            os._exit(code)
    os.close(write)
    assert os.read(read, 1) == b"r"
    for version in range(1, 4):  # the child's view is pinned: spare layers still turn over
        owner.update_layer(layer, stamp(layer, version))
    os.write(go_write, b"g")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert bytes(reader.access_layer(layer)) == stamp(layer, 3)
    assert bytes(owner.access_layer(layer)) == stamp(layer, 3)
    view.release()
    reader.close()


# -- nothing outlives its processes ---------------------------------------------------------


@markers.procfs
@pytest.mark.timeout(120)
@pytest.mark.parametrize("victim", ["owner during load", "owner after publish", "everyone"])
def test_nothing_is_left_after_processes_are_killed(victim: str) -> None:
    baseline = shmem_kib()
    names = set(os.listdir("/dev/shm"))
    owner_code = """
        import sys, time, mmkit
        from mmkit import LayerId, MemoryConfig, MmapManager
        mgr = MmapManager(MemoryConfig(shared=True))
        mgr.load_dimension(1, b"\\x01" * (16 << 20))
        print(mgr.share(), flush=True)
        if sys.argv[1] == "owner during load":
            while True:
                for d in range(2, 15):
                    if not mgr.is_loaded(d):
                        mgr.load_dimension(d)
                for d in range(2, 15):
                    mgr.evict(d)
        for i in range(100000):
            mgr.update_layer(LayerId(1, i % 16), bytes([i % 256]) * (1 << 20))
            if i == 20:
                print("updating", flush=True)
    """
    with contextlib.ExitStack() as processes:
        owner = processes.enter_context(Child(owner_code, victim, start_new_session=True))
        token = owner.line()
        handle = ShareHandle.parse(token)
        inode = os.stat(f"/proc/{handle.pid}/fd/{handle.handle}").st_ino
        readers = [processes.enter_context(Reader(token)) for _ in range(2)]
        assert len(arena_users(inode)) == 6  # the owner and the readers, each maps and holds
        if victim != "owner during load":
            assert owner.line() == "updating"
        else:
            time.sleep(0.3)
        owner.kill()  # SIGKILL
        for reader in readers:
            if victim == "everyone":
                reader.kill()
            else:
                reader.wait()
    deadline = time.monotonic() + 10
    while arena_users(inode) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert arena_users(inode) == []
    assert not {name for name in os.listdir("/dev/shm") if "mmkit" in name} - names
    while shmem_kib() - baseline >= 1024 and time.monotonic() < deadline:
        time.sleep(0.05)  # the kernel frees the arena's pages with its last user
    assert shmem_kib() - baseline < 1024
    if not MEMFD:  # a killed owner's socket is its one trace: the next owner removes it
        from mmkit.platform.shm import directory

        stale = directory() / f"{handle.pid}-{handle.handle}"
        assert stale.is_socket()
        with MmapManager(shared_config()) as mgr:
            mgr.share()
        assert not stale.exists()


@markers.memfd_sharing
@pytest.mark.timeout(120)
def test_a_small_dev_shm_does_not_matter(tmp_path: Path) -> None:
    if os.geteuid() != 0 or not Path("/usr/bin/unshare").exists():
        pytest.skip("needs root and unshare(1) for a private mount namespace")
    script = tmp_path / "small.py"
    script.write_text(
        "import mmkit\n"
        "from mmkit import MemoryConfig, MmapManager, LayerId\n"
        "with MmapManager(MemoryConfig(shared=True)) as mgr:\n"
        "    for d in range(1, 15):\n"
        "        mgr.load_dimension(d, bytes([d]) * mgr.config.dimension(d).size)\n"
        "    with mmkit.attach(mgr.share()) as reader:\n"
        "        assert bytes(reader.access_layer(LayerId(1, 15))[:2]) == b'\\x01\\x01'\n"
        "print('ok')\n"
    )
    command = (
        "mount -t tmpfs -o size=1m tmpfs /dev/shm && "
        f"df -k /dev/shm | tail -1 && {sys.executable} {script}"
    )
    result = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", command],
        check=False,
        capture_output=True,
        text=True,
        timeout=100,
        cwd=ROOT,
    )
    if result.returncode != 0 and "unshare failed" in result.stderr:
        pytest.skip(f"no private mount namespace here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "ok"
    assert " 1024 " in result.stdout.splitlines()[0]  # the 1 MiB /dev/shm was in force


# -- read-copy-update under load ----------------------------------------------------------------

VERIFYING_READER = """
    import sys, time, mmkit
    from mmkit import LayerId
    reader = mmkit.attach(sys.argv[1])
    layers = [LayerId(1, i) for i in range(4)]
    last = {layer: -1 for layer in layers}
    reads = 0
    print("ready", flush=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for layer in layers:
            view = reader.access_layer(layer)
            data = bytes(view)
            view.release()
            head = data[:8]
            if data != head * (len(data) // 8) or head[0] != 1 or head[1] != layer.index:
                raise SystemExit(f"torn or foreign bytes in {layer}: {head!r}")
            version = head[2]
            if version < last[layer] and last[layer] - version < 128:
                raise SystemExit(f"{layer} went back from {last[layer]} to {version}")
            last[layer] = version
            reads += 1
        if all(v == 200 % 256 for v in last.values()):
            break
    print("reads", reads, flush=True)
"""


@pytest.mark.timeout(120)
def test_readers_in_other_processes_see_whole_layers_in_order(owner: MmapManager) -> None:
    token = str(owner.share())
    with contextlib.ExitStack() as processes:
        readers = [processes.enter_context(Child(VERIFYING_READER, token)) for _ in range(2)]
        for reader in readers:
            assert reader.line() == "ready"
        updates = [(LayerId(1, version % 4), version) for version in range(1, 201)]
        updates += [(LayerId(1, index), 200) for index in range(4)]  # all end at the last
        for layer, version in updates:
            while True:
                try:
                    owner.update_layer(layer, stamp(layer, version))
                    break
                except LimitExceeded:  # readers slower than the owner hold the spare layers
                    time.sleep(0.001)
        for reader in readers:
            assert reader.wait(timeout=60) == 0, reader.errors()
            assert reader.line().startswith("reads")


@pytest.mark.timeout(120)
def test_reader_threads_racing_updates_and_close_never_crash() -> None:
    code = """
        import random, threading, mmkit
        from mmkit import InvalidState, LayerId, MmapManager, NotLoaded
        from tests.test_sharing import shared_config, stamp
        owner = MmapManager(shared_config())
        owner.load_dimension(1, b"".join(stamp(LayerId(1, i), 0) for i in range(4)))
        reader = mmkit.attach(owner.share())
        stop = threading.Event()
        problems = []

        def read():
            held = []
            while not stop.is_set():
                layer = LayerId(1, random.randrange(4))
                try:
                    view = reader.access_layer(layer)
                except InvalidState:
                    continue  # closed under us
                data = bytes(view)
                if data != data[:8] * (len(data) // 8) or data[1] != layer.index:
                    problems.append(data[:8])
                held.append((view, data))
                if len(held) > 8:
                    old, expected = held.pop(0)
                    if bytes(old) != expected:
                        problems.append(b"changed")
                    old.release()

        threads = [threading.Thread(target=read) for _ in range(4)]
        for thread in threads:
            thread.start()
        for version in range(1, 300):
            layer = LayerId(1, version % 4)
            try:
                owner.update_layer(layer, stamp(layer, version))
            except mmkit.LimitExceeded:
                pass  # readers hold every spare layer for a moment
            if version == 200:
                reader.close()
        stop.set()
        for thread in threads:
            thread.join()
        owner.close()
        print("problems", problems)
    """
    result = run_python(code, timeout=100)
    assert result.returncode == 0, describe(result.returncode) + result.stderr
    assert result.stdout.strip() == "problems []"


@pytest.mark.timeout(120)
def test_the_readmes_process_pool_example_runs(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Share across processes") :]
    example = section[section.index("```python\n") + 10 : section.index("\n```\n")]
    files = mmkit.generate_dataset(tmp_path / "data")
    (tmp_path / "example.py").write_text(example)
    result = subprocess.run(
        [sys.executable, "example.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    stored = mmkit.storage.read_header_file(files[DimensionId(1)]).layer_checksums
    assert ast.literal_eval(result.stdout) == list(stored)


FORKING_READER = """
    import os, sys, mmkit
    from mmkit import LayerId
    from tests.test_sharing import stamp
    layer = LayerId(2, 0)
    reader = mmkit.attach(sys.argv[1])
    view = reader.access_layer(layer)
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child keeps its view while the parent lets go and the owner updates
        code = 0
        try:
            os.close(go_write)  # so that a parent that dies ends the wait
            os.read(go_read, 1)
            code |= 0 if bytes(view) == stamp(layer, 0) else 1
            code |= 0 if bytes(reader.access_layer(layer)) == stamp(layer, 5) else 2
            reader.close()
        finally:
            os._exit(code)
    view.release()
    reader.stats()  # the parent lets go of its pin; the child's own stays
    print("released", flush=True)
    sys.stdin.readline()
    os.write(go_write, b"g")
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.timeout(60)
@markers.needs_fork
def test_a_forked_reader_keeps_its_views_with_pins_of_its_own(owner: MmapManager) -> None:
    layer = LayerId(2, 0)
    with Child(FORKING_READER, str(owner.share())) as reader:
        assert reader.line() == "released"
        for version in range(1, 6):  # its home stays pinned by the child alone
            owner.update_layer(layer, stamp(layer, version))
        assert owner.stats().reader_pins == PAGE_SIZE
        reader.say("updated")
        assert reader.wait() == 0, reader.errors()
