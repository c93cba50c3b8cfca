"""mmkit: a fixed memory budget as named, page-aligned regions mapped straight from the OS.

Layers, each importing only those before it: ``platform`` (the OS) → ``values`` (config,
ids, errors, units) → ``memory`` (leases, the reservation, the pool) and ``storage`` (data
files) → ``manager`` → ``system``, ``bench``, ``cli``.
"""

from __future__ import annotations

from mmkit.manager import DimensionStats, MmapManager, Stats
from mmkit.manager.blocks import Block
from mmkit.manager.reader import ReaderStats, SharedReader, attach
from mmkit.memory.region import Region
from mmkit.memory.views import address_of
from mmkit.storage import generate_dataset
from mmkit.values.config import DEFAULT_DIMENSIONS, DimensionSpec, MemoryConfig
from mmkit.values.errors import (
    AlreadyLoaded,
    AttachError,
    BlockInUse,
    ConfigError,
    DataFileError,
    InvalidArgument,
    InvalidBlock,
    InvalidId,
    InvalidSource,
    InvalidState,
    LayerOutOfRange,
    LimitExceeded,
    MmkitError,
    NotABuffer,
    NotCopyable,
    NotLoaded,
    OutOfMappings,
    OutOfMemory,
    SystemCallFailed,
    UnknownDimension,
)
from mmkit.values.ids import DimensionId, LayerId
from mmkit.values.share import ShareHandle
from mmkit.values.state import ManagerState
from mmkit.values.units import GiB, KiB, MiB
from mmkit.values.version import VERSION

__version__ = VERSION

__all__ = [
    "DEFAULT_DIMENSIONS",
    "AlreadyLoaded",
    "AttachError",
    "Block",
    "BlockInUse",
    "ConfigError",
    "DataFileError",
    "DimensionId",
    "DimensionSpec",
    "DimensionStats",
    "GiB",
    "InvalidArgument",
    "InvalidBlock",
    "InvalidId",
    "InvalidSource",
    "InvalidState",
    "KiB",
    "LayerId",
    "LayerOutOfRange",
    "LimitExceeded",
    "ManagerState",
    "MemoryConfig",
    "MiB",
    "MmapManager",
    "MmkitError",
    "NotABuffer",
    "NotCopyable",
    "NotLoaded",
    "OutOfMappings",
    "OutOfMemory",
    "ReaderStats",
    "Region",
    "ShareHandle",
    "SharedReader",
    "Stats",
    "SystemCallFailed",
    "UnknownDimension",
    "address_of",
    "attach",
    "generate_dataset",
]
