"""The spec's Gherkin scenarios, run from specs/features/."""

from __future__ import annotations

import itertools
import threading
import tracemalloc
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from pytest_bdd import given, scenarios, then, when

from mmkit import LayerId, MemoryConfig, MiB, MmapManager, address_of
from mmkit.platform import PAGE_SIZE

scenarios("initialize_regions.feature", "zero_copy_access.feature", "concurrent_queries.feature")

QUERIES = 32
READS_PER_QUERY = 50


@dataclass
class World:
    config: MemoryConfig = field(default_factory=MemoryConfig)
    manager: MmapManager | None = None
    view: memoryview | None = None
    expected: bytes = b""
    results: list[list[int]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    reads_while_locked: int = 0


@pytest.fixture
def world() -> Iterator[World]:
    state = World()
    yield state
    if state.manager is not None:
        state.manager.close()


def loaded_manager(world: World) -> MmapManager:
    world.manager = MmapManager(world.config)
    world.expected = bytes(range(256)) * (16 * MiB // 256)
    world.manager.load_dimension(1, world.expected)
    return world.manager


@given("a default configuration")
def default_configuration(world: World) -> None:
    world.config = MemoryConfig()


@when("I initialize the memory manager")
def initialize(world: World) -> None:
    world.manager = MmapManager(world.config)


@then("280MB should be allocated")
def allocated_280(world: World) -> None:
    assert world.manager is not None
    assert world.manager.total_allocated() == 280 * MiB


@then("all 14 dimensions should have regions")
def fourteen_regions(world: World) -> None:
    assert world.manager is not None
    regions = world.manager.regions()
    assert sorted(int(r.id) for r in regions) == list(range(1, 15))
    assert sum(r.size for r in regions) == 148 * MiB


@then("regions should be page-aligned")
def page_aligned(world: World) -> None:
    assert world.manager is not None
    regions = world.manager.regions()
    assert all(r.address % PAGE_SIZE == 0 and r.size % PAGE_SIZE == 0 for r in regions)
    assert all(a.end < b.address for a, b in itertools.pairwise(regions))


@given("a loaded dimension")
def a_loaded_dimension(world: World) -> None:
    loaded_manager(world)


@when("I access a layer")
def access_a_layer(world: World) -> None:
    assert world.manager is not None
    world.view = world.manager.access_layer(LayerId(1, 5))


@then("data should be returned immediately")
def returned_immediately(world: World) -> None:
    assert world.manager is not None and world.view is not None
    committed = world.manager.stats().committed
    assert world.view == world.expected[5 * MiB : 6 * MiB]
    assert world.manager.stats().committed == committed


@then("no memory copy should occur")
def no_copy(world: World) -> None:
    assert world.manager is not None and world.view is not None
    assert address_of(world.view) == world.manager.region(1).address + 5 * MiB


@then("access time should be <1ms")
def constant_cost(world: World) -> None:
    manager = world.manager
    assert manager is not None
    layer = LayerId(1, 7)
    manager.access_layer(layer)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        views = [manager.access_layer(layer) for _ in range(100)]
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert len(views) == 100
    assert grown < 100 * 1024  # a 1 MiB copy per access would be 100 MiB


@given("multiple active queries")
def active_queries(world: World) -> None:
    loaded_manager(world)


@when("they access the same dimension")
def access_same_dimension(world: World) -> None:
    manager = world.manager
    assert manager is not None
    world.results = [[] for _ in range(QUERIES)]
    start = threading.Barrier(QUERIES + 1)

    def query(slot: int) -> None:
        try:
            start.wait()
            for n in range(READS_PER_QUERY):
                view = manager.access_layer(LayerId(1, (slot + n) % 16))
                world.results[slot].append(zlib.crc32(view))
        except BaseException as exc:
            world.errors.append(exc)

    threads = [threading.Thread(target=query, args=(slot,)) for slot in range(QUERIES)]
    for thread in threads:
        thread.start()
    start.wait()
    for thread in threads:
        thread.join(timeout=60)


@then("all should succeed")
def all_succeed(world: World) -> None:
    assert not world.errors
    assert [len(r) for r in world.results] == [READS_PER_QUERY] * QUERIES


@then("no data corruption should occur")
def no_corruption(world: World) -> None:
    crc = [zlib.crc32(world.expected[i * MiB : (i + 1) * MiB]) for i in range(16)]
    for slot, results in enumerate(world.results):
        assert results == [crc[(slot + n) % 16] for n in range(READS_PER_QUERY)]


@then("performance should remain consistent")
def readers_never_wait_for_writers(world: World) -> None:
    manager = world.manager
    assert manager is not None
    done = threading.Event()

    def reader() -> None:
        for _ in range(1000):
            manager.access_layer(LayerId(1, 0))
            world.reads_while_locked += 1
        done.set()

    with manager._guard.lock:
        thread = threading.Thread(target=reader)
        thread.start()
        assert done.wait(timeout=60), "a reader waited for the write lock"
    thread.join()
    assert world.reads_while_locked == 1000
