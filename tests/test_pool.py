"""The pool allocator: size classes, coalescing, commit and decommit, quotas, safety."""

from __future__ import annotations

import ctypes
import itertools
import random
import zlib

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

import mmkit
from mmkit import (
    Block,
    BlockInUse,
    InvalidArgument,
    InvalidBlock,
    InvalidState,
    LimitExceeded,
    MemoryConfig,
    MiB,
    MmapManager,
    address_of,
)
from mmkit.memory.pool import ALIGNMENT, RETAINED_BYTES, size_classes
from mmkit.platform import PAGE_SIZE
from tests.conftest import run_python, run_threads, small_config

POOL_PAGES = 512


def pool_config(**overrides: object) -> MemoryConfig:
    return small_config(limit=(9 + POOL_PAGES) * PAGE_SIZE, user_quota=64 * PAGE_SIZE, **overrides)


def pool_region(mgr: MmapManager) -> tuple[int, int]:
    pool = mgr._pool
    assert pool is not None
    return pool._base, pool._capacity


# -- size classes ---------------------------------------------------------------------


def test_size_classes_waste_at_most_a_ninth() -> None:
    classes = size_classes(PAGE_SIZE)
    assert classes == tuple(sorted(set(classes)))
    assert all(c % ALIGNMENT == 0 for c in classes)
    assert classes[-1] < PAGE_SIZE
    for smaller, larger in itertools.pairwise(classes):
        if smaller >= 64:
            assert (larger - smaller - 1) / larger <= 0.25


@pytest.mark.parametrize("page", [4096, 16384, 65536])
def test_size_classes_for_other_page_sizes(page: int) -> None:
    classes = size_classes(page)
    assert classes[-1] < page and classes[-1] >= page * 7 // 8


def test_block_sizes_and_alignment(manager: MmapManager) -> None:
    for nbytes in (1, 15, 16, 17, 64, 65, 100, 1000, PAGE_SIZE - 1, PAGE_SIZE, PAGE_SIZE + 1):
        block = manager.allocate(nbytes)
        assert block.size >= nbytes and block.requested == nbytes
        assert block.address % ALIGNMENT == 0
        if block.size >= PAGE_SIZE:
            assert block.address % PAGE_SIZE == 0 and block.size % PAGE_SIZE == 0
        if nbytes >= 64 and block.size < PAGE_SIZE:
            assert (block.size - nbytes) / block.size <= 0.25
        with block.view as view:
            assert address_of(view) == block.address and view.nbytes == block.size
            assert not view.readonly and view.format == "B"
            assert bytes(view) == bytes(block.size)
            view[:] = b"\xee" * block.size
        manager.free(block)


# -- the limit (the spec's test_memory_limit_enforcement) -------------------------------


def test_memory_limit_enforcement() -> None:
    with MmapManager(pool_config()) as mgr:
        keep = mgr.allocate(100)
        keep.view[:5] = b"hello"
        blocks = []
        with pytest.raises(LimitExceeded) as caught:
            while True:
                blocks.append(mgr.allocate(8 * PAGE_SIZE))
        assert isinstance(caught.value, MemoryError)
        before = mgr.stats()
        with pytest.raises(LimitExceeded) as again:
            mgr.allocate(8 * PAGE_SIZE)
        message = str(again.value)
        assert str(8 * PAGE_SIZE) in message
        assert f"{before.pool_free} bytes free" in message
        assert f"largest free span is {before.pool_largest_free}" in message
        assert mgr.stats() == before
        assert bytes(keep.view[:5]) == b"hello"
        assert mgr.total_allocated() == mgr.config.limit


def test_a_request_larger_than_the_pool(manager: MmapManager) -> None:
    before = manager.stats()
    with pytest.raises(LimitExceeded, match="cannot hold"):
        manager.allocate(1 << 40)
    assert manager.stats() == before


@pytest.mark.parametrize("nbytes", [0, -1, 1.5, "4096", True, None])
def test_bad_sizes(manager: MmapManager, nbytes: object) -> None:
    with pytest.raises(InvalidArgument, match="positive int"):
        manager.allocate(nbytes)  # type: ignore[arg-type]


