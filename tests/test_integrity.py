"""Data is never silently changed or lost, and a failed call changes nothing.

Item numbers refer to the safety issue's list.
"""

from __future__ import annotations

import os
import pickle
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

import mmkit
from mmkit import (
    DataFileError,
    DimensionSpec,
    InvalidArgument,
    InvalidId,
    InvalidSource,
    LayerId,
    LimitExceeded,
    MemoryConfig,
    MmapManager,
)
from mmkit.platform import PAGE_SIZE
from tests import markers
from tests.conftest import run_python, run_threads, small_config


def layer_bytes(tag: int) -> bytes:
    return bytes([tag % 256]) * PAGE_SIZE


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    mmkit.generate_dataset(tmp_path / "data", small_config(), seed=3)
    return tmp_path / "data"


# -- C9: a reload must bring back what was dropped ----------------------------------------


def test_a_file_replaced_after_eviction_is_refused(data_dir: Path, tmp_path: Path) -> None:
    """C9: the same LayerId silently served another file's bytes after a reload."""
    config = small_config(data_dir=data_dir)
    with MmapManager(config) as mgr:
        before = bytes(mgr.access_layer(LayerId(1, 2)))
        assert mgr.evict(1)
        other = tmp_path / "other"
        mmkit.generate_dataset(other, small_config(), seed=4)
        name = mmkit.storage.dimension_path(data_dir, config.dimension(1)).name
        os.replace(other / name, data_dir / name)
        with pytest.raises(DataFileError, match="dropped"):
            mgr.access_layer(LayerId(1, 2))
        assert not mgr.is_loaded(1)
        assert bytes(mgr.access_layer(LayerId(2, 0))) != before  # the others still work


def test_data_is_not_dropped_when_its_file_changed(data_dir: Path, tmp_path: Path) -> None:
    """C9: eviction dropped bytes that the file could no longer give back."""
    config = small_config(data_dir=data_dir)
    with MmapManager(config) as mgr:
        before = bytes(mgr.access_layer(LayerId(1, 2)))
        other = tmp_path / "other"
        mmkit.generate_dataset(other, small_config(), seed=4)
        name = mmkit.storage.dimension_path(data_dir, config.dimension(1)).name
        os.replace(other / name, data_dir / name)
        assert not mgr.evict(1)
        assert bytes(mgr.access_layer(LayerId(1, 2))) == before


def test_an_update_saved_to_a_deleted_file_is_kept(data_dir: Path, tmp_path: Path) -> None:
    """C9: after save_dimension(d, tmp) and deleting tmp, the next eviction lost the update."""
    config = small_config(data_dir=data_dir, resident_limit=6 * PAGE_SIZE)
    with MmapManager(config) as mgr:
        mgr.update_layer(LayerId(1, 0), layer_bytes(0xAB))
        saved = mgr.save_dimension(1, tmp_path / "saved.mmkd")
        saved.unlink()
        assert not mgr.evict(1)
        for dimension in (2, 3, 2, 3):  # pressure: the cap would drop D01 if it could
            mgr.access_layer(LayerId(dimension, 0))
        assert mgr.is_loaded(1)
        assert bytes(mgr.access_layer(LayerId(1, 0))) == layer_bytes(0xAB)


# -- C10: concurrent saves ----------------------------------------------------------------


def test_concurrent_saves_never_leave_an_older_snapshot(tmp_path: Path) -> None:
    """C10: the second save marked the dimension clean, then the first renamed older bytes."""
    with MmapManager(small_config()) as mgr:
        mgr.load_dimension(1)
        target = tmp_path / "d1.mmkd"
        errors: list[BaseException] = []
        tags = iter(range(1_000_000))

        def save(worker: int) -> None:
            try:
                if worker == 1:
                    mgr.update_layer(LayerId(1, 1), layer_bytes(next(tags)))
                mgr.save_dimension(1, target)
            except BaseException as exc:
                errors.append(exc)

        for round_ in range(30):
            mgr.update_layer(LayerId(1, 0), layer_bytes(round_))
            run_threads(save, 3)
            assert not errors, errors
            current = [bytes(mgr.access_layer(LayerId(1, i))) for i in range(4)]
            if mgr.evict(1):  # it claims the file holds exactly what is in memory
                assert [bytes(mgr.access_layer(LayerId(1, i))) for i in range(4)] == current


