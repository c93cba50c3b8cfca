"""``mmkit inspect``: every check ``read_dimension`` makes, reported instead of raised."""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mmkit.storage.files import checked_path, open_regular, reason
from mmkit.storage.format import (
    FileHeader,
    check_padding,
    length_problem,
    mismatch,
    parse_header,
)
from mmkit.values.errors import DataFileError
from mmkit.values.text import printable

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class LayerCheck:
    """One layer's stored checksum and the one computed now (None: the file ends first)."""

    index: int
    stored: int
    computed: int | None

    @property
    def ok(self) -> bool:
        """The layer's bytes are all there and match their checksum."""
        return self.stored == self.computed


@dataclass(frozen=True, slots=True)
class Inspection:
    """A data file's header, each layer's stored and computed checksum, and a verdict.

    ``header`` is None when the header itself is bad; ``verdict`` then says why. Otherwise
    ``verdict`` is ``"ok"`` or the first problem, worded as ``read_dimension`` words it.
    """

    path: Path
    header: FileHeader | None
    file_size: int | None
    layers: tuple[LayerCheck, ...]
    ok: bool
    verdict: str

    def render(self) -> str:
        """The report ``mmkit inspect`` prints; the file's name and path shown escaped."""
        lines = [f"file            {printable(self.path)}"]
        header = self.header
        if self.file_size is not None:
            lines.append(f"file size       {self.file_size} bytes")
        if header is not None:
            lines += [
                f"dimension       {header.dimension} ({printable(header.name)})",
                f"size            {header.size} bytes in {header.layer_count} layers of "
                f"{header.layer_size}",
                f"payload offset  {header.payload_offset}",
                "layer  stored      computed",
            ]
            for layer in self.layers:
                computed = "missing" if layer.computed is None else f"{layer.computed:#010x}"
                mark = "ok" if layer.ok else "MISMATCH"
                lines.append(f"{layer.index:5d}  {layer.stored:#010x}  {computed:<10}  {mark}")
        lines.append(f"verdict         {printable(self.verdict)}")
        return "\n".join(lines)


def _check_layers(file: BinaryIO, header: FileHeader) -> tuple[LayerCheck, ...]:
    """Every layer's checksum, reading in bounded chunks however large the header claims."""
    file.seek(header.payload_offset)
    checks = []
    for index, stored in enumerate(header.layer_checksums):
        crc, remaining = 0, header.layer_size
        while remaining:
            chunk = file.read(min(remaining, _CHUNK))
            if not chunk:
                break
            crc = zlib.crc32(chunk, crc)
            remaining -= len(chunk)
        checks.append(LayerCheck(index, stored, None if remaining else crc))
    return tuple(checks)


def inspect_file(path: Path | str) -> Inspection:
    """Check a data file without loading it anywhere; never raises for a bad file.

    A path that cannot name a file ("", a NUL byte) is ``InvalidArgument``, not a verdict.
    """
    path = Path(checked_path(path))
    size: int | None = None
    try:
        with open_regular(path) as file:
            size = file.seek(0, os.SEEK_END)
            header, _ = parse_header(file, path)
            problem = length_problem(header, size)
            if problem is None:
                check_padding(file, header, path)
            checks = _check_layers(file, header)
    except DataFileError as exc:
        return Inspection(path, None, size, (), False, exc.problem)
    except OSError as exc:
        return Inspection(path, None, size, (), False, f"read failed: {reason(exc)}")
    if problem is None:
        bad = next((c for c in checks if not c.ok), None)
        if bad is not None and bad.computed is not None:
            problem = mismatch(bad.index, bad.stored, bad.computed)
        elif bad is not None:
            problem = f"truncated while reading layer {bad.index}"
    return Inspection(path, header, size, checks, problem is None, problem or "ok")
