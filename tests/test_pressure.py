"""Read-copy-update, eviction under a resident limit, saving, and the OS saying no."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest

import mmkit
from mmkit import (
    DimensionId,
    InvalidSource,
    InvalidState,
    LayerId,
    LimitExceeded,
    MemoryConfig,
    MiB,
    MmapManager,
    NotLoaded,
    address_of,
)
from mmkit.platform import PAGE_SIZE
from mmkit.storage import read_dimension
from tests import markers
from tests.conftest import ROOT, run_python, run_threads, small_config


def fill(byte: int, size: int = PAGE_SIZE) -> bytes:
    return bytes([byte]) * size


@pytest.fixture(scope="module")
def default_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("default-data")
    mmkit.generate_dataset(directory)
    return directory


@pytest.fixture(scope="module")
def expected_crc(default_data: Path) -> dict[LayerId, int]:
    crcs = {}
    config = MemoryConfig()
    for spec in config.dimensions:
        target = bytearray(spec.size)
        path = mmkit.storage.dimension_path(default_data, spec)
        read_dimension(path, spec, config.layer_size, memoryview(target))
        for index in range(spec.size // config.layer_size):
            crcs[LayerId(spec.id, index)] = zlib.crc32(target[index * MiB : (index + 1) * MiB])
    return crcs


# -- read-copy-update -------------------------------------------------------------------


def test_update_keeps_old_views_and_publishes_new_bytes(manager: MmapManager) -> None:
    manager.load_dimension(1, fill(1, 4 * PAGE_SIZE))
    old = manager.access_layer(LayerId(1, 2))
    manager.update_layer(LayerId(1, 2), fill(2))
    new = manager.access_layer(LayerId(1, 2))
    assert bytes(old) == fill(1) and bytes(new) == fill(2)
    assert address_of(old) == manager.region(1).layer_address(2)
    assert address_of(new) != address_of(old)
    assert new.readonly
    assert bytes(manager.access_layer(LayerId(1, 1))) == fill(1)
    manager.update_layer(LayerId(1, 2), fill(3))
    assert bytes(new) == fill(2)
    assert bytes(manager.access_layer(LayerId(1, 2))) == fill(3)


def test_old_copies_go_back_to_the_pool_when_readers_let_go(manager: MmapManager) -> None:
    manager.load_dimension(2)
    manager.update_layer(LayerId(2, 0), fill(7))
    held = manager.access_layer(LayerId(2, 0))
    manager.update_layer(LayerId(2, 0), fill(8))
    with_reader = manager.stats()
    assert with_reader.pool_used == 2 * PAGE_SIZE
    del held
    after = manager.stats()
    assert after.pool_used == PAGE_SIZE
    assert after.layer_copies == 1
    assert after.data == with_reader.data - PAGE_SIZE


def test_update_errors_change_nothing(manager: MmapManager) -> None:
    with pytest.raises(NotLoaded):
        manager.update_layer(LayerId(1, 0), fill(1))
    manager.load_dimension(1)
    before = manager.stats()
    for data, error in (
        (b"short", InvalidSource),
        (42, InvalidSource),
        (fill(1, 2 * PAGE_SIZE), InvalidSource),
    ):
        with pytest.raises(error):
            manager.update_layer(LayerId(1, 0), data)
    with pytest.raises(mmkit.LayerOutOfRange):
        manager.update_layer(LayerId(1, 4), fill(1))
    with pytest.raises(mmkit.InvalidId):
        manager.update_layer((1, 0), fill(1))  # type: ignore[arg-type]
    assert manager.stats() == before
    manager.close()
    with pytest.raises(InvalidState):
        manager.update_layer(LayerId(1, 0), fill(1))


def test_update_when_the_pool_is_full() -> None:
    config = small_config(limit=9 * PAGE_SIZE + 2 * PAGE_SIZE)
    with MmapManager(config) as mgr:
        mgr.load_dimension(1, fill(1, 4 * PAGE_SIZE))
        mgr.update_layer(LayerId(1, 0), fill(2))
        mgr.update_layer(LayerId(1, 1), fill(3))
        before = mgr.stats()
        with pytest.raises(LimitExceeded):
            mgr.update_layer(LayerId(1, 2), fill(4))
        assert mgr.stats() == before
        assert bytes(mgr.access_layer(LayerId(1, 2))) == fill(1)


def test_an_update_never_tears_a_reader() -> None:
    size = 64 * PAGE_SIZE
    config = small_config(
        limit=64 * MiB, layer_size=size, dimensions=(mmkit.DimensionSpec(1, "A", 2 * size),)
    )
    patterns = [bytes([n]) * size for n in range(4)]
    valid = {zlib.crc32(p) for p in patterns}
    torn: list[int] = []
    stop = threading.Event()
    with MmapManager(config) as mgr:
        mgr.load_dimension(1, patterns[0] * 2)

        def read() -> None:
            while not stop.is_set():
                view = mgr.access_layer(LayerId(1, 0))
                first = zlib.crc32(view)
                time.sleep(0)
                if first not in valid or zlib.crc32(view) != first:
                    torn.append(first)

        readers = [threading.Thread(target=read) for _ in range(8)]
        for thread in readers:
            thread.start()
        for n in range(300):
            mgr.update_layer(LayerId(1, 0), patterns[n % 4])
        stop.set()
        for thread in readers:
            thread.join()
        assert not torn
        assert mgr.stats().layer_copies == 1


# -- eviction -----------------------------------------------------------------------


def test_evict_and_reload_from_file(tmp_path: Path) -> None:
    files = mmkit.generate_dataset(tmp_path, small_config(), seed=4)
    with MmapManager(small_config()) as mgr:
        mgr.load_dimension(1, files[DimensionId(1)])
        before = bytes(mgr.access_layer(LayerId(1, 3)))
        assert mgr.evict(1)
        assert not mgr.is_loaded(1)
        stats = mgr.stats()
        assert stats.evictions == 1 and stats.data == 0 and stats.dimensions[0].resident == 0
        assert bytes(mgr.access_layer(LayerId(1, 3))) == before
        assert mgr.is_loaded(1) and mgr.stats().reloads == 1


def test_what_cannot_be_reloaded_is_never_dropped(manager: MmapManager, tmp_path: Path) -> None:
    assert not manager.evict(1)  # not loaded
    manager.load_dimension(1, fill(9, 4 * PAGE_SIZE))
    assert not manager.evict(1)
    manager.load_dimension(2)  # zeros can be made again
    manager.update_layer(LayerId(2, 1), fill(5))
    assert not manager.evict(2)
    manager.save_dimension(2, tmp_path / "two.mmkd")
    assert manager.evict(2)
    assert bytes(manager.access_layer(LayerId(2, 1))) == fill(5)
    assert manager.stats().layer_copies == 0
    manager.load_dimension(3)
    assert manager.evict(3)
    assert bytes(manager.access_layer(LayerId(3, 2))) == fill(0)


def test_a_held_view_blocks_eviction(tmp_path: Path) -> None:
    files = mmkit.generate_dataset(tmp_path, small_config())
    with MmapManager(small_config()) as mgr:
        mgr.load_dimension(1, files[DimensionId(1)])
        view = mgr.access_layer(LayerId(1, 0))[5:]
        expected = bytes(view)
        assert not mgr.evict(1)
        assert mgr.is_loaded(1) and bytes(view) == expected
        assert mgr.stats().pinned == 4 * PAGE_SIZE
        del view
        assert mgr.evict(1)


def test_a_view_survives_an_eviction_storm(default_data: Path) -> None:
    config = MemoryConfig(data_dir=default_data, resident_limit=24 * MiB)
    with MmapManager(config) as mgr:
        held = mgr.access_layer(LayerId(1, 5))
        expected = bytes(held)
        rng = random.Random(1)
        for _ in range(60):
            spec = rng.choice(config.dimensions)
            mgr.access_layer(LayerId(spec.id, rng.randrange(spec.size // MiB)))
            mgr.evict(spec.id)
        assert bytes(held) == expected
        stats = mgr.stats()
        assert stats.evictions > 10 and stats.reloads > 10


def test_many_threads_under_a_24_mib_cap(
    default_data: Path, expected_crc: dict[LayerId, int]
) -> None:
    config = MemoryConfig(data_dir=default_data, resident_limit=24 * MiB)
    layers = sorted(expected_crc, key=lambda layer: (layer.dimension, layer.index))
    failures: list[str] = []
    peak = 0

    with MmapManager(config) as mgr:

        def read(seed: int) -> None:
            nonlocal peak
            rng = random.Random(seed)
            for _ in range(8):
                layer = rng.choice(layers)
                crc = zlib.crc32(mgr.access_layer(layer))
                if crc != expected_crc[layer]:
                    failures.append(f"{layer}: {crc:#x}")
                peak = max(peak, mgr._residency.data)

        run_threads(read, 64)
        assert not failures
        stats = mgr.stats()
        assert stats.evictions > 0
        # The last loads may have found the others pinned by readers still busy with them.
        assert stats.data <= 24 * MiB + 16 * MiB
        assert stats.data_resident <= stats.data
        # Pins can push past the cap only while readers hold views: 64 readers, 16 MiB at most each.
        assert peak <= 24 * MiB + 64 * 16 * MiB


def test_pinned_data_passes_the_cap_and_shows_it(default_data: Path) -> None:
    config = MemoryConfig(data_dir=default_data, resident_limit=24 * MiB)
    with MmapManager(config) as mgr:
        held = [mgr.access_layer(LayerId(d, 0)) for d in (1, 2, 3)]
        stats = mgr.stats()
        assert stats.data == 48 * MiB and stats.over_limit == 24 * MiB
        assert stats.pinned >= 16 * MiB
        assert all(len(v) == MiB for v in held)
        del held
        mgr.access_layer(LayerId(4, 0))
        assert mgr.stats().data <= 24 * MiB


# -- saving -------------------------------------------------------------------------


def test_save_round_trips(manager: MmapManager, tmp_path: Path) -> None:
    manager.load_dimension(1, fill(1, 4 * PAGE_SIZE))
    manager.update_layer(LayerId(1, 3), fill(4))
    path = manager.save_dimension(1, tmp_path / "one.mmkd")
    with MmapManager(small_config()) as other:
        other.load_dimension(1, path)
        assert bytes(other.access_layer(LayerId(1, 3))) == fill(4)
        assert bytes(other.access_layer(LayerId(1, 0))) == fill(1)
    with pytest.raises(mmkit.InvalidArgument):
        manager.save_dimension(1, 5)  # type: ignore[arg-type]
    with pytest.raises(mmkit.DataFileError):
        manager.save_dimension(1, tmp_path / "missing-dir" / "x.mmkd")


SAVER = """
import sys
import mmkit
from mmkit import LayerId, MmapManager
from tests.conftest import small_config
path = sys.argv[1]
with MmapManager(small_config()) as mgr:
    mgr.load_dimension(1)
    n = 0
    print("ready", flush=True)
    while True:
        n += 1
        for layer in range(4):
            mgr.update_layer(LayerId(1, layer), bytes([n % 251]) * 4096 * {pages})
        mgr.save_dimension(1, path)
