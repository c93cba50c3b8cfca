"""Snapshots of a manager's memory, as plain values."""

from __future__ import annotations

from dataclasses import dataclass

from mmkit.values.ids import DimensionId
from mmkit.values.state import ManagerState


@dataclass(frozen=True, slots=True)
class DimensionStats:
    """One dimension's region: where it is and how much of it is in physical memory."""

    id: DimensionId
    name: str
    address: int
    size: int
    loaded: bool
    resident: int


@dataclass(frozen=True, slots=True)
class Stats:
    """A snapshot of the manager's memory. ``resident`` figures are measured from the OS.

    ``data`` is the dimension data the manager holds in memory (loaded regions and layer
    copies); ``resident_limit`` caps it, softly: ``pinned`` is what the last attempt to
    make room could not drop because readers held views of it. Plain values throughout, so
    a snapshot pickles (a worker process can send one back).
    """

    state: ManagerState
    allocated: int
    reserved: int
    committed: int
    resident: int
    loaded: tuple[DimensionId, ...]
    data: int
    data_resident: int
    resident_limit: int
    pinned: int
    evictions: int
    reloads: int
    layer_copies: int
    pool_size: int
    pool_used: int
    pool_free: int
    pool_largest_free: int
    pool_committed: int
    pool_blocks: int
    pool_block_bytes: int
    fragmentation: float
    owners: dict[str, int]
    dimensions: tuple[DimensionStats, ...]

    @property
    def over_limit(self) -> int:
        """Bytes of dimension data beyond ``resident_limit`` (held by readers' pins)."""
        return max(0, self.data - self.resident_limit)
