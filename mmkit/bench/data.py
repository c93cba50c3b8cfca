"""The default dataset, generated once per run into a temporary directory and page-cached."""

from __future__ import annotations

import shutil
import struct
import tempfile
from pathlib import Path

from mmkit.storage import generate_dataset
from mmkit.values.config import MemoryConfig
from mmkit.values.ids import DimensionId

HEADER = struct.Struct("<8sHHII64sQQIQ")
"""The fixed part of a data file's header (``specs/data-format.md``); the stdlib peers parse it."""


class Dataset:
    """14 files of the default configuration, made on first use and removed by ``cleanup``."""

    def __init__(self) -> None:
        self._directory: Path | None = None
        self._paths: dict[DimensionId, Path] = {}

    @property
    def directory(self) -> Path:
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="mmkit-bench-"))
            self._paths = generate_dataset(self._directory)
            self.warm()
        return self._directory

    @property
    def paths(self) -> dict[DimensionId, Path]:
        _ = self.directory
        return self._paths

    def config(self) -> MemoryConfig:
        return MemoryConfig(data_dir=self.directory)

    def warm(self) -> None:
        """Read every file once so that loads come from the page cache."""
        for path in self._paths.values():
            with path.open("rb", buffering=0) as file:
                while file.read(16 << 20):
                    pass

    def payload(self, dimension: int) -> bytes:
        """The payload bytes of one dimension's file."""
        with self.paths[DimensionId(dimension)].open("rb") as file:
            fields = HEADER.unpack(file.read(HEADER.size))
            size, offset = fields[6], fields[9]
            file.seek(offset)
            return file.read(size)

    def cleanup(self) -> None:
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None