"""


def test_killing_a_saver_leaves_a_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "saved.mmkd"
    spec = small_config().dimensions[0]
    rng = random.Random(2)
    pages = PAGE_SIZE // 4096
    for _ in range(12):
        child = subprocess.Popen(
            [sys.executable, "-c", SAVER.format(pages=pages), str(path)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.05))
        child.kill()  # SIGKILL on POSIX, TerminateProcess on Windows: no chance to clean up
        child.wait(timeout=30)
        if not path.exists():
            continue
        target = bytearray(spec.size)
        read_dimension(path, spec, PAGE_SIZE, memoryview(target))
        layers = {bytes(target[i * PAGE_SIZE : (i + 1) * PAGE_SIZE]) for i in range(4)}
        assert len(layers) == 1 and len(set(next(iter(layers)))) == 1
    assert path.exists()


# -- the OS says no ---------------------------------------------------------------------

LIMITED = """
import ctypes, resource, mmkit
from mmkit import MemoryConfig, MmapManager, LayerId
from tests.conftest import small_config
"""


@markers.linux_rlimits
def test_rlimit_as_makes_init_a_clean_error() -> None:
    result = run_python(
        LIMITED
        + """
# 600 MiB above what is mapped already (a free-threaded build's allocator reserves 1 GiB at start)
in_use = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (in_use + (600 << 20), in_use + (600 << 20)))
try:
    MmapManager(MemoryConfig(limit=1024 * mmkit.MiB))
