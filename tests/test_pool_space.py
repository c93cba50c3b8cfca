"""Free space is usable space: small blocks fit wherever a page is free, and refusals add up."""

from __future__ import annotations

import random

import pytest

from mmkit import Block, DimensionSpec, KiB, LimitExceeded, MemoryConfig, MiB, MmapManager
from mmkit.platform import PAGE_SIZE

POOL = 8 * MiB
SIZES = (16, 100, 700, 3000, PAGE_SIZE, 8 * KiB, 3 * PAGE_SIZE, 40 * KiB, 200 * KiB, 2 * MiB)


def eight_mib_pool() -> MemoryConfig:
    """A budget whose pool is exactly ``POOL``: one page-sized dimension takes the rest."""
    return MemoryConfig(
        limit=POOL + PAGE_SIZE,
        layer_size=PAGE_SIZE,
        dimensions=(DimensionSpec(1, "Tiny", PAGE_SIZE),),
        user_quota=POOL,
    )


def fill(mgr: MmapManager, nbytes: int) -> list[Block]:
    blocks = []
    try:
        while True:
            blocks.append(mgr.allocate(nbytes))
    except LimitExceeded:
        return blocks


def block_sizes() -> dict[int, int]:
    """The block each request size gets, learnt from the public API."""
    sizes = {}
    with MmapManager(eight_mib_pool()) as mgr:
        for nbytes in SIZES:
            block = mgr.allocate(nbytes)
            sizes[nbytes] = block.size
            mgr.free(block)
    return sizes


def test_small_blocks_fit_between_page_blocks() -> None:
    with MmapManager(eight_mib_pool()) as mgr:
        assert mgr.stats().pool_size == POOL
        blocks = fill(mgr, 8 * KiB)
        assert len(blocks) == POOL // (8 * KiB)
        for block in blocks[::2]:
            mgr.free(block)
        stats = mgr.stats()
        assert (stats.pool_free, stats.pool_largest_free) == (POOL // 2, 8 * KiB)
        small = mgr.allocate(16)
        assert bytes(small.view) == bytes(16)
        small.view[:] = b"s" * 16
        more = fill(mgr, 3000)
        stats = mgr.stats()
        assert stats.pool_free == stats.pool_largest_free == 0, "refused while pages were free"
        assert len(more) >= (POOL // 2 - 8 * KiB) // (4 * KiB)
        assert bytes(small.view) == b"s" * 16
        for block in [small, *blocks[1::2], *more]:
            mgr.free(block)
        stats = mgr.stats()
        assert stats.pool_largest_free == stats.pool_size and stats.pool_blocks == 0


@pytest.mark.parametrize("seed", range(4))
def test_refusals_name_figures_that_agree(seed: int) -> None:
    """A request fails only when no free span can hold it, and the message says exactly that.

    The pool starts as holes of one to three pages between page blocks, then churns.
    """
    sizes = block_sizes()
    rng = random.Random(seed)
    refusals = 0
    with MmapManager(eight_mib_pool()) as mgr:
        live: list[Block] = []
        while True:
            try:
                live.append(mgr.allocate(rng.choice(SIZES[4:7])))
            except LimitExceeded:
                break
        for block in live[::2]:
            mgr.free(block)
        del live[::2]
        for _ in range(5):
            while rng.random() > 0.1:
                nbytes = rng.choice(SIZES)
                before = mgr.stats()
                try:
                    live.append(mgr.allocate(nbytes))
                    continue
                except LimitExceeded as exc:
                    message = str(exc)
                refusals += 1
                assert mgr.stats() == before
                size = sizes[nbytes]
                needs = -(-size // PAGE_SIZE) * PAGE_SIZE  # a new slab needs one page
                assert before.pool_largest_free < needs, (
                    f"{message!r} while a span of {needs} bytes was free"
                )
                assert message.startswith(f"the pool cannot hold {nbytes} bytes (")
                assert f"{size}-byte block" in message or f"block of {size} bytes" in message
                assert f"{before.pool_free} bytes free" in message
                assert f"the largest free span is {before.pool_largest_free} bytes" in message
            rng.shuffle(live)
            for block in live[: len(live) // 2]:
                mgr.free(block)
            del live[: len(live) // 2]
    assert refusals > 0