# -- D12, D13: clear errors -----------------------------------------------------------------


def test_a_limit_the_address_space_cannot_hold_is_a_config_error() -> None:
    """D12: ctypes wrapped a limit of 2**64 silently, then raised a raw OverflowError."""
    for limit in (2**64, 2**64 + 2 * PAGE_SIZE, 2**70):
        with pytest.raises(mmkit.ConfigError, match="limit"):
            MemoryConfig(limit=limit, dimensions=(DimensionSpec(1, "A", PAGE_SIZE),))


def test_a_released_memoryview_is_an_invalid_source() -> None:
    """D12: a released memoryview as a source was a raw ValueError."""
    released = memoryview(bytes(4 * PAGE_SIZE))
    released.release()
    with MmapManager(small_config()) as mgr:
        with pytest.raises(InvalidSource, match="released"):
            mgr.load_dimension(1, released)
        mgr.load_dimension(1)
        with pytest.raises(InvalidSource, match="released"):
            mgr.update_layer(LayerId(1, 0), released)


@pytest.mark.parametrize(
    ("path", "error"),
    [("", InvalidArgument), ("bad\0name.mmkd", InvalidArgument), ("/", DataFileError)],
)
def test_save_paths_that_cannot_name_a_file(path: str, error: type[Exception]) -> None:
    """D12: save_dimension raised raw ValueError for '', '/' and a NUL byte."""
    with MmapManager(small_config()) as mgr:
        mgr.load_dimension(1)
        with pytest.raises(error):
            mgr.save_dimension(1, path)


