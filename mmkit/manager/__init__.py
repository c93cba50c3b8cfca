"""The manager: the budget, the spec's state machine, and what readers see."""

from mmkit.manager.manager import DimensionStats, MmapManager, Stats

__all__ = ["DimensionStats", "MmapManager", "Stats"]