# -- filling and coalescing --------------------------------------------------------------


@pytest.mark.parametrize("nbytes", [64, 80, 100, 1000, 3000, PAGE_SIZE, 5 * PAGE_SIZE, 8 * MiB])
def test_filling_the_pool_with_one_size(nbytes: int) -> None:
    small = nbytes < 64 * 1024  # a 4 MiB pool holds enough small blocks to measure the ratio
    config = small_config(limit=9 * PAGE_SIZE + 4 * MiB) if small else MemoryConfig()
    with MmapManager(config) as mgr:
        blocks: list[Block] = []
        try:
            while True:
                blocks.append(mgr.allocate(nbytes))
        except LimitExceeded:
            pass
        stats = mgr.stats()
        assert stats.pool_block_bytes / stats.pool_size >= 0.85
        if nbytes >= 64 and nbytes <= size_classes(PAGE_SIZE)[-1]:
            assert nbytes * len(blocks) / stats.pool_size >= 0.85
        for block in blocks:
            mgr.free(block)
        stats = mgr.stats()
        assert stats.pool_free == stats.pool_size == stats.pool_largest_free
        assert stats.fragmentation == 0.0
        assert stats.pool_blocks == 0


def test_random_churn_coalesces_back_to_one_span() -> None:
    rng = random.Random(5)
    with MmapManager(pool_config()) as mgr:
        live: list[Block] = []
        for _ in range(3000):
            if live and rng.random() < 0.45:
                mgr.free(live.pop(rng.randrange(len(live))))
            else:
                try:
                    live.append(
                        mgr.allocate(rng.choice([16, 64, 300, 2000, PAGE_SIZE, 3 * PAGE_SIZE]))
                    )
                except LimitExceeded:
                    mgr.free(live.pop(0))
        for block in live:
            mgr.free(block)
        stats = mgr.stats()
        assert stats.pool_largest_free == stats.pool_size


# -- physical memory ----------------------------------------------------------------


def test_memory_is_committed_on_use_and_given_back() -> None:
    with MmapManager(MemoryConfig()) as mgr:
        assert mgr.stats().pool_committed == 0
        base, capacity = pool_region(mgr)
        blocks = [mgr.allocate(4 * MiB) for _ in range(8)]
        for block in blocks:
            block.view[:] = b"\x01" * block.size
        assert mgr.stats().pool_committed == 32 * MiB
        assert mgr._vm.resident(base, capacity) == 32 * MiB
        for block in blocks:
            mgr.free(block)
        stats = mgr.stats()
        assert stats.pool_committed <= RETAINED_BYTES
        assert mgr._vm.resident(base, capacity) <= RETAINED_BYTES


def test_freed_memory_is_zeroed_before_reuse(manager: MmapManager) -> None:
    for nbytes in (16, 100, 3000, PAGE_SIZE, 3 * PAGE_SIZE):
        first = manager.allocate(nbytes, owner="alice")
        first.view[:] = b"\xa5" * first.size
        address = first.address
        manager.free(first)
        second = manager.allocate(nbytes, owner="bob")
        assert second.address == address
        assert bytes(second.view) == bytes(second.size)
        manager.free(second)


# -- quotas ---------------------------------------------------------------------------