@markers.map_count_limit
def test_running_out_of_mappings_is_named_and_changes_nothing() -> None:
    """D13: at vm.max_map_count, update_layer said OutOfMemory with 144 MiB free."""
    result = run_python(
        """
        import mmkit
        from mmkit import LayerId, MmapManager
        from mmkit.platform import PAGE_SIZE
        from tests.conftest import small_config
        from tests.osprobe.linux import exhaust_mappings
        mgr = MmapManager(small_config())
        mgr.load_dimension(1)
        before = mgr.stats()
        maps = exhaust_mappings(PAGE_SIZE)
        try:
            mgr.update_layer(LayerId(1, 2), b"\\x01" * PAGE_SIZE)
        except mmkit.OutOfMappings as exc:
            assert "vm.max_map_count" in str(exc), exc
        else:
            raise AssertionError("the update succeeded at the map count limit")
        del maps
        assert mgr.stats() == before
        mgr.update_layer(LayerId(1, 2), b"\\x01" * PAGE_SIZE)
        assert mgr.access_layer(LayerId(1, 2))[0] == 1
        """,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


# -- E14 ----------------------------------------------------------------------------------


def test_stats_pickle() -> None:
    """E14: Stats could not be pickled (owners was a mappingproxy)."""
    with MmapManager(small_config()) as mgr:
        mgr.load_dimension(1)
        block = mgr.allocate(100, owner="alice")
        stats = mgr.stats()
        assert pickle.loads(pickle.dumps(stats)) == stats
        assert stats.owners == {"alice": block.size}


# -- F18: the fast path accepts exactly what the slow path accepts --------------------------


@pytest.mark.parametrize(
    "impostor",
    [
        SimpleNamespace(dimension=1, index=-1),
        SimpleNamespace(dimension=1, index=True),
        SimpleNamespace(dimension=1, index=slice(None)),
        (1, 0),
        "D01/L00",
    ],
    ids=["negative", "bool", "slice", "tuple", "str"],
)
def test_access_layer_takes_only_layer_ids(impostor: object) -> None:
    """F18: anything with .dimension/.index went through the fast path, even a slice."""
    with MmapManager(small_config()) as mgr:
        mgr.load_dimension(1, bytes(range(256)) * (4 * PAGE_SIZE // 256))
        good = bytes(mgr.access_layer(LayerId(1, 3)))
        with pytest.raises(InvalidId):
            mgr.access_layer(impostor)  # type: ignore[arg-type]
        errors: list[BaseException] = []

        def read(_: int) -> None:
            try:
                assert bytes(mgr.access_layer(LayerId(1, 3))) == good
            except BaseException as exc:
                errors.append(exc)

        run_threads(read, 4)
        assert not errors


def test_released_published_views_are_replaced() -> None:
    """F18: released published views made every later access raise a raw ValueError."""
    with MmapManager(small_config()) as mgr:
        mgr.load_dimension(1, bytes(range(256)) * (4 * PAGE_SIZE // 256))
        first = bytes(mgr.access_layer(LayerId(1, 1)))
        for view in mgr._published.table.layers[mmkit.DimensionId(1)]:
            view.release()  # what a caller who got hold of them could do
        assert bytes(mgr.access_layer(LayerId(1, 1))) == first
        assert bytes(mgr.access_layer(LayerId(1, 1))) == first


# -- F19: a call that fails changes nothing -----------------------------------------------


def test_a_failed_load_evicts_nothing(data_dir: Path, tmp_path: Path) -> None:
    """F19: load_dimension(1, corrupt) raised DataFileError after evicting D02 and D03."""
    config = small_config(data_dir=data_dir, resident_limit=5 * PAGE_SIZE)
    corrupt = tmp_path / "corrupt.mmkd"
    raw = bytearray(mmkit.storage.dimension_path(data_dir, config.dimension(1)).read_bytes())
    raw[-1] ^= 1
    corrupt.write_bytes(bytes(raw))
    with MmapManager(config) as mgr:
        mgr.load_dimension(2)
        mgr.load_dimension(3)
        before = mgr.stats()
        with pytest.raises(DataFileError):
            mgr.load_dimension(1, corrupt)
        after = mgr.stats()
        assert after.loaded == before.loaded and after.evictions == before.evictions


def test_a_failed_update_evicts_nothing(data_dir: Path) -> None:
    """F19: update_layer on a full pool raised LimitExceeded after evicting a dimension."""
    config = small_config(data_dir=data_dir, resident_limit=5 * PAGE_SIZE)
    with MmapManager(config) as mgr:
        mgr.access_layer(LayerId(2, 0))
        mgr.access_layer(LayerId(3, 0))
        blocks = []
        with pytest.raises(LimitExceeded):
            while True:
                blocks.append(mgr.allocate(PAGE_SIZE))
        before = mgr.stats()
        with pytest.raises(LimitExceeded):
            mgr.update_layer(LayerId(3, 1), layer_bytes(7))
        after = mgr.stats()
        assert after.loaded == before.loaded and after.evictions == before.evictions


# -- F25: a refused source is not held ----------------------------------------------------


def test_a_refused_source_is_not_kept_locked() -> None:
    """F25: the traceback held mmkit's memoryview, so the bytearray could not be resized."""
    with MmapManager(small_config()) as mgr:
        mgr.load_dimension(1)
        short = bytearray(PAGE_SIZE - 1)
        with pytest.raises(InvalidSource) as caught:
            mgr.update_layer(LayerId(1, 0), short)
        short.append(0)  # BufferError while an export of it is alive
        assert caught.value is not None
        mgr.update_layer(LayerId(1, 0), short)
        wrong = bytearray(3 * PAGE_SIZE)
        with pytest.raises(InvalidSource) as caught:
            mgr.load_dimension(2, wrong)
        del wrong[:]
        strided = memoryview(bytearray(2 * PAGE_SIZE))[::2]
        with pytest.raises(InvalidSource, match="not contiguous"):
            mgr.update_layer(LayerId(1, 1), strided)


# -- exact, not eventual ------------------------------------------------------------------


def test_eviction_knows_at_once_when_the_last_view_went(data_dir: Path) -> None:
    """Whether memory is reachable is known exactly: no waiting on the collector."""
    with MmapManager(small_config(data_dir=data_dir)) as mgr:
        view = mgr.access_layer(LayerId(1, 0))[10:20]
        copy = memoryview(view)
        assert not mgr.evict(1)
        view.release()
        assert not mgr.evict(1)
        handed: list[memoryview] = [copy]

        def drop(_: int) -> None:
            handed.pop().release()

        run_threads(drop, 1)
        assert mgr.evict(1)
        blocker = mgr.access_layer(LayerId(2, 0))
        cycle: list[object] = [blocker]
        cycle.append(cycle)
        del blocker
        assert not mgr.evict(2)  # a view in a reference cycle still exists until collected
        thread = threading.Thread(target=lambda: cycle.clear())
        thread.start()
        thread.join()
        assert mgr.evict(2)
