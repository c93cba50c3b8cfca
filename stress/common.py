"""What the scenarios share: results, options, the dataset, and the Linux-only /proc readings
of the rlimit scenario (the others measure through ``tests.osprobe`` on every OS)."""

from __future__ import annotations

import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import mmkit
from mmkit import DimensionId, LayerId, MemoryConfig

ROOT = Path(__file__).resolve().parent.parent
_HEADER = struct.Struct("<QIQ")
_HEADER_AT = 92


@dataclass
class Result:
    """One scenario's outcome: the checks it made, its figures, and notes for people."""

    name: str
    checks: list[tuple[str, bool]] = field(default_factory=list)
    figures: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None

    def check(self, what: str, ok: bool) -> bool:
        """Record one check; returns ``ok`` so callers can stop early."""
        self.checks.append((what, bool(ok)))
        return ok

    @property
    def passed(self) -> bool:
        """Every check passed, and there was at least one unless the scenario was skipped."""
        if self.skipped is not None:
            return all(ok for _, ok in self.checks)
        return bool(self.checks) and all(ok for _, ok in self.checks)


@dataclass(frozen=True)
class Options:
    """What the command line chose; None means the scenario's default."""

    seconds: float | None
    cycles: int | None
    data: Dataset


class Dataset:
    """The default dataset, generated into a temporary directory the first time it is asked for."""

    def __init__(self) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._files: dict[DimensionId, Path] = {}
        self._crcs: dict[LayerId, int] = {}

    def _ready(self) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="mmkit-stress-")
            self._files = mmkit.generate_dataset(self._tmp.name, MemoryConfig())
            for dimension, path in self._files.items():
                for index, crc in enumerate(payload_crcs(path)):
                    self._crcs[LayerId(dimension, index)] = crc
        return Path(self._tmp.name)

    @property
    def directory(self) -> Path:
        """Where the files are."""
        return self._ready()

    @property
    def files(self) -> dict[DimensionId, Path]:
        """The data file of each dimension."""
        self._ready()
        return dict(self._files)

    @property
    def crcs(self) -> dict[LayerId, int]:
        """The CRC-32 of every layer, read from the files without mmkit."""
        self._ready()
        return dict(self._crcs)

    def cleanup(self) -> None:
        """Remove the files."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def payload_crcs(path: Path) -> list[int]:
    """CRC-32 of each layer's payload bytes in a data file, parsed with struct, not mmkit."""
    with path.open("rb") as file:
        head = file.read(_HEADER_AT + _HEADER.size)
        layer_size, count, offset = _HEADER.unpack_from(head, _HEADER_AT)
        file.seek(offset)
        return [zlib.crc32(file.read(layer_size)) for _ in range(count)]


def proc_status() -> dict[str, int]:
    """The ``Vm*`` lines of /proc/self/status, in bytes."""
    values: dict[str, int] = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key.startswith("Vm"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def map_count() -> int:
    """Lines of /proc/self/maps: one per mapping."""
    with open("/proc/self/maps") as maps:
        return sum(1 for _ in maps)


def mib(nbytes: float) -> str:
    """Bytes as MiB with one decimal."""
    return f"{nbytes / mmkit.MiB:.1f} MiB"