def test_owner_quota() -> None:
    with MmapManager(pool_config()) as mgr:
        quota = mgr.config.user_quota
        first = mgr.allocate(quota // 2, owner="alice")
        second = mgr.allocate(quota // 2, owner="alice")
        before = mgr.stats()
        with pytest.raises(LimitExceeded, match=r"'alice'.*quota of") as caught:
            mgr.allocate(16, owner="alice")
        assert str(quota) in str(caught.value)
        assert mgr.stats() == before
        other = mgr.allocate(quota // 2, owner="bob")
        assert mgr.stats().owners == {"alice": quota, "bob": quota // 2}
        mgr.free(first)
        assert mgr.stats().owners["alice"] == quota // 2
        mgr.free(second)
        mgr.free(other)
        assert dict(mgr.stats().owners) == {}


@pytest.mark.parametrize("owner", ["", 5, b"x"])
def test_bad_owner(manager: MmapManager, owner: object) -> None:
    with pytest.raises(InvalidArgument, match="owner"):
        manager.allocate(16, owner=owner)  # type: ignore[arg-type]


# -- safety -------------------------------------------------------------------------


def test_double_free_and_foreign_blocks(config: MemoryConfig) -> None:
    with MmapManager(config) as mine, MmapManager(config) as theirs:
        block = mine.allocate(100)
        with pytest.raises(InvalidBlock, match="another manager"):
            theirs.free(block)
        mine.free(block)
        with pytest.raises(InvalidBlock, match="already been freed"):
            mine.free(block)
        with pytest.raises(InvalidBlock, match="freed"):
            block.view  # noqa: B018
        with pytest.raises(InvalidBlock, match="Block"):
            mine.free("block")  # type: ignore[arg-type]
        late = mine.allocate(100)
    with pytest.raises(InvalidState, match="closed"):
        mine.free(late)
    with pytest.raises(InvalidState):
        mine.allocate(16)


def test_free_refuses_while_views_are_alive(manager: MmapManager) -> None:
    block = manager.allocate(PAGE_SIZE)
    part = block.view[10:20]
    part[:] = b"0123456789"
    before = manager.stats()
    with pytest.raises(BlockInUse):
        manager.free(block)
    assert manager.stats() == before
    assert bytes(block.view[10:20]) == b"0123456789"
    exported = memoryview(block.view)
    del part
    with pytest.raises(BlockInUse):
        manager.free(block)
    exported.release()
    manager.free(block)
    assert block.freed


def test_each_block_view_is_a_view_of_its_own_that_free_waits_for(
    manager: MmapManager,
) -> None:
    block = manager.allocate(64)
    first, second = block.view, block.view
    assert first is not second and address_of(first) == address_of(second) == block.address
    first[:2] = b"ab"
    assert bytes(second[:2]) == b"ab"
    first.release()
    with pytest.raises(BlockInUse):
        manager.free(block)  # the second view still reaches the block
    del second
    manager.free(block)
    with pytest.raises(InvalidBlock):
        block.view  # noqa: B018


def test_threads_each_with_their_block_views_leave_exact_counts(manager: MmapManager) -> None:
    """On free-threaded CPython one memoryview shared by threads loses its export counts."""
    block = manager.allocate(4096)
    block.view[:] = bytes(range(256)) * 16
    crcs: list[int] = []

    def read(_: int) -> None:
        for _ in range(2000):
            crcs.append(zlib.crc32(block.view[:2048]))

    run_threads(read, 4)
    assert set(crcs) == {zlib.crc32(bytes(range(256)) * 8)}
    pinned = (ctypes.c_char * 16).from_buffer(block.view)
    with pytest.raises(BlockInUse):
        manager.free(block)
    del pinned
    manager.free(block)


def test_block_views_outlive_their_manager() -> None:
    result = run_python(
        """
        import gc, mmkit
        from tests.conftest import small_config
        mgr = mmkit.MmapManager(small_config())
        block = mgr.allocate(3 * 4096)
        view = block.view[4096:]
        small = mgr.allocate(40).view
        mgr.close()
        view[:] = b"\\x07" * len(view)
        small[:4] = b"abcd"
        del mgr, block
        gc.collect()
        assert set(bytes(view)) == {7} and bytes(small[:4]) == b"abcd"
        """
    )
    assert result.returncode == 0, result.stderr


def test_thirty_two_threads_allocating_and_freeing() -> None:
    errors: list[str] = []
    with MmapManager(MemoryConfig()) as mgr:

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            mine: list[tuple[Block, bytes]] = []
            for step in range(300):
                if mine and rng.random() < 0.5:
                    block, stamp = mine.pop(rng.randrange(len(mine)))
                    if bytes(block.view[: len(stamp)]) != stamp or block.view[-1] != stamp[0]:
                        errors.append(f"thread {seed} block {block.address:#x} corrupted")
                    mgr.free(block)
                    continue
                try:
                    block = mgr.allocate(rng.choice([16, 48, 200, 1500, 4096, 20000, 300000]))
                except LimitExceeded:
                    continue
                stamp = f"{seed:02d}{step:04d}".encode()[: block.size]
                if bytes(block.view) != bytes(block.size):
                    errors.append(f"thread {seed} got dirty memory")
                block.view[: len(stamp)] = stamp
                block.view[-1] = stamp[0]
                mine.append((block, stamp))
            for block, _ in mine:
                mgr.free(block)

        run_threads(worker, 32)
        assert not errors
        stats = mgr.stats()
        assert stats.pool_blocks == 0 and stats.pool_largest_free == stats.pool_size


# -- the stateful model -----------------------------------------------------------------


class PoolMachine(RuleBasedStateMachine):
    """The pool against a model of the live blocks and their contents."""

    blocks = Bundle("blocks")

    def __init__(self) -> None:
        super().__init__()
        self.mgr = MmapManager(pool_config())
        self.live: dict[int, tuple[Block, bytes, str | None]] = {}
        self.stamp = 0

    @initialize()
    def start(self) -> None:
        assert self.mgr.stats().pool_used == 0

    @rule(
        target=blocks,
        nbytes=st.one_of(st.integers(1, 600), st.integers(1, 20 * PAGE_SIZE)),
        owner=st.sampled_from([None, "a", "b"]),
    )
    def allocate(self, nbytes: int, owner: str | None) -> object:
        before = self.mgr.stats()
        try:
            block = self.mgr.allocate(nbytes, owner=owner)
        except LimitExceeded:
            assert self.mgr.stats() == before
            return None
        assert bytes(block.view) == bytes(block.size)
        self.stamp += 1
        stamp = self.stamp.to_bytes(4, "little")[: block.size]
        block.view[: len(stamp)] = stamp
        self.live[block.address] = (block, stamp, owner)
        return block

    @rule(block=consumes(blocks))
    def free(self, block: Block | None) -> None:
        if block is None:
            return
        _, stamp, _ = self.live.pop(block.address)
        assert bytes(block.view[: len(stamp)]) == stamp
        self.mgr.free(block)

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def free_twice(self, data: st.DataObject) -> None:
        address = data.draw(st.sampled_from(sorted(self.live)))
        block, _, _ = self.live[address]
        view = block.view[:1]
        before = self.mgr.stats()
        with pytest.raises(BlockInUse):
            self.mgr.free(block)
        assert self.mgr.stats() == before
        view.release()

    @invariant()
    def blocks_are_disjoint_aligned_and_inside(self) -> None:
        base, capacity = pool_region(self.mgr)
        spans = sorted((b.address, b.address + b.size) for b, _, _ in self.live.values())
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start
        for block, _, _ in self.live.values():
            assert base <= block.address and block.address + block.size <= base + capacity
            assert block.address % ALIGNMENT == 0
            if block.size >= PAGE_SIZE:
                assert block.address % PAGE_SIZE == 0

    @invariant()
    def accounting_adds_up(self) -> None:
        stats = self.mgr.stats()
        assert stats.pool_used + stats.pool_free == stats.pool_size
        assert stats.pool_block_bytes == sum(b.size for b, _, _ in self.live.values())
        assert stats.pool_blocks == len(self.live)
        assert stats.pool_committed <= stats.pool_size
        owners: dict[str, int] = {}
        for block, _, owner in self.live.values():
            if owner is not None:
                owners[owner] = owners.get(owner, 0) + block.size
        assert dict(stats.owners) == owners
        assert self.mgr.total_allocated() == self.mgr.config.limit

    def teardown(self) -> None:
        for block, _, _ in list(self.live.values()):
            self.mgr.free(block)
        stats = self.mgr.stats()
        assert stats.pool_largest_free == stats.pool_size
        self.mgr.close()


TestPoolMachine = PoolMachine.TestCase
TestPoolMachine.settings = settings(suppress_health_check=[HealthCheck.too_slow])


def test_block_is_exported() -> None:
    assert mmkit.Block is Block
