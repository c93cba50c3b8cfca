"""A failed decommit leaves a span in an unknown state: the pool settles it before any use.

The OS may fail a decommit part way, leaving the span still committed or already
inaccessible. ``TornDecommit`` fails decommits that way on cue; the pool must never hand
such a span out until a later decommit of it succeeds. The scenarios run in a subprocess
because handing one out (the bug) crashes the process that touches it.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import tempfile

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from mmkit import LimitExceeded, MiB, OutOfMemory
from mmkit.memory.commit import COMMITTED, UNSETTLED, runs_of
from mmkit.memory.pool import PoolAllocator
from mmkit.memory.region import Reservation
from mmkit.platform import BACKEND, PAGE_SIZE, PlatformError, Protection, VirtualMemory
from tests.conftest import run_python
from tests.faults import FaultyMemory


def refused(call: str, address: int, size: int) -> PlatformError:
    code = errno.ENOMEM
    return PlatformError(call, f"{address:#x}, {size}", code, os.strerror(code), exhausted=True)


class TornDecommit(FaultyMemory):
    """Its next ``torn`` decommits make the span inaccessible, then report failure.

    With ``refuse_read_only`` set, the next protect to read-only fails (and does nothing).
    """

    def __init__(self, inner: VirtualMemory) -> None:
        super().__init__(inner)
        self.torn = 0
        self.refuse_read_only = False

    def decommit(self, address: int, size: int) -> None:
        if self.torn <= 0:
            super().decommit(address, size)
            return
        self.torn -= 1
        self.inner.protect(address, size, Protection.NONE)
        raise refused("decommit", address, size)

    def protect(self, address: int, size: int, protection: Protection) -> None:
        if self.refuse_read_only and protection is Protection.READ:
            self.refuse_read_only = False
            raise refused("protect", address, size)
        super().protect(address, size, protection)


PRELUDE = """
import mmkit
from mmkit import LayerId, MemoryConfig, MiB
from mmkit.platform import BACKEND, PAGE_SIZE
from tests.conftest import small_config
from tests.test_pool_decommit import TornDecommit

vm = TornDecommit(BACKEND)
"""


def scenario(code: str) -> None:
    result = run_python(PRELUDE + code)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-3000:]}"
    assert result.stdout.strip().endswith("ok"), result.stdout


def test_a_span_whose_trim_failed_is_settled_before_it_is_handed_out() -> None:
    scenario(
        """
mgr = mmkit.MmapManager(MemoryConfig(), backend=vm)
block = mgr.allocate(12 * MiB)
block.view[:] = b"\\xab" * block.size
address = block.address
vm.torn = 2  # the trim after the free, and the retry before the next allocation
mgr.free(block)
assert vm.torn == 1, "the free should have trimmed"
again = mgr.allocate(12 * MiB)
assert again.address == address
assert bytes(again.view) == bytes(again.size)
again.view[:] = b"\\xcd" * again.size
assert vm.torn == 0, "the pool should have decommitted it again before use"
vm.torn = 2  # the trim, and the retry that stats() makes
mgr.free(again)
assert mgr.stats().pool_committed == 0, "a span whose decommit failed counted as committed"
mgr.close()
print("ok")
"""
    )


def test_a_span_whose_rollback_failed_is_settled_before_it_is_handed_out() -> None:
    scenario(
        """
mgr = mmkit.MmapManager(small_config(), backend=vm)
mgr.load_dimension(1)
vm.torn = 2  # the rollback's decommit, and the retry before the next allocation
vm.refuse_read_only = True  # the update's last step, after the copy was committed
try:
    mgr.update_layer(LayerId(1, 0), b"\\x07" * PAGE_SIZE)
except mmkit.OutOfMemory:
    pass
else:
    raise AssertionError("the update should have failed")
assert vm.torn == 1, "the rollback should have decommitted"
block = mgr.allocate(PAGE_SIZE)
assert vm.torn == 0
assert bytes(block.view) == bytes(PAGE_SIZE)
block.view[:] = b"\\x01" * PAGE_SIZE
mgr.update_layer(LayerId(1, 0), b"\\x07" * PAGE_SIZE)
assert bytes(mgr.access_layer(LayerId(1, 0))) == b"\\x07" * PAGE_SIZE
mgr.close()
print("ok")
"""
    )


def test_an_allocation_that_cannot_settle_its_span_fails_cleanly() -> None:
    scenario(
        """
from dataclasses import replace
mgr = mmkit.MmapManager(MemoryConfig(), backend=vm)
block = mgr.allocate(12 * MiB)
vm.torn = 10**6  # every decommit from now on
mgr.free(block)
before = replace(mgr.stats(), owners={})
try:
    mgr.allocate(12 * MiB)
except mmkit.OutOfMemory as exc:
    assert "of pool" in str(exc) and "decommit" in str(exc), str(exc)
else:
    raise AssertionError("handed out a span whose decommit failed")
