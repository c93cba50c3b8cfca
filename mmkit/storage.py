"""Dimension data files: a checked header, then the payload at a 64 KiB boundary.

The format is written out byte by byte in ``specs/data-format.md``. Loading copies the
payload into the region with ``readinto`` and verifies a CRC-32 per layer; the file is
never mapped, so truncating it later cannot raise SIGBUS in a reader. Writes go to a
temporary file that is fsynced and renamed over the final name, so a crash leaves the old
file or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mmkit.values.config import DimensionSpec, MemoryConfig
from mmkit.values.errors import DataFileError
from mmkit.values.ids import DimensionId

MAGIC = b"MMKITDIM"
FORMAT_VERSION = 1
PAYLOAD_ALIGNMENT = 64 * 1024
SUFFIX = ".mmkd"
NAME_BYTES = 64
MAX_LAYERS = 1 << 20

# magic, version, flags, header length, dimension, name, size, layer size, layer count,
# payload offset; then one u32 CRC-32 per layer, then the CRC-32 of all of the above.
_FIXED = struct.Struct("<8sHHII64sQQIQ")
_CRC = struct.Struct("<I")

Progress = Callable[[int, int], None]
Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class FileHeader:
    """What a data file says about itself."""

    dimension: DimensionId
    name: str
    size: int
    layer_size: int
    layer_checksums: tuple[int, ...]
    payload_offset: int

    @property
    def layer_count(self) -> int:
        return len(self.layer_checksums)


def dimension_filename(spec: DimensionSpec) -> str:
    """``d01-emotion.mmkd``: the id, then the name lowercased with other characters as ``-``."""
    slug = re.sub(r"[^a-z0-9]+", "-", spec.name.lower()).strip("-") or "dimension"
    return f"d{int(spec.id):02d}-{slug}{SUFFIX}"


def dimension_path(directory: Path | str, spec: DimensionSpec) -> Path:
    return Path(directory) / dimension_filename(spec)


def _header_length(layer_count: int) -> int:
    return _FIXED.size + 4 * layer_count


def _payload_offset(layer_count: int) -> int:
    end = _header_length(layer_count) + _CRC.size
    return -(-end // PAYLOAD_ALIGNMENT) * PAYLOAD_ALIGNMENT


def encode_header(
    dimension: DimensionId, name: str, size: int, layer_size: int, checksums: Sequence[int]
) -> bytes:
    """The header bytes, checksum included (the zero padding up to the payload is not)."""
    encoded_name = name.encode("utf-8")
    if len(encoded_name) > NAME_BYTES:
        raise ValueError(f"a dimension name is at most {NAME_BYTES} UTF-8 bytes: {name!r}")
    count = len(checksums)
    body = _FIXED.pack(
        MAGIC,
        FORMAT_VERSION,
        0,
        _header_length(count),
        int(dimension),
        encoded_name,
        size,
        layer_size,
        count,
        _payload_offset(count),
    ) + struct.pack(f"<{count}I", *checksums)
    return body + _CRC.pack(zlib.crc32(body))


def _read_exactly(file: BinaryIO, count: int) -> bytes:
    chunks = []
    while count:
        chunk = file.read(count)
        if not chunk:
            break
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def read_header(file: BinaryIO, path: Path | str) -> FileHeader:
    """Read and check a header: magic, version, field sanity, checksum, padding, file length."""
    file.seek(0)
    fixed = _read_exactly(file, _FIXED.size)
    if len(fixed) < _FIXED.size:
        if len(fixed) >= len(MAGIC) and not fixed.startswith(MAGIC):
            raise DataFileError(path, f"not an mmkit data file (starts with {fixed[:8]!r})")
        raise DataFileError(path, f"truncated: {len(fixed)} bytes, shorter than a header")
    (magic, version, flags, length, dimension, raw_name, size, layer_size, count, offset) = (
        _FIXED.unpack(fixed)
    )
    if magic != MAGIC:
        raise DataFileError(path, f"not an mmkit data file (starts with {magic!r})")
    if version != FORMAT_VERSION:
        raise DataFileError(path, f"format version {version}; this mmkit reads {FORMAT_VERSION}")
    if not 0 < count <= MAX_LAYERS or length != _header_length(count):
        raise DataFileError(path, f"corrupt header: {count} layers in {length} header bytes")
    rest = _read_exactly(file, 4 * count + _CRC.size)
    if len(rest) < 4 * count + _CRC.size:
        raise DataFileError(path, "truncated: the header's checksum table is cut short")
    (stored,) = _CRC.unpack(rest[-_CRC.size :])
    computed = zlib.crc32(rest[: -_CRC.size], zlib.crc32(fixed))
    if stored != computed:
        raise DataFileError(
            path, f"header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
        )
    if flags or dimension < 1 or layer_size <= 0 or count * layer_size != size:
        raise DataFileError(path, "corrupt header: inconsistent fields")
    if offset != _payload_offset(count):
        raise DataFileError(path, f"corrupt header: payload offset {offset}")
    try:
        name = raw_name.rstrip(b"\0").decode("utf-8")
    except UnicodeDecodeError:
        raise DataFileError(path, "corrupt header: the name is not UTF-8") from None
    padding = _read_exactly(file, offset - length - _CRC.size)
    if padding.count(0) != len(padding):
        raise DataFileError(path, "corrupt header: non-zero bytes between header and payload")
    actual = os.fstat(file.fileno()).st_size
    expected = offset + size
    if actual < expected:
        raise DataFileError(path, f"truncated: {actual} bytes, expected {expected}")
    if actual > expected:
        raise DataFileError(path, f"{actual - expected} trailing bytes after the payload")
    checksums = struct.unpack(f"<{count}I", rest[: 4 * count])
    return FileHeader(DimensionId(dimension), name, size, layer_size, checksums, offset)


@contextlib.contextmanager
def _open_for_reading(path: Path | str) -> Iterator[io.FileIO]:
    try:
        file = io.FileIO(path, "rb")
    except OSError as exc:
        raise DataFileError(path, f"cannot open: {exc.strerror or exc}") from None
    with file:
        try:
            yield file
        except OSError as exc:
            raise DataFileError(path, f"read failed: {exc.strerror or exc}") from None


def read_dimension(
    path: Path | str, spec: DimensionSpec, layer_size: int, target: memoryview
) -> FileHeader:
    """Read a dimension's file into ``target`` (exactly ``spec.size`` bytes), verifying it.

    On failure the target's bytes are unspecified; the caller discards them.
    """
    if target.nbytes != spec.size:
        raise ValueError(f"target is {target.nbytes} bytes, {spec.id} is {spec.size}")
    with _open_for_reading(path) as file:
        header = read_header(file, path)
        if header.dimension != spec.id:
            raise DataFileError(path, f"holds dimension {header.dimension}, expected {spec.id}")
        if header.size != spec.size:
            raise DataFileError(path, f"holds {header.size} bytes, {spec.id} is {spec.size}")
        if header.layer_size != layer_size:
            raise DataFileError(
                path, f"has layers of {header.layer_size} bytes, expected {layer_size}"
            )
        file.seek(header.payload_offset)
        for index, stored in enumerate(header.layer_checksums):
            layer = target[index * layer_size : (index + 1) * layer_size]
            filled = 0
            while filled < layer_size:
                got = file.readinto(layer[filled:])
                if not got:
                    raise DataFileError(path, f"truncated while reading layer {index}")
                filled += got
            computed = zlib.crc32(layer)
            if computed != stored:
                raise DataFileError(
                    path,
                    f"layer {index} checksum mismatch: "
                    f"stored {stored:#010x}, computed {computed:#010x}",
                )
        return header


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some systems cannot open a directory; the rename is still atomic there
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_layers(
    path: Path | str, spec: DimensionSpec, layer_size: int, layers: Iterable[Buffer]
) -> Path:
    """Write a dimension file atomically from its layers, in order.

    The payload is written first and the header last, so checksums need no second pass.
    """
    path = Path(path)
    count = spec.size // layer_size
    offset = _payload_offset(count)
    try:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise DataFileError(path, f"cannot create a file beside it: {exc.strerror}") from None
    try:
        with open(fd, "wb", buffering=0) as file:
            file.seek(offset)
            checksums = []
            for layer in layers:
                data = memoryview(layer).cast("B")
                if data.nbytes != layer_size:
                    raise ValueError(f"a layer is {data.nbytes} bytes, expected {layer_size}")
                checksums.append(zlib.crc32(data))
                file.write(data)
            if len(checksums) != count:
                raise ValueError(f"{len(checksums)} layers given, {spec.id} has {count}")
            file.seek(0)
            file.write(encode_header(spec.id, spec.name, spec.size, layer_size, checksums))
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(exc, OSError):
            raise DataFileError(path, f"write failed: {exc.strerror or exc}") from None
        raise
    _fsync_directory(path.parent)
    return path


def write_dimension(path: Path | str, spec: DimensionSpec, layer_size: int, data: Buffer) -> Path:
    """Write a dimension file atomically from one buffer of exactly ``spec.size`` bytes."""
    view = memoryview(data).cast("B")
    if view.nbytes != spec.size:
        raise ValueError(f"data is {view.nbytes} bytes, {spec.id} is {spec.size}")
    layers = (view[i : i + layer_size] for i in range(0, spec.size, layer_size))
    return write_layers(path, spec, layer_size, layers)


def generate_dataset(
    directory: Path | str,
    config: MemoryConfig | None = None,
    *,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[DimensionId, Path]:
    """Write deterministic, varied data for every dimension: one file each, in ``directory``.

    Each layer is a window of one random pool, at a random offset, through a random byte
    permutation: different in every layer, the same on every run and Python version, and
    made by C loops (``randbytes``, ``translate``), not a Python loop per byte.
    """
    config = MemoryConfig() if config is None else config
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataFileError(directory, f"cannot create the directory: {exc.strerror}") from None
    layer_size = config.layer_size
    rng = random.Random(f"mmkit-dataset:{seed}")
    pool = rng.randbytes(2 * layer_size)
    total = config.dimensions_size
    done = 0
    paths: dict[DimensionId, Path] = {}

    def layers(spec: DimensionSpec) -> Iterator[bytes]:
        nonlocal done
        for _ in range(spec.size // layer_size):
            start = rng.randrange(layer_size)
            permutation = bytes(rng.sample(range(256), 256))
            yield pool[start : start + layer_size].translate(permutation)
            done += layer_size
            if progress is not None:
                progress(done, total)

    for spec in config.dimensions:
        paths[spec.id] = write_layers(
            dimension_path(directory, spec), spec, layer_size, layers(spec)
        )
    return paths


@dataclass(frozen=True, slots=True)
class LayerCheck:
    index: int
    stored: int
    computed: int | None

    @property
    def ok(self) -> bool:
        return self.stored == self.computed


@dataclass(frozen=True, slots=True)
class Inspection:
    """A data file's header, each layer's stored and computed checksum, and a verdict."""

    path: Path
    header: FileHeader | None
    layers: tuple[LayerCheck, ...]
    ok: bool
    verdict: str

    def render(self) -> str:
        lines = [f"file            {self.path}"]
        header = self.header
        if header is not None:
            lines += [
                f"dimension       {header.dimension} ({header.name})",
                f"size            {header.size} bytes in {header.layer_count} layers of "
                f"{header.layer_size}",
                f"payload offset  {header.payload_offset}",
                "layer  stored      computed    ",
            ]
            for layer in self.layers:
                computed = "missing" if layer.computed is None else f"{layer.computed:#010x}"
                mark = "ok" if layer.ok else "MISMATCH"
                lines.append(f"{layer.index:5d}  {layer.stored:#010x}  {computed:<10}  {mark}")
        lines.append(f"verdict         {self.verdict}")
        return "\n".join(lines)


def inspect_file(path: Path | str) -> Inspection:
    """Check a data file without loading it anywhere; never raises for a bad file."""
    path = Path(path)
    try:
        with _open_for_reading(path) as file:
            header = read_header(file, path)
            file.seek(header.payload_offset)
            checks = []
            for index, stored in enumerate(header.layer_checksums):
                data = _read_exactly(file, header.layer_size)
                computed = zlib.crc32(data) if len(data) == header.layer_size else None
                checks.append(LayerCheck(index, stored, computed))
    except DataFileError as exc:
        return Inspection(path, None, (), False, exc.problem)
    bad = [c.index for c in checks if not c.ok]
    verdict = "ok" if not bad else f"layer {bad[0]} checksum mismatch ({len(bad)} bad layers)"
    return Inspection(path, header, tuple(checks), not bad, verdict)
