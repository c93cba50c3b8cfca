"""The ``.mmkd`` byte layout: constants, the header, and its checks in the spec's order.

What a header can make a reader do is bounded: ``MAX_LAYERS`` checksums, padding under 5 MiB.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from mmkit.storage.files import reason
from mmkit.values.config import DimensionSpec
from mmkit.values.errors import DataFileError, InvalidArgument
from mmkit.values.ids import DimensionId

MAGIC = b"MMKITDIM"
FORMAT_VERSION = 1
PAYLOAD_ALIGNMENT = 64 * 1024
SUFFIX = ".mmkd"
NAME_BYTES = 64
MAX_LAYERS = 1 << 20
MAX_DIMENSION_ID = (1 << 32) - 1
_MAX_U64 = (1 << 64) - 1

# magic, version, flags, header length, dimension, name, size, layer size, layer count,
# payload offset; then one u32 CRC-32 per layer, then the CRC-32 of everything before it.
_FIXED = struct.Struct("<8sHHII64sQQIQ")
_CRC = struct.Struct("<I")
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class FileHeader:
    """What a data file says about itself, after its header checksum was verified.

    ``identity`` is what the OS said about the file it was read from or written to (device,
    inode, size, modification and change times in ns); empty when it came from no file. Two
    equal identities mean nothing has written, renamed or replaced the file in between.
    """

    dimension: DimensionId
    name: str
    size: int
    layer_size: int
    layer_checksums: tuple[int, ...]
    payload_offset: int
    identity: tuple[int, ...] = field(default=(), compare=False)

    @property
    def layer_count(self) -> int:
        """Number of layers, one stored checksum each."""
        return len(self.layer_checksums)

    @property
    def file_size(self) -> int:
        """The exact length a file with this header must have."""
        return self.payload_offset + self.size


def check_spec(spec: object) -> DimensionSpec:
    """``spec`` if it is a ``DimensionSpec``; ``InvalidArgument`` otherwise."""
    if not isinstance(spec, DimensionSpec):
        raise InvalidArgument(f"a dimension is described by a DimensionSpec, not {spec!r}")
    return spec


def dimension_filename(spec: DimensionSpec) -> str:
    """``d01-emotion.mmkd``: the id, then the name lowercased with other characters as ``-``."""
    spec = check_spec(spec)
    slug = re.sub(r"[^a-z0-9]+", "-", spec.name.lower()).strip("-") or "dimension"
    return f"d{int(spec.id):02d}-{slug}{SUFFIX}"


def dimension_path(directory: Path | str, spec: DimensionSpec) -> Path:
    """Where a dimension's file lives inside a data directory."""
    if not isinstance(directory, str | os.PathLike):
        raise InvalidArgument(f"a data directory is a path, not {type(directory).__name__}")
    return Path(directory) / dimension_filename(spec)


def header_length(layer_count: int) -> int:
    """``H``: the header's length without its checksum."""
    return _FIXED.size + 4 * layer_count