assert replace(mgr.stats(), owners={}) == before
vm.torn = 0
again = mgr.allocate(12 * MiB)
assert bytes(again.view) == bytes(again.size)
again.view[:] = b"\\x02" * again.size
mgr.close()
print("ok")
"""
    )


def readable_zeros_and_writable(address: int, size: int) -> bool:
    """Whether a span reads as zeros and takes writes, copied through a file by the OS.

    So an inaccessible span fails with ``OSError`` here instead of crashing the tests.
    """
    view = (ctypes.c_char * size).from_address(address)
    with tempfile.TemporaryFile(buffering=0) as file:
        try:
            if file.write(memoryview(view)) != size:
                return False
            file.seek(0)
            if file.read() != bytes(size):
                return False
            file.seek(0)
            return file.readinto(memoryview(view)) == size
        except OSError:
            return False


class TornPool:
    """A ``PoolAllocator`` on a reservation of its own, over a ``TornDecommit`` backend."""

    def __init__(self, pages: int) -> None:
        self.vm = TornDecommit(BACKEND)
        self.reservation = Reservation(BACKEND, (pages + 2) * PAGE_SIZE, 0)
        self.base = self.reservation.address + PAGE_SIZE
        self.capacity = pages * PAGE_SIZE
        self.pool = PoolAllocator(self.vm, self.base, self.capacity)


class TornDecommitMachine(RuleBasedStateMachine):
    """Allocations, frees and rollbacks while decommits fail half done: what is handed out
    always reads as zeros and takes writes, and the accounting never counts unknown pages.
    """

    def __init__(self) -> None:
        super().__init__()
        self.torn = TornPool(24 * MiB // PAGE_SIZE)
        self.live: dict[int, tuple[int, int]] = {}
        self.stamp = itertools.count(1)

    @rule(nbytes=st.one_of(st.integers(1, 3000), st.integers(1, 6 * MiB)), ro=st.booleans())
    def allocate(self, nbytes: int, ro: bool) -> None:
        pool = self.torn.pool
        before = pool.stats()
        try:
            address, size = pool.allocate_readonly(nbytes) if ro else pool.allocate(nbytes)
        except (LimitExceeded, OutOfMemory):
            assert pool.stats() == before
            return
        if not readable_zeros_and_writable(address, size):
            self.live[address] = (size, -1)
            raise AssertionError(f"handed out {size} bytes at {address:#x} unusable")
        stamp = next(self.stamp) % 255 + 1
        ctypes.memset(address, stamp, size)
        self.live[address] = (size, stamp)

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        address = data.draw(st.sampled_from(sorted(self.live)))
        size, stamp = self.live.pop(address)
        assert ctypes.string_at(address, size) == bytes([stamp]) * size
        self.torn.pool.free(address)

    @rule(nbytes=st.integers(1, 6 * MiB), ro=st.booleans())
    def roll_back(self, nbytes: int, ro: bool) -> None:
        pool = self.torn.pool
        before = pool.stats()
        try:
            address, _ = pool.allocate_readonly(nbytes) if ro else pool.allocate(nbytes)
        except (LimitExceeded, OutOfMemory):
            return
        pool.rollback(address)
        assert pool.stats() == before

    @rule(count=st.integers(0, 3))
    def tear(self, count: int) -> None:
        self.torn.vm.torn = count

    @rule()
    def retry(self) -> None:
        self.torn.pool.retry()

    @invariant()
    def unknown_pages_are_free_and_not_counted(self) -> None:
        pool = self.torn.pool
        state = pool._commits.state
        assert pool._commits.committed == state.count(COMMITTED)
        assert pool._commits.unsettled == state.count(UNSETTLED)
        assert pool.pending == (UNSETTLED in state)
        for start, end in runs_of(state, (UNSETTLED,)):
            assert pool._runs.contains(start, end - start), f"unsettled pages at {start} in use"
        stats = pool.stats()
        assert stats.used + stats.free == stats.capacity
        assert stats.blocks == len(self.live)
        assert stats.block_bytes == sum(size for size, _ in self.live.values())

    def teardown(self) -> None:
        self.torn.vm.torn = 0
        for address, (_, stamp) in list(self.live.items()):
            if stamp > 0:
                self.torn.pool.free(address)


TestTornDecommitMachine = TornDecommitMachine.TestCase
TestTornDecommitMachine.settings = settings(suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("where", ["trim", "rollback"])
def test_retry_settles_what_a_failed_decommit_left(where: str) -> None:
    torn = TornPool(24 * MiB // PAGE_SIZE)
    pool = torn.pool
    if where == "trim":
        address, _ = pool.allocate(12 * MiB)
        torn.vm.torn = 1
        pool.free(address)
    else:
        address, _ = pool.allocate_readonly(3 * PAGE_SIZE)
        torn.vm.torn = 1
        pool.rollback(address)
    assert pool.pending and torn.vm.torn == 0
    assert pool.stats().committed == 0
    pool.retry()
    assert not pool.pending
    assert pool.committed_spans() == []
