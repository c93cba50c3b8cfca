"""The manager against a plain-Python model, one public call at a time.

The rules are the public operations, good and bad; after every step the invariants of
``specs/state-machine.md`` are checked against the real manager, the OS included.
"""

from __future__ import annotations

import contextlib
import itertools
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

import mmkit
from mmkit import Block, LayerId, ManagerState, MmapManager
from mmkit.memory.pool import ALIGNMENT
from mmkit.platform import PAGE_SIZE
from tests.conftest import small_config
from tests.osprobe import mapped_bytes_in

CONFIG = small_config(limit=9 * PAGE_SIZE + 16 * PAGE_SIZE, user_quota=8 * PAGE_SIZE)
SPECS = {int(spec.id): spec for spec in CONFIG.dimensions}
LAYERS = {d: spec.size // PAGE_SIZE for d, spec in SPECS.items()}
ORDER = [ManagerState.ALLOCATED, ManagerState.LOADED, ManagerState.ACTIVE, ManagerState.CLOSED]
DATA_DIR = Path(tempfile.mkdtemp(prefix="mmkit-model-"))
FILES = {int(d): p for d, p in mmkit.generate_dataset(DATA_DIR, CONFIG, seed=11).items()}

dimensions = st.sampled_from(sorted(SPECS))
any_dimension = st.integers(-2, 6)


def file_bytes(dimension: int) -> bytes:
    return FILES[dimension].read_bytes()[-SPECS[dimension].size :]


@dataclass
class Dimension:
    """The model of one dimension: its bytes, where they came from, whether they changed."""

    layers: list[bytes]
    reloadable: bool
    loaded: bool = True


@dataclass
class Model:
    state: ManagerState = ManagerState.ALLOCATED
    dims: dict[int, Dimension] = field(default_factory=dict)
    blocks: dict[int, tuple[Block, bytes]] = field(default_factory=dict)


class ManagerMachine(RuleBasedStateMachine):
    blocks = Bundle("blocks")

    def __init__(self) -> None:
        super().__init__()
        self.mgr = MmapManager(CONFIG)
        self.model = Model()
        self.span = (
            self.mgr.region(1).address - self.mgr._layout.alignment,
            self.mgr.stats().reserved,
        )
        self.counter = itertools.count(1)
        self.saved = Path(tempfile.mkdtemp(prefix="mmkit-saved-"))

    # -- helpers ------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.model.state is ManagerState.CLOSED

    def unchanged(self, call: object, error: type[BaseException]) -> None:
        """``call`` must raise ``error`` and leave everything observable as it was."""
        before = self.snapshot()
        with pytest.raises(error):
            call()  # type: ignore[operator]
        assert self.snapshot() == before

    def snapshot(self) -> object:
        stats = self.mgr.stats()
        return (stats.state, stats.loaded, stats.committed, stats.data, stats.pool_used,
                stats.pool_blocks, dict(stats.owners), stats.layer_copies)  # fmt: skip

    def advance(self, state: ManagerState) -> None:
        if ORDER.index(state) > ORDER.index(self.model.state):
            self.model.state = state

    def load(self, dimension: int, source: object, layers: list[bytes], reloadable: bool) -> None:
        if self.closed:
            self.unchanged(lambda: self.mgr.load_dimension(dimension, source), mmkit.InvalidState)
            return
        current = self.model.dims.get(dimension)
        if current is not None and current.loaded:
            self.unchanged(lambda: self.mgr.load_dimension(dimension, source), mmkit.AlreadyLoaded)
            return
        self.mgr.load_dimension(dimension, source)
        self.model.dims[dimension] = Dimension(layers, reloadable)
        self.advance(ManagerState.LOADED)

    # -- loading ----------------------------------------------------------------------

    @rule(dimension=dimensions, fill=st.integers(0, 255))
    def load_bytes(self, dimension: int, fill: int) -> None:
        layers = [bytes([fill, dimension]) * (PAGE_SIZE // 2)] * LAYERS[dimension]
        self.load(dimension, b"".join(layers), layers, reloadable=False)

    @rule(dimension=dimensions)
    def load_file(self, dimension: int) -> None:
        data = file_bytes(dimension)
        layers = [data[i * PAGE_SIZE : (i + 1) * PAGE_SIZE] for i in range(LAYERS[dimension])]
        self.load(dimension, FILES[dimension], layers, reloadable=True)

    @rule(dimension=dimensions)
    def load_nothing(self, dimension: int) -> None:
        self.load(dimension, None, [bytes(PAGE_SIZE)] * LAYERS[dimension], reloadable=True)

    @rule(dimension=dimensions, size=st.sampled_from([0, 1, PAGE_SIZE, 100 * PAGE_SIZE]))
    def load_wrong_size(self, dimension: int, size: int) -> None:
        if size == SPECS[dimension].size:
            return
        error = mmkit.InvalidState if self.closed else mmkit.InvalidSource
        if not self.closed and dimension in self.model.dims and self.model.dims[dimension].loaded:
            error = mmkit.AlreadyLoaded
        self.unchanged(lambda: self.mgr.load_dimension(dimension, bytes(size)), error)

    @rule(dimension=any_dimension)
    def load_bad_id(self, dimension: int) -> None:
        if dimension in SPECS:
            return
        error = mmkit.InvalidId if dimension < 1 else mmkit.UnknownDimension
        if self.closed:
            error = mmkit.InvalidState
        self.unchanged(lambda: self.mgr.load_dimension(dimension), error)

    # -- reading and writing --------------------------------------------------------------

    @rule(dimension=dimensions, data=st.data())
    def access(self, dimension: int, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, LAYERS[dimension] - 1))
        layer = LayerId(dimension, index)
        if self.closed:
            self.unchanged(lambda: self.mgr.access_layer(layer), mmkit.InvalidState)
            return
        model = self.model.dims.get(dimension)
        if model is None:
            self.unchanged(lambda: self.mgr.access_layer(layer), mmkit.NotLoaded)
            return
        view = self.mgr.access_layer(layer)
        assert bytes(view) == model.layers[index]
        assert view.readonly
        view.release()
        model.loaded = True
        self.advance(ManagerState.ACTIVE)

    @rule(dimension=dimensions, index=st.integers(-1, 5))
    def access_out_of_range(self, dimension: int, index: int) -> None:
        if 0 <= index < LAYERS[dimension]:
            return
        error: type[BaseException] = mmkit.LayerOutOfRange if index >= 0 else mmkit.InvalidId
        if self.closed and index >= 0:
            error = mmkit.InvalidState
        self.unchanged(lambda: self.mgr.access_layer(LayerId(dimension, index)), error)

    @rule(dimension=dimensions, data=st.data(), fill=st.integers(0, 255))
    def update(self, dimension: int, data: st.DataObject, fill: int) -> None:
        index = data.draw(st.integers(0, LAYERS[dimension] - 1))
        new = bytes([fill]) * PAGE_SIZE
        call = lambda: self.mgr.update_layer(LayerId(dimension, index), new)  # noqa: E731
        if self.closed:
            self.unchanged(call, mmkit.InvalidState)
            return
        model = self.model.dims.get(dimension)
        if model is None:
            self.unchanged(call, mmkit.NotLoaded)
            return
        try:
            call()
        except mmkit.LimitExceeded:
            return
        model.layers[index] = new
        model.loaded = True
        model.reloadable = False

    @rule(dimension=dimensions)
    def update_wrong_size(self, dimension: int) -> None:
        error = mmkit.InvalidState if self.closed else mmkit.InvalidSource
        self.unchanged(
            lambda: self.mgr.update_layer(LayerId(dimension, 0), b"x" * (PAGE_SIZE + 1)), error
        )

    @rule(dimension=dimensions)
    def evict(self, dimension: int) -> None:
        if self.closed:
            self.unchanged(lambda: self.mgr.evict(dimension), mmkit.InvalidState)
            return
        model = self.model.dims.get(dimension)
        expected = model is not None and model.loaded and model.reloadable
        assert self.mgr.evict(dimension) is expected
        if expected:
            assert model is not None
            model.loaded = False

    @rule(dimension=dimensions)
    def save(self, dimension: int) -> None:
        path = self.saved / f"{dimension}-{next(self.counter)}.mmkd"
        if self.closed:
            self.unchanged(lambda: self.mgr.save_dimension(dimension, path), mmkit.InvalidState)
            return
        model = self.model.dims.get(dimension)
        if model is None:
            self.unchanged(lambda: self.mgr.save_dimension(dimension, path), mmkit.NotLoaded)
            return
        self.mgr.save_dimension(dimension, path)
        model.reloadable = True
        model.loaded = True

    # -- the pool -----------------------------------------------------------------------

    @rule(target=blocks, size=st.integers(1, 3 * PAGE_SIZE), owner=st.sampled_from([None, "u"]))
    def allocate(self, size: int, owner: str | None) -> object:
        if self.closed:
            self.unchanged(lambda: self.mgr.allocate(size), mmkit.InvalidState)
            return None
        try:
            block = self.mgr.allocate(size, owner=owner)
        except mmkit.LimitExceeded:
            return None
        stamp = next(self.counter).to_bytes(4, "little")[: block.size]
        block.view[: len(stamp)] = stamp
        self.model.blocks[block.address] = (block, stamp)
        return block

    @rule(block=consumes(blocks))
    def free(self, block: Block | None) -> None:
        if block is None:
            return
        if self.closed:
            self.unchanged(lambda: self.mgr.free(block), mmkit.InvalidState)
            return
        _, stamp = self.model.blocks.pop(block.address)
        assert bytes(block.view[: len(stamp)]) == stamp
        self.mgr.free(block)
        self.unchanged(lambda: self.mgr.free(block), mmkit.InvalidBlock)

    @rule(size=st.sampled_from([0, -1, 10**12]))
    def allocate_bad(self, size: int) -> None:
        error: type[BaseException] = mmkit.InvalidArgument if size <= 0 else mmkit.LimitExceeded
        if self.closed and size > 0:
            error = mmkit.InvalidState
        self.unchanged(lambda: self.mgr.allocate(size), error)

    # -- closing ------------------------------------------------------------------------

    @precondition(lambda self: not self.closed)
    @rule()
    def close(self) -> None:
        for block, _ in self.model.blocks.values():
            block.view.release()
        self.mgr.close()
        self.model.state = ManagerState.CLOSED

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def state_follows_the_spec(self) -> None:
        assert self.mgr.state is self.model.state

    @invariant()
    def regions_and_blocks_are_aligned_and_apart(self) -> None:
        if self.closed:
            assert self.mgr.total_allocated() == 0
            assert self.mgr.stats().committed == 0
            return
        spans = [(r.address, r.end) for r in self.mgr.regions()]
        assert all(start % PAGE_SIZE == 0 for start, _ in spans)
        for block, _ in self.model.blocks.values():
            assert block.address % ALIGNMENT == 0
            if block.size >= PAGE_SIZE:
                assert block.address % PAGE_SIZE == 0
            spans.append((block.address, block.address + block.size))
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start

    @invariant()
    def the_budget_holds(self) -> None:
        if self.closed:
            return
        stats = self.mgr.stats()
        assert self.mgr.total_allocated() == CONFIG.limit
        assert stats.committed <= CONFIG.limit
        assert stats.pool_used <= stats.pool_size
        assert stats.pool_used + stats.pool_free == stats.pool_size
        loaded = {d for d, m in self.model.dims.items() if m.loaded}
        assert {int(d) for d in stats.loaded} == loaded

    @invariant()
    def loaded_bytes_are_the_models(self) -> None:
        if self.closed or self.model.state is not ManagerState.ACTIVE:
            return
        for dimension, model in self.model.dims.items():
            if not model.loaded:
                continue
            for index, expected in enumerate(model.layers):
                assert (
                    self.mgr._published.table.layers[mmkit.DimensionId(dimension)][index]
                    == expected
                )

    def teardown(self) -> None:
        self.mgr.close()
        for block, _ in self.model.blocks.values():
            with contextlib.suppress(mmkit.InvalidState):  # released before close: none anew
                block.view.release()
        self.model.blocks.clear()
        # The last view released gives the address space back at once, whoever holds the
        # Block objects: the leases count views, not objects.
        assert mapped_bytes_in(*self.span) == 0


TestManagerMachine = ManagerMachine.TestCase
TestManagerMachine.settings = settings(suppress_health_check=[HealthCheck.too_slow])


def test_invariants_hold_before_anything_happens() -> None:
    machine = ManagerMachine()
    try:
        machine.state_follows_the_spec()
        machine.regions_and_blocks_are_aligned_and_apart()
        machine.the_budget_holds()
        machine.loaded_bytes_are_the_models()
    finally:
        machine.teardown()
