"""A stateful model of one owner and two readers: updates, reads, held views, evictions.

Every view anyone holds keeps the bytes it had when it was taken; every read sees the latest
update; and the owner only refuses (``LimitExceeded``, an eviction that does not happen) for
as long as someone still reaches what it would need: once every view is released and every
reader has called again, the refused call goes through.
"""

from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import mmkit
from mmkit import DimensionId, LayerId, LimitExceeded, MmapManager, NotLoaded
from tests import markers
from tests.test_sharing import shared_config, stamp

pytestmark = markers.sharing

CONFIG = shared_config(spare_layers=3)
LAYERS = [
    LayerId(spec.id, index)
    for spec in CONFIG.dimensions
    for index in range(spec.size // CONFIG.layer_size)
]
ZEROS = bytes(CONFIG.layer_size)
EVICTABLE = DimensionId(1)  # loaded as zeros: the owner can drop it and load it again
OWNER = 2  # who holds a view: reader 0, reader 1, or the owner


class OwnerAndTwoReaders(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.owner = MmapManager(CONFIG)
        self.current: dict[LayerId, bytes] = {}
        for spec in CONFIG.dimensions:
            if spec.id == EVICTABLE:
                self.owner.load_dimension(spec.id)
            else:
                count = spec.size // CONFIG.layer_size
                self.owner.load_dimension(
                    spec.id, b"".join(stamp(LayerId(spec.id, i), 0) for i in range(count))
                )
        for layer in LAYERS:
            self.current[layer] = ZEROS if layer.dimension == EVICTABLE else stamp(layer, 0)
        self.readers = [mmkit.attach(self.owner.share()) for _ in range(2)]
        self.held: list[tuple[int, LayerId, bytes, memoryview]] = []
        self.updated: set[DimensionId] = set()
        self.evicted = False
        self.version = 0

    def _everyone_lets_go(self) -> None:
        for _, _, _, view in self.held:
            view.release()
        self.held.clear()
        for reader in self.readers:
            reader.stats()  # a call: the reader lets go of the pins no view needs

    @rule(layer=st.sampled_from(LAYERS))
    def update(self, layer: LayerId) -> None:
        self.version += 1
        data = stamp(layer, self.version)
        try:
            self.owner.update_layer(layer, data)
        except LimitExceeded:
            self._everyone_lets_go()
            self.owner.update_layer(layer, data)  # nothing reaches the spare layers now
        self.current[layer] = data
        self.updated.add(layer.dimension)
        if layer.dimension == EVICTABLE:
            self.evicted = False  # an update loads a dropped dimension again

    @rule(who=st.sampled_from([0, 1, OWNER]), layer=st.sampled_from(LAYERS), keep=st.booleans())
    def read(self, who: int, layer: LayerId, keep: bool) -> None:
        if who != OWNER and self.evicted and layer.dimension == EVICTABLE:
            with pytest.raises(NotLoaded, match="evicted"):
                self.readers[who].access_layer(layer)
            return
        source = self.owner if who == OWNER else self.readers[who]
        view = source.access_layer(layer)
        if who == OWNER:
            self.evicted = False if layer.dimension == EVICTABLE else self.evicted
        assert bytes(view) == self.current[layer]
        if keep:
            self.held.append((who, layer, self.current[layer], view))
        else:
            view.release()

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.held) - 1))
        self.held.pop(index)[3].release()

    @rule()
    def evict(self) -> None:
        if self.owner.evict(EVICTABLE):
            assert EVICTABLE not in self.updated
            assert not any(layer.dimension == EVICTABLE for _, layer, _, _ in self.held)
            self.evicted = True
        elif EVICTABLE not in self.updated and not self.evicted:
            self._everyone_lets_go()
            assert self.owner.evict(EVICTABLE)  # only views, or idle pins, kept it
            self.evicted = True

    @rule(who=st.sampled_from([0, 1]))
    def reattach(self, who: int) -> None:
        self.readers[who].close()  # its views stay readable
        self.readers[who] = mmkit.attach(self.owner.share())

    @invariant()
    def held_views_keep_their_bytes(self) -> None:
        for _, _, expected, view in self.held:
            assert bytes(view) == expected

    def teardown(self) -> None:
        for _, _, _, view in self.held:
            view.release()
        for reader in self.readers:
            reader.close()
        self.owner.close()


TestOwnerAndTwoReaders = OwnerAndTwoReaders.TestCase
