"""Read-only spans (layer copies) packed at the top of the pool, so they share kernel mappings.

The mapping counts come from each OS's own map (``tests.osprobe.mapping_count``): Linux
merges neighbouring mappings of equal protection (what ``vm.max_map_count`` counts), and
Windows lists a run of pages with one state and protection as one region. macOS merges
neighbouring map entries only while they share one VM object, which pages written one span
at a time do not, so the counts are not checked there.
"""

from __future__ import annotations

import ctypes
import itertools

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from mmkit import DimensionSpec, LayerId, LimitExceeded, MemoryConfig, MiB, MmapManager
from mmkit.platform import BACKEND, PAGE_SIZE, Protection
from tests import markers
from tests.osprobe import mapping_count

COPIES = 3000


def copies_config(layers: int) -> MemoryConfig:
    """One dimension of page-sized layers, and a pool for a copy and a block per layer."""
    return MemoryConfig(
        limit=3 * layers * PAGE_SIZE + 16 * MiB,
        layer_size=PAGE_SIZE,
        dimensions=(DimensionSpec(1, "Pages", layers * PAGE_SIZE),),
        user_quota=0,
    )


@markers.merged_neighbours
def test_layer_copies_share_mappings_with_blocks_between_them() -> None:
    with MmapManager(copies_config(COPIES)) as mgr:
        mgr.load_dimension(1)
        mgr.access_layer(LayerId(1, 0))
        blocks = [mgr.allocate(PAGE_SIZE)]
        before = mapping_count()
        for index in range(COPIES):
            mgr.update_layer(LayerId(1, index), index.to_bytes(4, "little") * (PAGE_SIZE // 4))
            blocks.append(mgr.allocate(PAGE_SIZE))
        grown = mapping_count() - before
        stats = mgr.stats()
        assert stats.layer_copies == COPIES
        assert grown < COPIES // 50, f"{COPIES} live copies took {grown} more mappings"
        assert bytes(mgr.access_layer(LayerId(1, 7))[:4]) == (7).to_bytes(4, "little")
        for block in blocks:
            assert bytes(block.view) == bytes(PAGE_SIZE)
            mgr.free(block)


class Pool:
    """A ``PoolAllocator`` on a reservation of its own."""

    def __init__(self, pages: int) -> None:
        # Imported here, so the public-API test above runs on releases with another layout.
        from mmkit.memory.pool import PoolAllocator
        from mmkit.memory.region import Reservation

        self.reservation = Reservation(BACKEND, (pages + 2) * PAGE_SIZE, 0)
        self.base = self.reservation.address + PAGE_SIZE
        self.capacity = pages * PAGE_SIZE
        self.pool = PoolAllocator(BACKEND, self.base, self.capacity)

    def copy(self, nbytes: int, fill: int) -> tuple[int, int]:
        """What the manager does for a layer copy: a read-only span, written, then protected."""
        address, size = self.pool.allocate_readonly(nbytes)
        ctypes.memset(address, fill, nbytes)
        BACKEND.protect(address, size, Protection.READ)
        return address, size

    def drop(self, address: int, size: int) -> None:
        """What the manager does for a retired copy: writable again, then freed."""
        BACKEND.protect(address, size, Protection.READ_WRITE)
        self.pool.free(address)


@markers.merged_neighbours
def test_read_only_spans_share_one_mapping_among_ordinary_blocks() -> None:
    pool = Pool(4 * COPIES)
    before = mapping_count()
    spans = []
    for index in range(COPIES):
        pool.pool.allocate(PAGE_SIZE if index % 2 else 100)
        spans.append(pool.copy(PAGE_SIZE, index % 251))
    grown = mapping_count() - before
    assert grown < COPIES // 50, f"{COPIES} read-only spans took {grown} more mappings"
    for address, size in spans:
        pool.drop(address, size)
    assert mapping_count() - before < COPIES // 50


def test_read_only_spans_come_from_the_top_and_blocks_from_the_bottom() -> None:
    pool = Pool(64)
    top = pool.base + pool.capacity
    first = pool.copy(3 * PAGE_SIZE, 1)
    second = pool.copy(PAGE_SIZE + 1, 2)
    block, _ = pool.pool.allocate(2 * PAGE_SIZE)
    assert first == (top - 3 * PAGE_SIZE, 3 * PAGE_SIZE)
    assert second == (top - 5 * PAGE_SIZE, 2 * PAGE_SIZE)
    assert block == pool.base
    pool.drop(*first)
    third = pool.copy(2 * PAGE_SIZE, 3)
    assert third[0] == top - 2 * PAGE_SIZE, "the highest free run that fits, from its top"
    assert ctypes.string_at(third[0], 2 * PAGE_SIZE) == b"\x03" * (2 * PAGE_SIZE)


def test_freed_read_only_spans_skip_the_quick_lists() -> None:
    pool = Pool(64)
    spans = [pool.copy(count * PAGE_SIZE, count) for count in (1, 2, 3, 4)]
    for address, size in spans:
        pool.drop(address, size)
    assert not any(pool.pool._quick), "read-only spans must not be reused as ordinary blocks"
    stats = pool.pool.stats()
    assert stats.largest_free == stats.free == pool.capacity and stats.blocks == 0


def test_a_rolled_back_read_only_span_leaves_the_pool_as_it_was() -> None:
    pool = Pool(64)
    pool.pool.allocate(PAGE_SIZE)
    before = pool.pool.stats()
    address, _ = pool.pool.allocate_readonly(5 * PAGE_SIZE)
    assert pool.pool.stats().committed == before.committed + 5 * PAGE_SIZE
    pool.pool.rollback(address)
    assert pool.pool.stats() == before
    assert pool.pool.allocate_readonly(5 * PAGE_SIZE)[0] == address


def test_read_only_requests_that_do_not_fit() -> None:
    pool = Pool(16)
    pool.copy(12 * PAGE_SIZE, 1)
    pool.pool.allocate(PAGE_SIZE)
    before = pool.pool.stats()
    asked = 4 * PAGE_SIZE
    refusal = rf"cannot hold {asked} bytes \(a block of {asked} bytes\)"
    with pytest.raises(LimitExceeded, match=refusal):
        pool.pool.allocate_readonly(4 * PAGE_SIZE)
    assert pool.pool.stats() == before
    with pytest.raises(ValueError, match="positive"):
        pool.pool.allocate_readonly(0)


class ReadOnlyMachine(RuleBasedStateMachine):
    """Ordinary blocks and read-only spans in one pool, against a model of their contents."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = Pool(96)
        self.live: dict[int, tuple[int, int, bool]] = {}
        self.fill = itertools.count(1)

    @rule(nbytes=st.one_of(st.integers(1, 600), st.integers(1, 12 * PAGE_SIZE)), ro=st.booleans())
    def allocate(self, nbytes: int, ro: bool) -> None:
        pool = self.pool.pool
        before = pool.stats()
        try:
            if ro:
                address, size = pool.allocate_readonly(nbytes)
            else:
                address, size = pool.allocate(nbytes)
        except LimitExceeded:
            assert pool.stats() == before
            return
        assert ctypes.string_at(address, size) == bytes(size)
        fill = next(self.fill) % 255 + 1
        ctypes.memset(address, fill, size)
        if ro:
            BACKEND.protect(address, size, Protection.READ)
        self.live[address] = (size, fill, ro)

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        address = data.draw(st.sampled_from(sorted(self.live)))
        size, fill, ro = self.live.pop(address)
        assert ctypes.string_at(address, size) == bytes([fill]) * size
        if ro:
            BACKEND.protect(address, size, Protection.READ_WRITE)
        self.pool.pool.free(address)

    @rule(nbytes=st.integers(1, 6 * PAGE_SIZE), ro=st.booleans())
    def roll_back(self, nbytes: int, ro: bool) -> None:
        pool = self.pool.pool
        before = pool.stats()
        try:
            address, _ = pool.allocate_readonly(nbytes) if ro else pool.allocate(nbytes)
        except LimitExceeded:
            return
        pool.rollback(address)
        assert pool.stats() == before

    @invariant()
    def spans_are_disjoint_inside_and_counted(self) -> None:
        spans = sorted((a, a + size) for a, (size, _, _) in self.live.items())
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start
        for address, (size, _, ro) in self.live.items():
            assert (
                self.pool.base <= address and address + size <= self.pool.base + self.pool.capacity
            )
            if ro:
                assert address % PAGE_SIZE == 0 and size % PAGE_SIZE == 0
        stats = self.pool.pool.stats()
        assert stats.used + stats.free == stats.capacity
        assert stats.blocks == len(self.live)
        assert stats.block_bytes == sum(size for size, _, _ in self.live.values())

    def teardown(self) -> None:
        for address, (size, _, ro) in list(self.live.items()):
            if ro:
                BACKEND.protect(address, size, Protection.READ_WRITE)
            self.pool.pool.free(address)
        stats = self.pool.pool.stats()
        assert stats.largest_free == stats.capacity


TestReadOnlyMachine = ReadOnlyMachine.TestCase
TestReadOnlyMachine.settings = settings(suppress_health_check=[HealthCheck.too_slow])
