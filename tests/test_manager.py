"""MmapManager: the spec's unit tests, its state machine, loading, access and errors."""

from __future__ import annotations

import gc
import itertools
import zlib
from pathlib import Path

import pytest

import mmkit
from mmkit import (
    AlreadyLoaded,
    DataFileError,
    DimensionId,
    InvalidId,
    InvalidSource,
    InvalidState,
    LayerId,
    LayerOutOfRange,
    ManagerState,
    MemoryConfig,
    MiB,
    MmapManager,
    NotLoaded,
    UnknownDimension,
    address_of,
)
from mmkit.platform import PAGE_SIZE
from tests.conftest import run_python, run_threads, small_config
from tests.osprobe import mapped_bytes_in, mapping_count, protection_at


def pattern(size: int, seed: int = 1) -> bytes:
    block = bytes((seed * 31 + i * 7) % 251 for i in range(4096))
    return (block * (size // 4096 + 1))[:size]


# -- the spec's unit tests ------------------------------------------------------------


def test_manager_initialization() -> None:
    with MmapManager(MemoryConfig()) as mgr:
        assert mgr.total_allocated() == 280 * MiB
        assert mgr.state is ManagerState.ALLOCATED
        regions = mgr.regions()
        assert len(regions) == 14
        assert [r.name for r in regions][:3] == ["Emotion", "Cognition", "Intention"]
        for region in regions:
            assert region.address % PAGE_SIZE == 0
        for before, after in itertools.pairwise(regions):
            assert before.end + PAGE_SIZE <= after.address
            assert protection_at(before.end) == "none"
        assert mgr.stats().committed == 0
        assert mgr.stats().resident == 0


def test_dimension_loading(manager: MmapManager) -> None:
    manager.load_dimension(DimensionId(1))
    assert manager.is_loaded(DimensionId(1))
    assert not manager.is_loaded(2)
    assert manager.state is ManagerState.LOADED


def test_zero_copy_access(manager: MmapManager) -> None:
    data = pattern(4 * PAGE_SIZE)
    manager.load_dimension(1, data)
    region = manager.region(1)
    for index in range(region.layer_count):
        view = manager.access_layer(LayerId(1, index))
        assert address_of(view) == region.address + index * region.layer_size
        assert view.readonly and view.format == "B" and view.nbytes == PAGE_SIZE
        assert view == data[index * PAGE_SIZE : (index + 1) * PAGE_SIZE]
    assert manager.state is ManagerState.ACTIVE


def test_concurrent_access(manager: MmapManager) -> None:
    data = pattern(4 * PAGE_SIZE, seed=3)
    manager.load_dimension(1, data)
    expected = zlib.crc32(data[:PAGE_SIZE])
    results: list[int] = []

    def read() -> None:
        for _ in range(200):
            results.append(zlib.crc32(manager.access_layer(LayerId(1, 0))))

    run_threads(lambda _: read(), 10)
    assert results == [expected] * 2000


# -- state machine --------------------------------------------------------------------


def test_state_moves_forward_only(config: MemoryConfig) -> None:
    mgr = MmapManager(config, initialize=False)
    assert mgr.state is ManagerState.UNINITIALIZED
    assert mgr.total_allocated() == 0
    with pytest.raises(InvalidState, match="uninitialized"):
        mgr.load_dimension(1)
    mgr.initialize()
    assert mgr.state is ManagerState.ALLOCATED
    with pytest.raises(InvalidState):
        mgr.initialize()
    mgr.load_dimension(1)
    assert mgr.state is ManagerState.LOADED
    mgr.access_layer(LayerId(1, 0))
    assert mgr.state is ManagerState.ACTIVE
    mgr.load_dimension(2)
    assert mgr.state is ManagerState.ACTIVE
    mgr.close()
    assert mgr.state is ManagerState.CLOSED
    mgr.close()
    assert mgr.state is ManagerState.CLOSED
    assert mgr.total_allocated() == 0


def test_everything_after_close_is_invalid_state(config: MemoryConfig) -> None:
    with MmapManager(config) as mgr:
        mgr.load_dimension(1)
    assert mgr.state is ManagerState.CLOSED
    for call in (
        lambda: mgr.load_dimension(2),
        lambda: mgr.access_layer(LayerId(1, 0)),
        lambda: mgr.regions(),
        lambda: mgr.region(1),
        lambda: mgr.initialize(),
    ):
        with pytest.raises(InvalidState, match="closed"):
            call()
    assert not mgr.is_loaded(1)
    stats = mgr.stats()
    assert (stats.allocated, stats.committed, stats.resident, stats.loaded) == (0, 0, 0, ())


def test_repr_and_stats(manager: MmapManager, config: MemoryConfig) -> None:
    manager.load_dimension(1, pattern(4 * PAGE_SIZE))
    manager.load_dimension(2)
    text = repr(manager)
    assert (
        "LOADED" in text
        and "loaded=2/3" in text
        and hex(manager.region(1).address - PAGE_SIZE)[:6] in text
    )
    stats = manager.stats()
    assert stats.allocated == config.limit
    assert stats.committed == 6 * PAGE_SIZE
    assert stats.resident == 4 * PAGE_SIZE  # zero-filled D02 is committed, never touched
    assert stats.loaded == (DimensionId(1), DimensionId(2))
    assert stats.pool_size == config.pool_size
    assert stats.reserved >= config.limit


# -- loading --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_load_from_bytes_like(manager: MmapManager, kind: type) -> None:
    data = pattern(2 * PAGE_SIZE, seed=5)
    manager.load_dimension(2, kind(data))
    assert bytes(manager.access_layer(LayerId(2, 1))) == data[PAGE_SIZE:]


def test_load_nothing_is_zero(manager: MmapManager) -> None:
    manager.load_dimension(3)
    assert bytes(manager.access_layer(LayerId(3, 2))) == bytes(PAGE_SIZE)


def _assert_untouched(manager: MmapManager, dimension: int) -> None:
    region = manager.region(dimension)
    assert not manager.is_loaded(dimension)
    assert manager.stats().committed == 0
    assert manager.stats().resident == 0
    assert protection_at(region.address) == "none"


@pytest.mark.parametrize(
    ("source", "words"),
    [
        (b"short", ["5 bytes", "D01", str(4 * PAGE_SIZE)]),
        (bytes(4 * PAGE_SIZE + 1), ["bytes"]),
        (12, ["int", "bytes-like"]),
        ([1, 2, 3], ["list"]),
        (memoryview(bytes(8 * PAGE_SIZE))[::2], ["not contiguous", "strided"]),
    ],
)
def test_bad_source_leaves_dimension_unloaded(
    manager: MmapManager, source: object, words: list[str]
) -> None:
    with pytest.raises(InvalidSource) as caught:
        manager.load_dimension(1, source)
    for word in words:
        assert word in str(caught.value)
    _assert_untouched(manager, 1)
    manager.load_dimension(1, pattern(4 * PAGE_SIZE))
    assert manager.is_loaded(1)


def test_loading_twice(manager: MmapManager) -> None:
    manager.load_dimension(1, pattern(4 * PAGE_SIZE))
    with pytest.raises(AlreadyLoaded, match="D01"):
        manager.load_dimension(1)
    assert bytes(manager.access_layer(LayerId(1, 0))) == pattern(4 * PAGE_SIZE)[:PAGE_SIZE]


@pytest.mark.parametrize("dimension", [4, 99])
def test_unknown_dimension(manager: MmapManager, dimension: int) -> None:
    with pytest.raises(UnknownDimension, match=f"D{dimension:02d}"):
        manager.load_dimension(dimension)
    with pytest.raises(UnknownDimension):
        manager.access_layer(LayerId(dimension, 0))


def test_malformed_ids(manager: MmapManager) -> None:
    for bad in (0, -1, "one", None, 1.0):
        with pytest.raises(InvalidId):
            manager.load_dimension(bad)
    for layer in ((1, 0), 1, "D01/L00", None):
        with pytest.raises(InvalidId, match="LayerId"):
            manager.access_layer(layer)  # type: ignore[arg-type]


def test_layer_out_of_range(manager: MmapManager) -> None:
    manager.load_dimension(2)
    manager.access_layer(LayerId(2, 1))
    with pytest.raises(LayerOutOfRange, match="2 layers"):
        manager.access_layer(LayerId(2, 2))


def test_not_loaded_without_data_dir(manager: MmapManager) -> None:
    with pytest.raises(NotLoaded, match="D02"):
        manager.access_layer(LayerId(2, 0))
    manager.load_dimension(1)
    manager.access_layer(LayerId(1, 0))
    with pytest.raises(NotLoaded):
        manager.access_layer(LayerId(2, 0))


def test_views_are_read_only(manager: MmapManager) -> None:
    manager.load_dimension(1)
    view = manager.access_layer(LayerId(1, 0))
    with pytest.raises(TypeError):
        view[0] = 1
    assert protection_at(address_of(view)) == "read"


# -- data files -----------------------------------------------------------------------


@pytest.fixture
def dataset(tmp_path: Path, config: MemoryConfig) -> dict[DimensionId, Path]:
    return mmkit.generate_dataset(tmp_path / "data", config, seed=7)


def read_payload(path: Path, size: int) -> bytes:
    return path.read_bytes()[-size:]


def test_load_from_data_dir_and_on_demand(
    dataset: dict[DimensionId, Path], config: MemoryConfig
) -> None:
    cfg = small_config(data_dir=dataset[DimensionId(1)].parent)
    with MmapManager(cfg) as mgr:
        mgr.load_dimension(1)
        expected = read_payload(dataset[DimensionId(1)], 4 * PAGE_SIZE)
        assert bytes(mgr.access_layer(LayerId(1, 3))) == expected[3 * PAGE_SIZE :]
        view = mgr.access_layer(LayerId(3, 1))
        assert mgr.is_loaded(3)
        assert (
            bytes(view)
            == read_payload(dataset[DimensionId(3)], 3 * PAGE_SIZE)[PAGE_SIZE : 2 * PAGE_SIZE]
        )


def test_load_from_explicit_path(manager: MmapManager, dataset: dict[DimensionId, Path]) -> None:
    manager.load_dimension(2, str(dataset[DimensionId(2)]))
    assert (
        bytes(manager.access_layer(LayerId(2, 0)))
        == read_payload(dataset[DimensionId(2)], 2 * PAGE_SIZE)[:PAGE_SIZE]
    )


@pytest.mark.parametrize("damage", ["truncate", "flip", "missing", "wrong"])
def test_bad_file_leaves_dimension_unloaded(
    manager: MmapManager, dataset: dict[DimensionId, Path], damage: str
) -> None:
    path = dataset[DimensionId(1)]
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "flip":
        raw = bytearray(path.read_bytes())
        raw[-5] ^= 0x10
        path.write_bytes(bytes(raw))
    elif damage == "missing":
        path.unlink()
    else:
        path = dataset[DimensionId(2)]
    with pytest.raises(DataFileError) as caught:
        manager.load_dimension(1, path)
    assert str(path) in str(caught.value)
    _assert_untouched(manager, 1)


def test_truncating_a_loaded_file_cannot_hurt(
    manager: MmapManager, dataset: dict[DimensionId, Path]
) -> None:
    path = dataset[DimensionId(1)]
    manager.load_dimension(1, path)
    before = bytes(manager.access_layer(LayerId(1, 3)))
    path.write_bytes(b"")
    assert bytes(manager.access_layer(LayerId(1, 3))) == before


# -- the mappings -------------------------------------------------------------------


def test_close_returns_every_mapping(config: MemoryConfig) -> None:
    # Once through first: what the interpreter's allocator maps for a manager's objects
    # (a new arena of small objects) stays mapped, and is not the manager's to give back.
    with MmapManager(config) as warm:
        warm.load_dimension(1, pattern(4 * PAGE_SIZE))
        warm.access_layer(LayerId(1, 0))
    gc.collect()
    before = mapping_count()
    mgr = MmapManager(config)
    mgr.load_dimension(1, pattern(4 * PAGE_SIZE))
    mgr.access_layer(LayerId(1, 0))
    first = mgr.region(1).address
    reserved = mgr.stats().reserved
    mgr.close()
    assert mapped_bytes_in(first - PAGE_SIZE, reserved) == 0
    assert mapping_count() <= before


def test_a_view_keeps_its_memory_after_close(config: MemoryConfig) -> None:
    mgr = MmapManager(config)
    data = pattern(4 * PAGE_SIZE, seed=9)
    mgr.load_dimension(1, data)
    mgr.load_dimension(2, pattern(2 * PAGE_SIZE))
    view = mgr.access_layer(LayerId(1, 2))[10:20]
    other = mgr.region(2)
    mgr.close()
    assert bytes(view) == data[2 * PAGE_SIZE + 10 : 2 * PAGE_SIZE + 20]
    assert protection_at(other.address) == "none"  # unpinned regions are decommitted
    address = address_of(view)
    del view
    assert mapped_bytes_in(address, PAGE_SIZE) > 0  # given back by the next collection
    gc.collect()
    assert mapped_bytes_in(address, PAGE_SIZE) == 0


def test_dropping_the_manager_releases_the_mapping(config: MemoryConfig) -> None:
    mgr = MmapManager(config)
    address = mgr.region(1).address
    del mgr
    assert mapped_bytes_in(address, PAGE_SIZE) == 0


def test_a_thousand_cycles_leave_no_trace() -> None:
    """In a child of its own, so no other test's threads map memory meanwhile."""
    result = run_python(
        """
        from mmkit import LayerId, MemoryConfig, MiB, MmapManager
        from tests.osprobe import address_space_bytes, mapping_count, resident_bytes

        def cycle():
            with MmapManager(MemoryConfig()) as mgr:
                mgr.load_dimension(14)
                mgr.access_layer(LayerId(14, 3))

        cycle()
        maps, size, rss = mapping_count(), address_space_bytes(), resident_bytes()
        for _ in range(1000):
            cycle()
        # A leaked cycle would be 300+ MiB and a mapping each, a thousand of them; the
        # interpreter's own allocator moves the count and sizes by an arena or two.
        assert mapping_count() <= maps + 2, (mapping_count(), maps)
        assert address_space_bytes() <= size + 4 * MiB, (address_space_bytes(), size)
        assert resident_bytes() <= rss + 8 * MiB, (resident_bytes(), rss)
        """,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
