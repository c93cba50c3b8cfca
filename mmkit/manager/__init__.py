"""The manager: the budget, the spec's state machine, and what readers see."""

from mmkit.manager.manager import MmapManager
from mmkit.manager.stats import DimensionStats, Stats

__all__ = ["DimensionStats", "MmapManager", "Stats"]
