"""Every injected failure of a system call or a read leaves no trace.

For each operation, the N-th system call it makes fails (N = 1, 2, … until it makes no
more), once and from then on: the call must raise an ``MmkitError``, the manager must be
exactly as before, and no mapping may leak.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

import mmkit
from mmkit import LayerId, MemoryConfig, MmapManager, MmkitError
from mmkit.platform import BACKEND, PAGE_SIZE
from tests.conftest import small_config
from tests.faults import FaultyMemory
from tests.osprobe import address_space_bytes, mapped_bytes_in

Operation = Callable[[MmapManager], object]


def observable(mgr: MmapManager) -> tuple[object, ...]:
    """Everything a caller can see of a manager, with the OS calls it needs made for real."""
    stats = mgr.stats()
    layers = (
        tuple(
            bytes(mgr.access_layer(LayerId(d, i)))
            for d in stats.loaded
            for i in range(mgr.config.layer_count(d))
        )
        if mgr.state is mmkit.ManagerState.ACTIVE
        else ()
    )
    return replace(stats, owners=dict(stats.owners)), layers  # type: ignore[return-value]


def setup(vm: FaultyMemory, data: Path) -> MmapManager:
    mgr = MmapManager(small_config(), backend=vm)
    mgr.load_dimension(1, data / "d01-alpha.mmkd")
    mgr.load_dimension(2, b"\x02" * (2 * PAGE_SIZE))
    mgr.access_layer(LayerId(1, 0))
    mgr.update_layer(LayerId(2, 1), b"\x07" * PAGE_SIZE)
    return mgr


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("fault-data")
    mmkit.generate_dataset(directory, small_config())
    return directory


OPERATIONS: dict[str, Operation] = {
    "load from a file": lambda m: m.load_dimension(3, m.config.data_dir),
    "load zeros": lambda m: m.load_dimension(3),
    "load bytes": lambda m: m.load_dimension(3, b"\x03" * (3 * PAGE_SIZE)),
    "evict": lambda m: m.evict(1),
    "update": lambda m: m.update_layer(LayerId(1, 2), b"\x09" * PAGE_SIZE),
    "allocate": lambda m: m.allocate(3 * PAGE_SIZE),
    "allocate small": lambda m: m.allocate(100),
    "free": lambda m: m.free(m.allocate(100)),
    "stats": lambda m: m.stats(),
    "close": lambda m: m.close(),
}


def run_with_faults(data: Path, name: str, persistent: bool) -> int:
    operation = OPERATIONS[name]
    if name == "load from a file":
        operation = lambda m: m.load_dimension(3, data / "d03-gamma.mmkd")  # noqa: E731
    failures = 0
    for n in range(1, 50):
        vm = FaultyMemory(BACKEND)
        mgr = setup(vm, data)
        reservation = mgr.stats().reserved
        start = mgr.region(1).address - mgr._layout.alignment
        before = observable(mgr)
        vm.fail_at(n, persistent=persistent)
        try:
            operation(mgr)
        except MmkitError:
            vm.fail_at(None)
            assert observable(mgr) == before, f"{name}: call {n} failed and changed the manager"
            failures += 1
        else:
            vm.fail_at(None)
            if vm.calls < n:
                mgr.close()
                assert mapped_bytes_in(start, reservation) == 0
                return failures
        mgr.close()
        assert mapped_bytes_in(start, reservation) == 0, f"{name}: call {n} leaked a mapping"
    raise AssertionError(f"{name} made more than 50 system calls")


@pytest.mark.parametrize("persistent", [False, True], ids=["once", "from-then-on"])
@pytest.mark.parametrize("name", list(OPERATIONS))
def test_a_failed_call_leaves_no_trace(data: Path, name: str, persistent: bool) -> None:
    failures = run_with_faults(data, name, persistent)
    if name in ("load from a file", "load zeros", "load bytes", "update", "allocate"):
        assert failures > 0, f"no injected failure reached {name}"


@pytest.mark.parametrize("prefault", [False, True])
def test_a_failed_init_leaves_no_mapping(prefault: bool) -> None:
    config = small_config(prefault=prefault)
    before = address_space_bytes()
    failed = 0
    for n in range(1, 20):
        vm = FaultyMemory(BACKEND)
        vm.fail_at(n)
        try:
            mgr = MmapManager(config, backend=vm)
        except mmkit.OutOfMemory as exc:
            failed += 1
            assert "reserving" in str(exc) or "prefaulting" in str(exc)
            continue
        mgr.close()
        if vm.calls < n:
            break
    after = address_space_bytes()
    assert failed >= (4 if prefault else 1)
    assert after - before < config.limit


class FailingFile(io.FileIO):
    """A file whose reads fail once ``budget`` bytes have been read."""

    budget = 0

    def readinto(self, buffer: object) -> int:  # type: ignore[override]
        if FailingFile.budget <= 0:
            raise OSError(5, "Input/output error")
        got = super().readinto(buffer)  # type: ignore[arg-type]
        FailingFile.budget -= got or 0
        return got or 0


@pytest.mark.parametrize("budget", [0, 100, PAGE_SIZE + 10])
def test_a_read_that_fails_part_way(
    data: Path, budget: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(io, "FileIO", FailingFile)
    FailingFile.budget = budget
    with MmapManager(small_config()) as mgr:
        before = mgr.stats()
        with pytest.raises(mmkit.DataFileError, match="read failed: Input/output error"):
            mgr.load_dimension(3, data / "d03-gamma.mmkd")
        assert mgr.stats() == before
        assert not mgr.is_loaded(3)
        monkeypatch.undo()
        mgr.load_dimension(3, data / "d03-gamma.mmkd")
        assert mgr.is_loaded(3)


def test_the_default_config_survives_a_failed_prefault() -> None:
    vm = FaultyMemory(BACKEND)
    vm.fail_at(30)
    with pytest.raises(mmkit.OutOfMemory):
        MmapManager(MemoryConfig(prefault=True), backend=vm)
