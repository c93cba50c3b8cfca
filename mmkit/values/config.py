"""``MemoryConfig``: the budget, the dimensions and the policies, checked when made."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from mmkit.platform import BACKEND, PAGE_SIZE, SHARING, SharedMemory
from mmkit.values.errors import ConfigError, UnknownDimension
from mmkit.values.ids import DimensionId
from mmkit.values.units import MiB


@dataclass(frozen=True, slots=True)
class DimensionSpec:
    """One dimension: its id, its name and its size in bytes."""

    id: DimensionId
    name: str
    size: int

    def __init__(self, id: object, name: str, size: int) -> None:
        object.__setattr__(self, "id", DimensionId(id))
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "size", size)


DEFAULT_DIMENSIONS: tuple[DimensionSpec, ...] = tuple(
    DimensionSpec(number, name, mib * MiB)
    for number, (name, mib) in enumerate(
        (
            ("Emotion", 16),
            ("Cognition", 16),
            ("Intention", 16),
            ("Social", 8),
            ("Temporal", 8),
            ("Philosophy", 16),
            ("Technical", 12),
            ("Creative", 8),
            ("Ethical", 12),
            ("Meta", 8),
            ("Ecological", 8),
            ("Positivity", 8),
            ("Balance", 8),
            ("Security", 4),
        ),
        start=1,
    )
)


MAX_BYTES = (1 << 63) - 1
"""No size can exceed what a signed 64-bit count (``ssize_t``) and the address space hold;
larger values would be wrapped silently by the C types the OS calls take."""


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an int number of bytes, not {value!r}")
    if value <= 0:
        raise ConfigError(f"{name} must be positive, not {value}")
    if value > MAX_BYTES:
        raise ConfigError(f"{name} must be below 2**63 bytes, not {value}")
    return value


def _whole_pages(name: str, value: int) -> None:
    if value % PAGE_SIZE:
        raise ConfigError(
            f"{name} must be a multiple of the page size ({PAGE_SIZE} bytes), not {value}"
        )


@dataclass(frozen=True, slots=True)
class MemoryConfig:
    """What the manager maps and how it behaves. The defaults are the spec's.

    The pool is what the dimensions leave of the limit: 280 − 148 = 132 MiB by default
    (32 MiB user area + 100 MiB reserve). ``shared=True`` puts the dimension data in memory
    other processes can attach to (``MmapManager.share``), and takes ``spare_layers`` layers
    from the pool's reserve for updates.
    """

    limit: int = 280 * MiB
    layer_size: int = 1 * MiB
    dimensions: tuple[DimensionSpec, ...] = DEFAULT_DIMENSIONS
    data_dir: Path | None = None
    resident_limit: int | None = None
    user_quota: int = 32 * MiB
    prefault: bool = False
    shared: bool = False
    spare_layers: int = 16
    _by_id: dict[DimensionId, DimensionSpec] = field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        limit = _positive_int("limit", self.limit)
        layer = _positive_int("layer_size", self.layer_size)
        _whole_pages("limit", limit)
        _whole_pages("layer_size", layer)
        dims = self.dimensions
        if not isinstance(dims, tuple | list) or not dims:
            raise ConfigError(f"dimensions must be a non-empty sequence, not {dims!r}")
        if not all(isinstance(d, DimensionSpec) for d in dims):
            raise ConfigError("dimensions must be DimensionSpec values")
        by_id: dict[DimensionId, DimensionSpec] = {}
        names: set[str] = set()
        for spec in dims:
            if spec.id in by_id:
                raise ConfigError(f"dimension ids must be unique: {spec.id} appears twice")
            if not isinstance(spec.name, str) or not spec.name.strip():
                raise ConfigError(f"dimension {spec.id} needs a non-empty name")
            if spec.name.lower() in names:
                raise ConfigError(f"dimension names must be unique: {spec.name!r} appears twice")
            size = _positive_int(f"size of dimension {spec.id}", spec.size)
            if size % layer:
                raise ConfigError(
                    f"layer_size must divide every dimension: {spec.id} ({spec.name}) is "
                    f"{size} bytes, not a multiple of {layer}"
                )
            by_id[spec.id] = spec
            names.add(spec.name.lower())
        total = sum(spec.size for spec in dims)
        if total > limit:
            raise ConfigError(
                f"dimensions must fit in the limit: they need {total} bytes, the limit is {limit}"
            )
        if self.resident_limit is not None:
            _positive_int("resident_limit", self.resident_limit)
        if isinstance(self.user_quota, bool) or not isinstance(self.user_quota, int):
            raise ConfigError(f"user_quota must be an int number of bytes, not {self.user_quota!r}")
        if not 0 <= self.user_quota <= MAX_BYTES:
            raise ConfigError(f"user_quota must be 0 to 2**63 - 1 bytes, not {self.user_quota}")
        if not isinstance(self.prefault, bool):
            raise ConfigError(f"prefault must be a bool, not {self.prefault!r}")
        if not isinstance(self.shared, bool):
            raise ConfigError(f"shared must be a bool, not {self.shared!r}")
        if self.shared:
            self.check_sharing(SHARING)
        spares = self.spare_layers
        if isinstance(spares, bool) or not isinstance(spares, int) or not 1 <= spares <= 1 << 20:
            raise ConfigError(f"spare_layers must be an int from 1 to 2**20, not {spares!r}")
        if self.shared and total + spares * layer > limit:
            raise ConfigError(
                f"shared=True needs the dimensions and {spares} spare layers to fit in the "
                f"limit: they need {total + spares * layer} bytes, the limit is {limit}"
            )
        data_dir = self.data_dir
        if data_dir is not None:
            text = os.fspath(data_dir) if isinstance(data_dir, str | os.PathLike) else None
            if not isinstance(text, str) or not text or "\0" in text:
                raise ConfigError(
                    f"data_dir must be a path (text, no NUL) or None, not {data_dir!r}"
                )
            object.__setattr__(self, "data_dir", Path(text))
        object.__setattr__(self, "dimensions", tuple(sorted(dims, key=lambda d: d.id)))
        object.__setattr__(self, "_by_id", by_id)

    def check_sharing(self, sharing: SharedMemory | None) -> None:
        """Refuse ``shared=True`` where ``sharing`` cannot do what the configuration asks."""
        if sharing is None:
            raise ConfigError(
                f"shared=True: this {BACKEND.name} system cannot share memory between "
                "processes (mmkit needs Linux, macOS, or Windows 10 version 1803 or later)"
            )
        if self.resident_limit is not None and not sharing.gives_back:
            raise ConfigError(
                f"resident_limit with shared=True: {sharing.name} shared memory cannot give "
                "part of itself back to the OS, so evicting would free nothing"
            )

    @property
    def dimensions_size(self) -> int:
        """Bytes of all dimension regions together."""
        return sum(spec.size for spec in self.dimensions)

    @property
    def spares_size(self) -> int:
        """Bytes of shared memory kept for layer updates (``shared=True`` only): each update
        writes its new bytes into a free spare layer, which readers can map."""
        return self.spare_layers * self.layer_size if self.shared else 0

    @property
    def pool_size(self) -> int:
        """Bytes of the budget left for the pool allocator."""
        return self.limit - self.dimensions_size - self.spares_size

    @property
    def effective_resident_limit(self) -> int:
        """The cap on resident dimension data; the limit itself when none is set."""
        return self.limit if self.resident_limit is None else self.resident_limit

    def dimension(self, dimension: object) -> DimensionSpec:
        """The spec of a dimension id, or ``UnknownDimension``."""
        key = DimensionId(dimension)
        try:
            return self._by_id[key]
        except KeyError:
            known = ", ".join(str(d) for d in self._by_id)
            raise UnknownDimension(f"no dimension {key} in this configuration ({known})") from None

    def layer_count(self, dimension: object) -> int:
        """Number of layers of a dimension."""
        return self.dimension(dimension).size // self.layer_size