except mmkit.OutOfMemory as exc:
    assert "reserving" in str(exc) and "mmap" in str(exc), exc
else:
    raise AssertionError("no OutOfMemory")
with MmapManager(small_config()) as mgr:
    mgr.load_dimension(1)
"""
    )
    assert result.returncode == 0, result.stderr


@markers.linux_rlimits
@markers.procfs
def test_rlimit_data_makes_load_and_prefault_clean_errors() -> None:
    result = run_python(
        LIMITED
        + """
soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
mgr = MmapManager(MemoryConfig())
import os
status = open("/proc/self/status").read()
data_kib = int(status.split("VmData:")[1].split()[0])
resource.setrlimit(resource.RLIMIT_DATA, ((data_kib << 10) + (10 << 20), hard))
mgr.load_dimension(14)
before = mgr.stats()
try:
    mgr.load_dimension(1)
except mmkit.OutOfMemory as exc:
    assert "committing" in str(exc), exc
else:
    raise AssertionError("no OutOfMemory")
assert not mgr.is_loaded(1) and mgr.stats().committed == before.committed
try:
    mgr.allocate(64 << 20)
except mmkit.OutOfMemory:
    pass
else:
    raise AssertionError("pool commit went past RLIMIT_DATA")
assert mgr.stats().pool_used == 0
try:
    MmapManager(MemoryConfig(prefault=True))
