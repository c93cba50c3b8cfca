"""The shared arena's layout and its control area's format. Pure: no OS calls.

One shared object holds everything readers map: a control area, then each dimension's bytes
in id order, then the spare layers that updates write into. The control area starts with a
fixed header, then a description of the layout (JSON, written once), then the *table*: one
64-bit word per layer, the offset of the layer's current bytes with the low bit set, or 0
when the layer is not published. The owner rewrites the table and then increments the
*generation* under an exclusive byte lock; readers copy it under a shared one.

Units are what readers pin, one layer each: first every layer's home, in table order (the
dimensions lie one after another, so unit ``k`` is table entry ``k``'s home), then the spare
layers. A pin is a shared lock on byte ``FIRST_PIN + unit`` of the object.
"""

from __future__ import annotations

import functools
import json
import struct
from dataclasses import dataclass

from mmkit.platform import align_up
from mmkit.values.config import DimensionSpec, MemoryConfig
from mmkit.values.ids import LayerId

MAGIC = b"MMKITARN"
HEADER = struct.Struct("=8sII16sQQQQ")
"""magic, share format, description length, nonce, owner pid, flags, generation, table offset"""
FLAGS_OFFSET = 40
GENERATION_OFFSET = 48
DESCRIPTION_OFFSET = HEADER.size
CLOSED = 0x1
"""Flag: the owner closed the manager; what is published stays readable."""

PUBLISH_BYTE = 0
OWNER_BYTE = 1
FIRST_PIN = 2
MAX_DESCRIPTION = 1 << 20


@dataclass(frozen=True, slots=True)
class ArenaLayout:
    """Where everything lies in the shared object, derived from the layout description."""

    page_size: int
    layer_size: int
    dimensions: tuple[DimensionSpec, ...]
    spare_layers: int
    description: bytes
    table_offset: int
    control_size: int
    offsets: tuple[int, ...]
    spares_offset: int
    size: int

    @classmethod
    def plan(cls, config: MemoryConfig, page_size: int) -> ArenaLayout:
        """The layout for a shared manager's configuration."""
        text = json.dumps(
            {
                "page_size": page_size,
                "layer_size": config.layer_size,
                "spare_layers": config.spare_layers,
                "dimensions": [[int(s.id), s.name, s.size] for s in config.dimensions],
            },
            separators=(",", ":"),
        )
        return cls._derive(
            page_size, config.layer_size, config.dimensions, config.spare_layers, text.encode()
        )

    @classmethod
    @functools.lru_cache(maxsize=8)  # layouts are few, small and immutable
    def parse(cls, description: bytes, page_size: int) -> ArenaLayout:
        """The layout a description written by ``plan`` stands for; ``ValueError`` if none."""
        try:
            data = json.loads(description.decode())
            layer, spares = int(data["layer_size"]), int(data["spare_layers"])
            if int(data["page_size"]) != page_size:
                raise ValueError(f"made with {data['page_size']}-byte pages, not {page_size}")
            specs = tuple(DimensionSpec(int(i), str(n), int(s)) for i, n, s in data["dimensions"])
            # The config's own checks: unique ids and names, sizes in whole layers of pages.
            config = MemoryConfig(
                limit=align_up(sum(s.size for s in specs) + spares * layer, page_size),
                layer_size=layer,
                dimensions=specs,
                shared=True,
                spare_layers=spares,
            )
        except (
            ValueError,
            TypeError,
            KeyError,
            AttributeError,
            UnicodeDecodeError,
            RecursionError,
        ) as exc:
            # ConfigError is a ValueError: what the config's own checks refused, in its words
            raise ValueError(f"the layout description is not valid: {exc}") from None
        return cls._derive(page_size, layer, config.dimensions, spares, description)

    @classmethod
    def _derive(
        cls,
        page_size: int,
        layer_size: int,
        dimensions: tuple[DimensionSpec, ...],
        spare_layers: int,
        description: bytes,
    ) -> ArenaLayout:
        if len(description) > MAX_DESCRIPTION:
            raise ValueError("the layout description is too long")
        table = align_up(DESCRIPTION_OFFSET + len(description), 8)
        layers = sum(spec.size // layer_size for spec in dimensions)
        control = align_up(table + 8 * layers, page_size)
        offsets = []
        offset = control
        for spec in dimensions:
            offsets.append(offset)
            offset += spec.size
        size = offset + spare_layers * layer_size
        return cls(
            page_size,
            layer_size,
            dimensions,
            spare_layers,
            description,
            table,
            control,
            tuple(offsets),
            offset,
            size,
        )

    @property
    def units(self) -> int:
        """Layer homes and spare layers: everything a reader can pin."""
        return (self.size - self.control_size) // self.layer_size

    def layers(self) -> tuple[LayerId, ...]:
        """Every layer, in table order."""
        return _layers(self.dimensions, self.layer_size)

    def config(self) -> MemoryConfig:
        """A configuration with these dimensions and spare layers, limited to the data."""
        return _config(self.dimensions, self.layer_size, self.spare_layers)

    def unit_offset(self, unit: int) -> int:
        """Where a unit starts in the object."""
        return self.control_size + unit * self.layer_size

    def unit_of(self, offset: int) -> int:
        """The unit that holds ``offset``."""
        return (offset - self.control_size) // self.layer_size

    def decode_entry(self, entry: int) -> int | None:
        """The offset of a layer's bytes from its table word; None if not published or if
        the word does not name a unit."""
        if not entry & 1:
            return None
        offset = entry & ~1
        inside = self.control_size <= offset <= self.size - self.layer_size
        if not inside or (offset - self.control_size) % self.layer_size:
            return None
        return offset


@functools.lru_cache(maxsize=8)
def _layers(dimensions: tuple[DimensionSpec, ...], layer_size: int) -> tuple[LayerId, ...]:
    return tuple(
        LayerId(spec.id, index) for spec in dimensions for index in range(spec.size // layer_size)
    )


@functools.lru_cache(maxsize=8)
def _config(dimensions: tuple[DimensionSpec, ...], layer_size: int, spares: int) -> MemoryConfig:
    data = sum(spec.size for spec in dimensions) + spares * layer_size
    return MemoryConfig(
        limit=data,
        layer_size=layer_size,
        dimensions=dimensions,
        shared=True,
        spare_layers=spares,
    )
