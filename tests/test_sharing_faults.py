"""Every injected failure of a system call in sharing leaves owner and readers as they were.

The N-th call an operation makes (memory calls and sharing calls, counted together) fails,
once and from then on, for N = 1, 2, … until the operation makes no more calls: it must raise
an ``MmkitError``, and the owner, and what a reader attached beforehand reads, must be exactly
as before; attaching must leave no descriptor and no mapping behind.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace

import pytest

import mmkit
from mmkit import LayerId, MmapManager, MmkitError
from mmkit.platform import BACKEND, PAGE_SIZE, SHARING
from tests import markers
from tests.faults import FaultyMemory, FaultySharing
from tests.osprobe import address_space_bytes, open_handles
from tests.test_sharing import shared_config, stamp

pytestmark = markers.sharing

Operation = Callable[[MmapManager], object]


def setup(vm: FaultyMemory) -> MmapManager:
    """An owner with a layer in a spare layer, one moved back home, a dimension evictable."""
    assert SHARING is not None
    mgr = MmapManager(shared_config(), backend=vm, sharing=FaultySharing(SHARING, vm))
    mgr.load_dimension(1)  # zeros: can be dropped and loaded again
    mgr.load_dimension(2, stamp(LayerId(2, 0), 0) + stamp(LayerId(2, 1), 0))
    mgr.update_layer(LayerId(2, 1), stamp(LayerId(2, 1), 1))
    mgr.update_layer(LayerId(1, 3), stamp(LayerId(1, 3), 1))
    mgr.update_layer(LayerId(1, 3), stamp(LayerId(1, 3), 2))  # back in its home
    mgr.access_layer(LayerId(1, 0)).release()
    return mgr


def seen(mgr: MmapManager, reader: mmkit.SharedReader) -> tuple[object, ...]:
    """What the owner's caller and a reader can see, but physical residency: a failed call
    whose clean-up fails too (from then on) leaves a page it wrote resident until retried."""
    stats = mgr.stats()
    layers = [LayerId(d, i) for d in stats.loaded for i in range(mgr.config.layer_count(d))]
    owner = tuple(bytes(mgr.access_layer(layer)) for layer in layers)
    shared = tuple(bytes(reader.access_layer(layer)) for layer in layers)
    logical = replace(
        stats,
        owners=dict(stats.owners),
        resident=0,
        data_resident=0,
        dimensions=tuple(replace(d, resident=0) for d in stats.dimensions),
    )
    return logical, owner, shared, reader.stats().loaded


OPERATIONS: dict[str, Operation] = {
    "load": lambda m: m.load_dimension(3, b"\x03" * (3 * PAGE_SIZE)),
    "update into a spare layer": lambda m: m.update_layer(LayerId(1, 1), b"\x09" * PAGE_SIZE),
    "update back home": lambda m: m.update_layer(LayerId(2, 1), b"\x08" * PAGE_SIZE),
    "evict": lambda m: m.evict(1),
    "share": lambda m: m.share(),
    "close": lambda m: m.close(),
}


@pytest.mark.parametrize("persistent", [False, True], ids=["once", "from-then-on"])
@pytest.mark.parametrize("name", list(OPERATIONS))
def test_a_failed_call_leaves_owner_and_readers_as_they_were(name: str, persistent: bool) -> None:
    operation = OPERATIONS[name]
    failures = 0
    for n in range(1, 60):
        vm = FaultyMemory(BACKEND)
        mgr = setup(vm)
        with mmkit.attach(mgr.share()) as reader:
            seen(mgr, reader)  # the reader's first reads of zeros make them resident
            before = seen(mgr, reader)
            vm.fail_at(n, persistent=persistent)
            try:
                operation(mgr)
            except MmkitError:
                vm.fail_at(None)
                failures += 1
                assert seen(mgr, reader) == before, f"{name}: call {n} failed and changed things"
                operation(mgr)  # and works once the OS does again
            else:
                vm.fail_at(None)
                if vm.calls < n:
                    mgr.close()
                    break
        mgr.close()
    else:
        raise AssertionError(f"{name} made more than 60 calls")
    if name in ("load", "update into a spare layer", "update back home"):
        assert failures > 0, f"no injected failure reached {name}"


def arena_mappings() -> int:
    """Mappings of shared memory objects this process has (Linux: by name; else 0)."""
    if not sys.platform.startswith("linux"):
        return 0
    with open("/proc/self/maps") as maps:
        return sum("mmkit-arena" in line or "/dev/shm/mmkit-" in line for line in maps)


@pytest.mark.parametrize("persistent", [False, True], ids=["once", "from-then-on"])
def test_a_failed_attach_leaves_nothing(persistent: bool) -> None:
    assert SHARING is not None
    with MmapManager(shared_config()) as mgr:
        mgr.load_dimension(2, stamp(LayerId(2, 0), 0) * 2)
        handle = mgr.share()
        refused = 0
        for n in range(1, 60):
            clock = FaultyMemory(BACKEND)
            space, fds, arena = address_space_bytes(), open_handles(), arena_mappings()
            clock.fail_at(n, persistent=persistent)
            try:
                reader = mmkit.attach(handle, sharing=FaultySharing(SHARING, clock))
            except mmkit.AttachError:
                refused += 1
            else:
                clock.fail_at(None)
                reader.close()
                if clock.calls < n:
                    break
            # The interpreter's own heap may grow a little meanwhile (3.13t's allocator, on
            # another thread); what attach maps is the arena, by name, and a reservation of
            # the whole layout (12 MiB here), which no such growth comes near.
            grown = address_space_bytes() - space
            assert grown < 1 << 20, f"call {n} leaked {grown} bytes of address space"
            assert (open_handles(), arena_mappings()) == (fds, arena), f"call {n} leaked"
        else:
            raise AssertionError("attach made more than 60 calls")
        assert refused >= 5


def test_a_failed_read_leaves_the_reader_working() -> None:
    assert SHARING is not None
    with MmapManager(shared_config()) as mgr:
        mgr.load_dimension(2, stamp(LayerId(2, 0), 0) + stamp(LayerId(2, 1), 0))
        clock = FaultyMemory(BACKEND)
        with mmkit.attach(mgr.share(), sharing=FaultySharing(SHARING, clock)) as reader:
            failed = 0
            for n in range(1, 20):
                mgr.update_layer(LayerId(2, 1), stamp(LayerId(2, 1), n))  # a table to copy
                clock.fail_at(n)
                try:
                    view = reader.access_layer(LayerId(2, 1))
                except MmkitError:
                    failed += 1
                else:
                    view.release()
                clock.fail_at(None)
                assert bytes(reader.access_layer(LayerId(2, 1))) == stamp(LayerId(2, 1), n)
            assert failed > 0
