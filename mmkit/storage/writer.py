"""Writing: padding, layers, then the header into a temporary file renamed into place, so a
crash leaves the old file or the new one; bad arguments are refused before touching the disk.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

from mmkit.platform.interrupts import interrupts_deferred
from mmkit.storage.files import (
    Buffer,
    SaveTarget,
    Temporary,
    create_temporary,
    reason,
    save_target,
    write_all,
)
from mmkit.storage.format import (
    FileHeader,
    check_savable,
    encode_header,
    payload_offset,
    stored_name,
)
from mmkit.values.config import DimensionSpec
from mmkit.values.errors import DataFileError, InvalidArgument, NotABuffer


def _bytes_of(data: object, what: str) -> memoryview:
    """A byte view of any buffer; ``NotABuffer`` for anything else."""
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise NotABuffer(f"{what} must be a bytes-like object, not {type(data).__name__}") from None
    with view:
        if not view.c_contiguous:
            raise InvalidArgument(f"{what} is not contiguous (a strided view); pass a copy")
        return view.cast("B")


def stage(
    target: SaveTarget,
    spec: DimensionSpec,
    layer_size: int,
    layers: Iterable[Buffer],
    advance: Callable[[int], None] | None = None,
) -> tuple[Temporary, FileHeader]:
    """A complete temporary file for ``spec``, not yet renamed, and the header written in it.

    The header goes last, into the padding, so the one pass that writes computes the checksums.
    """
    count = spec.size // layer_size
    temporary = create_temporary(target)
    try:
        write_all(temporary.file, bytes(payload_offset(count)))
        checksums: list[int] = []
        for layer in layers:
            with _bytes_of(layer, "a layer") as data:
                if data.nbytes != layer_size:
                    raise InvalidArgument(f"a layer is {data.nbytes} bytes, expected {layer_size}")
                if len(checksums) == count:
                    raise InvalidArgument(f"more than the {count} layers of {spec.id}")
                checksums.append(zlib.crc32(data))
                write_all(temporary.file, data)
            if advance is not None:
                advance(layer_size)
        if len(checksums) != count:
            raise InvalidArgument(f"{len(checksums)} layers given, {spec.id} has {count}")
        temporary.file.seek(0)
        write_all(
            temporary.file, encode_header(spec.id, spec.name, spec.size, layer_size, checksums)
        )
    except BaseException as exc:
        temporary.discard()
        if isinstance(exc, OSError):
            raise DataFileError(target.path, f"write failed: {reason(exc)}") from exc
        raise
    name = stored_name(spec.name).rstrip(b"\0").decode("utf-8")  # as a reader will see it
    offset = payload_offset(count)
    return temporary, FileHeader(spec.id, name, spec.size, layer_size, tuple(checksums), offset)


def write_layers(
    path: Path | str, spec: DimensionSpec, layer_size: int, layers: Iterable[Buffer]
) -> FileHeader:
    """Write a dimension file atomically from its layers, in one pass; return its header.

    A directory, FIFO or device at ``path`` is refused; a symlink is written through.
    """
    check_savable(spec, layer_size)
    with interrupts_deferred():  # a Ctrl-C meanwhile would strand the temporary file
        temporary, header = stage(save_target(path), spec, layer_size, layers)
        return dataclasses.replace(header, identity=temporary.commit())


def write_dimension(
    path: Path | str, spec: DimensionSpec, layer_size: int, data: Buffer
) -> FileHeader:
    """Write a dimension file atomically from one buffer of exactly ``spec.size`` bytes."""
    check_savable(spec, layer_size)
    with _bytes_of(data, "the data") as view:
        if view.nbytes != spec.size:
            raise InvalidArgument(f"data is {view.nbytes} bytes, {spec.id} is {spec.size}")
        layers = (view[i : i + layer_size] for i in range(0, spec.size, layer_size))
        return write_layers(path, spec, layer_size, layers)
