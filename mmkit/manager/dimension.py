"""A loaded dimension: the bytes readers see, layer by layer, and what keeps them alive.

A layer's bytes live in the dimension's region until the layer is updated; then they live
in a copy in the pool (read-copy-update). Every view handed to a reader pins the ``Pin`` of
the memory it shows, so neither a region nor a copy is reused while a reader can reach it.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Literal

from mmkit.memory.region import Region, Reservation
from mmkit.memory.views import span_view
from mmkit.values.config import DimensionSpec

ZERO: Literal["zero"] = "zero"
Source = Path | Literal["zero"] | None
"""Where a dimension's bytes can be loaded again from: a file, zeros, or nowhere (None)."""


class Pin:
    """A span of memory that views keep alive; it keeps the address space reserved."""

    __slots__ = ("__weakref__", "address", "reservation", "size")

    def __init__(self, reservation: Reservation, address: int, size: int) -> None:
        self.reservation = reservation
        self.address = address
        self.size = size

    def view(self, offset: int, size: int) -> memoryview:
        return span_view(self.address + offset, size, self)


class LoadedDimension:
    """A dimension whose bytes are committed and published."""

    __slots__ = ("base", "copies", "dirty", "region", "source", "spec", "views")

    def __init__(self, spec: DimensionSpec, region: Region, base: Pin, source: Source) -> None:
        self.spec = spec
        self.region = region
        self.base: Pin | None = base
        self.copies: dict[int, Pin] = {}
        self.source = source
        self.dirty = False
        self.views = self._build_views()

    @property
    def reloadable(self) -> bool:
        """Whether dropping the bytes loses nothing: they can be loaded again as they are."""
        return self.source is not None and not self.dirty

    @property
    def data_bytes(self) -> int:
        return self.region.size + sum(copy.size for copy in self.copies.values())

    def replace_layer(self, index: int, copy: Pin) -> Pin | None:
        """Publish ``copy`` as layer ``index``; return the copy it replaced, if any."""
        old = self.copies.get(index)
        self.copies[index] = copy
        views = list(self.views)
        views[index] = copy.view(0, self.region.layer_size)
        self.views = tuple(views)
        self.dirty = True
        return old

    def pins(self) -> list[Pin]:
        assert self.base is not None
        return [self.base, *self.copies.values()]

    def try_release(self) -> list[Pin] | None:
        """Drop this object's hold on its memory and see whether anything else holds it.

        Returns the pins still held elsewhere (a reader's view) after restoring this
        object as it was, or None when nothing else did and the memory is free to go.
        """
        refs = [weakref.ref(pin) for pin in self.pins()]
        spans = self.copy_spans()
        reservation = self.pins()[0].reservation
        self.views = ()
        self.base = None
        self.copies = {}
        held = [pin for ref in refs if (pin := ref()) is not None]
        if not held:
            return None
        alive = {pin.address: pin for pin in held}
        self.reattach(reservation, spans, alive)
        return held

    def copy_spans(self) -> dict[int, tuple[int, int]]:
        """The pool spans of the layer copies: layer index → (address, size)."""
        return {index: (pin.address, pin.size) for index, pin in self.copies.items()}

    def reattach(
        self,
        reservation: Reservation,
        spans: dict[int, tuple[int, int]],
        alive: dict[int, Pin] | None = None,
    ) -> None:
        """Publish the same memory again: live pins where there are, new ones where they died.

        Nothing gave the memory away in between, so the bytes are the ones readers saw.
        """
        alive = alive or {}
        region = self.region
        self.base = alive.get(region.address) or Pin(reservation, region.address, region.size)
        self.copies = {
            index: alive.get(address) or Pin(reservation, address, size)
            for index, (address, size) in spans.items()
        }
        self.views = self._build_views()

    def _build_views(self) -> tuple[memoryview, ...]:
        size = self.region.layer_size
        base = self.base
        assert base is not None
        return tuple(
            self.copies[i].view(0, size) if i in self.copies else base.view(i * size, size)
            for i in range(self.region.layer_count)
        )