except mmkit.OutOfMemory as exc:
    assert "prefaulting" in str(exc), exc
else:
    raise AssertionError("no OutOfMemory from prefault")
assert bytes(mgr.access_layer(LayerId(14, 0))) == bytes(1 << 20)
mgr.close()
"""
    )
    assert result.returncode == 0, result.stderr


@markers.needs_mlockall
def test_mlock_limits_make_init_a_clean_error() -> None:
    result = run_python(
        LIMITED
        + """
import os
if os.getuid() == 0:  # root's CAP_IPC_LOCK ignores the limit: run this as nobody
    os.setgid(65534)
    os.setuid(65534)
libc = ctypes.CDLL(None, use_errno=True)
soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
limit = 16 << 20 if hard == resource.RLIM_INFINITY else min(hard, 16 << 20)
resource.setrlimit(resource.RLIMIT_MEMLOCK, (limit, limit))
MCL_FUTURE = 2
assert libc.mlockall(MCL_FUTURE) == 0, ctypes.get_errno()
try:
    MmapManager(MemoryConfig())
except mmkit.OutOfMemory as exc:
    assert "reserving" in str(exc), exc
else:
    raise SystemExit(77)  # this process may lock past the limit
assert libc.munlockall() == 0
with MmapManager(small_config()) as mgr:
    mgr.load_dimension(1, b"\x03" * (4 * 4096))
    assert bytes(mgr.access_layer(LayerId(1, 0))) == b"\x03" * 4096
"""
    )
    if result.returncode == 77:
        pytest.skip("this process may lock memory past RLIMIT_MEMLOCK (CAP_IPC_LOCK)")
    assert result.returncode == 0, result.stderr


def test_a_refused_eviction_keeps_the_updated_bytes(tmp_path: Path) -> None:
    config = small_config()
    with MmapManager(config) as mgr:
        mgr.load_dimension(1)
        mgr.update_layer(LayerId(1, 1), fill(5))
        mgr.save_dimension(1, tmp_path / "one.mmkd")
        held = mgr.access_layer(LayerId(1, 0))
        assert not mgr.evict(1)
        assert bytes(mgr.access_layer(LayerId(1, 1))) == fill(5)
        del held
        assert mgr.evict(1)
        assert bytes(mgr.access_layer(LayerId(1, 1))) == fill(5)


def test_evicting_a_dimension_frees_its_layer_copies(tmp_path: Path) -> None:
    with MmapManager(small_config()) as mgr:
        mgr.load_dimension(1)
        for n in range(3 * mgr.stats().pool_size // PAGE_SIZE):
            mgr.update_layer(LayerId(1, n % 4), fill(n % 251))
            mgr.save_dimension(1, tmp_path / "one.mmkd")
            assert mgr.evict(1)
            stats = mgr.stats()
            assert (stats.pool_used, stats.data, stats.layer_copies) == (0, 0, 0)