def payload_offset(layer_count: int) -> int:
    """``P``: the one payload offset a file may have, the first 64 KiB boundary after H + 4."""
    end = header_length(layer_count) + _CRC.size
    return -(-end // PAYLOAD_ALIGNMENT) * PAYLOAD_ALIGNMENT


def stored_name(name: str) -> bytes:
    """The name as stored: UTF-8 (a lone surrogate as ``?``), cut at a character boundary."""
    encoded = name.encode("utf-8", "replace")[:NAME_BYTES]
    return encoded.decode("utf-8", "ignore").encode("utf-8")


def check_savable(spec: DimensionSpec, layer_size: int) -> None:
    """``InvalidArgument`` unless a data file can hold ``spec`` in layers of ``layer_size``.

    A configuration may have ids past u32 or too many layers; savers check before writing.
    """
    if not isinstance(spec, DimensionSpec):
        raise InvalidArgument(f"a DimensionSpec is needed, not {spec!r}")
    if not isinstance(spec.name, str):
        raise InvalidArgument(f"{spec.id} needs a str name, not {spec.name!r}")
    if int(spec.id) > MAX_DIMENSION_ID:
        raise InvalidArgument(
            f"{spec.id} cannot be saved: a data file holds dimension ids up to "
            f"{MAX_DIMENSION_ID} (u32)"
        )
    for what, value in (("layer size", layer_size), (f"size of {spec.id}", spec.size)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _MAX_U64:
            raise InvalidArgument(f"the {what} must be an int in 1 … 2^64-1, not {value!r}")
    count, rest = divmod(spec.size, layer_size)
    if rest:
        raise InvalidArgument(
            f"{spec.id} ({spec.size} bytes) is not a whole number of layers of {layer_size} bytes"
        )
    if count > MAX_LAYERS:
        raise InvalidArgument(
            f"{spec.id} cannot be saved: {count} layers of {layer_size} bytes, and a data "
            f"file holds at most {MAX_LAYERS}"
        )


def encode_header(
    dimension: DimensionId,
    name: str,
    size: int,
    layer_size: int,
    layer_checksums: Sequence[int],
) -> bytes:
    """The header bytes up to and including the header checksum, without the zero padding.

    Names longer than ``NAME_BYTES`` UTF-8 bytes are stored cut short (the id identifies
    the dimension; the name is for people). Impossible fields are ``InvalidArgument``.
    """
    count = len(layer_checksums)
    if not 0 < count <= MAX_LAYERS:
        raise InvalidArgument(f"a data file has 1 to {MAX_LAYERS} layers, not {count}")
    if layer_size <= 0 or size != count * layer_size:
        raise InvalidArgument(f"{count} layers of {layer_size} bytes do not make {size} bytes")
    try:
        body = _FIXED.pack(
            MAGIC,
            FORMAT_VERSION,
            0,
            header_length(count),
            int(dimension),
            stored_name(name),
            size,
            layer_size,
            count,
            payload_offset(count),
        ) + struct.pack(f"<{count}I", *layer_checksums)
    except struct.error as exc:
        raise InvalidArgument(f"a header field is out of range: {exc}") from None
    return body + _CRC.pack(zlib.crc32(body))


def _read_exactly(file: BinaryIO, count: int) -> bytes:
    """Up to ``count`` bytes; fewer only at the end of the file."""
    chunks = []
    while count > 0:
        chunk = file.read(min(count, _CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def parse_header(file: BinaryIO, path: Path | str) -> tuple[FileHeader, int]:
    """The verified header and the file's length: checks 2–13, reading only the header."""
    actual = file.seek(0, os.SEEK_END)
    file.seek(0)
    fixed = _read_exactly(file, _FIXED.size)
    start = fixed[: len(MAGIC)]
    if start != MAGIC[: len(start)]:
        raise DataFileError(path, f"not an mmkit data file (starts with {start!r})")
    if len(fixed) < _FIXED.size:
        raise DataFileError(path, f"truncated: {actual} bytes, too short for a header")
    (_, version, flags, length, dimension, raw_name, size, layer_size, count, offset) = (
        _FIXED.unpack(fixed)
    )
    if version != FORMAT_VERSION:
        raise DataFileError(path, f"format version {version}; this mmkit reads {FORMAT_VERSION}")
    if not 0 < count <= MAX_LAYERS:
        raise DataFileError(path, f"corrupt header: {count} layers (1 to {MAX_LAYERS} allowed)")
    if length != header_length(count):
        raise DataFileError(
            path, f"corrupt header: header length {length}, expected {header_length(count)}"
        )
    header_end = length + _CRC.size
    if actual < header_end:
        raise DataFileError(
            path, f"truncated: {actual} bytes, shorter than its {header_end}-byte header"
        )
    rest = _read_exactly(file, header_end - _FIXED.size)
    if len(rest) < header_end - _FIXED.size:
        raise DataFileError(path, "truncated while reading the header")
    (stored,) = _CRC.unpack(rest[-_CRC.size :])
    computed = zlib.crc32(rest[: -_CRC.size], zlib.crc32(fixed))
    if stored != computed:
        raise DataFileError(
            path, f"header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
        )
    if flags:
        raise DataFileError(path, f"corrupt header: unknown flags {flags:#06x}")
    if dimension < 1:
        raise DataFileError(path, "corrupt header: dimension id 0")
    if layer_size <= 0 or count * layer_size != size:
        raise DataFileError(
            path, f"corrupt header: {count} layers of {layer_size} bytes are not {size} bytes"
        )
    if offset != payload_offset(count):
        raise DataFileError(
            path, f"corrupt header: payload offset {offset}, expected {payload_offset(count)}"
        )
    try:
        name = raw_name.rstrip(b"\0").decode("utf-8")
    except UnicodeDecodeError:
        raise DataFileError(path, "corrupt header: the name is not UTF-8") from None
    checksums = struct.unpack(f"<{count}I", rest[: 4 * count])
    header = FileHeader(DimensionId(dimension), name, size, layer_size, checksums, offset)
    return header, actual


def length_problem(header: FileHeader, actual: int) -> str | None:
    """Check 14: the file is exactly as long as its header says."""
    expected = header.file_size
    if actual < expected:
        return f"truncated: {actual} bytes, expected {expected}"
    if actual > expected:
        return f"{actual - expected} trailing bytes after the payload"
    return None


def check_padding(file: BinaryIO, header: FileHeader, path: Path | str) -> None:
    """Check 15: every byte between the header checksum and the payload is zero."""
    position = header_length(header.layer_count) + _CRC.size
    file.seek(position)
    while position < header.payload_offset:
        chunk = file.read(min(header.payload_offset - position, _CHUNK))
        if not chunk:
            return  # the file shrank under us; the payload read names it
        zeros = len(chunk) - len(chunk.lstrip(b"\0"))
        if zeros < len(chunk):
            raise DataFileError(
                path,
                f"corrupt padding: non-zero byte at offset {position + zeros} "
                "between the header and the payload",
            )
        position += len(chunk)


def mismatch(index: int, stored: int, computed: int) -> str:
    """How a layer whose bytes do not match their checksum is named."""
    return f"layer {index} checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"


def read_header(file: BinaryIO, path: Path | str) -> FileHeader:
    """Read and check a header: magic, version, fields, checksum, file length and padding.

    The length is checked before the padding is read, so no header can make this read more.
    """
    if not all(hasattr(file, name) for name in ("read", "seek")):
        raise InvalidArgument(f"read_header needs a binary file, not {type(file).__name__}")
    try:
        header, actual = parse_header(file, path)
        problem = length_problem(header, actual)
        if problem is not None:
            raise DataFileError(path, problem)
        check_padding(file, header, path)
    except OSError as exc:
        raise DataFileError(path, f"read failed: {reason(exc)}") from exc
    return header
