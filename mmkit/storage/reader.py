"""Loading: the payload read straight into the caller's memory, layer by layer.

Each layer is checked on a helper thread while the next is read; both release the GIL.
"""

from __future__ import annotations

import dataclasses
import io
import os
import zlib
from pathlib import Path

from mmkit.storage.files import identity, open_regular, reason
from mmkit.storage.format import FileHeader, check_spec, mismatch, read_header
from mmkit.storage.worker import Worker
from mmkit.values.config import DimensionSpec
from mmkit.values.errors import DataFileError, InvalidArgument


def read_header_file(path: Path | str) -> FileHeader:
    """The checked header of the file at ``path``, its length included; no payload is read."""
    with open_regular(path) as file:
        header = read_header(file, path)
        return dataclasses.replace(header, identity=identity(os.fstat(file.fileno())))


def _writable_bytes(target: memoryview, size: int) -> memoryview:
    if not isinstance(target, memoryview):
        raise InvalidArgument(f"the target must be a memoryview, not {type(target).__name__}")
    if target.readonly:
        raise InvalidArgument("the target must be writable")
    if not target.c_contiguous:
        raise InvalidArgument("the target must be C-contiguous")
    if target.nbytes != size:
        raise InvalidArgument(f"the target is {target.nbytes} bytes, expected {size}")
    return target.cast("B")


def _require_match(
    header: FileHeader, spec: DimensionSpec, layer_size: int, path: Path | str
) -> None:
    """Check 16: the file holds the dimension the configuration expects, in its layer size."""
    if header.dimension != spec.id:
        raise DataFileError(path, f"holds dimension {header.dimension}, expected {spec.id}")
    if header.size != spec.size:
        raise DataFileError(path, f"holds {header.size} bytes for {spec.id}, expected {spec.size}")
    if header.layer_size != layer_size:
        raise DataFileError(path, f"has layers of {header.layer_size} bytes, expected {layer_size}")


def _fill(file: io.RawIOBase, layer: memoryview, path: Path | str, index: int) -> None:
    """Read until ``layer`` is full; a file that ends first shrank since its length was checked."""
    filled = 0
    while filled < layer.nbytes:
        with layer[filled:] as rest:
            got = file.readinto(rest)
        if not got:
            raise DataFileError(path, f"truncated while reading layer {index}")
        filled += got


class _Layers:
    """The target's layers as slices, each checked against its stored CRC-32."""

    def __init__(self, stored: tuple[int, ...]) -> None:
        self.stored = stored
        self.slices: list[memoryview] = []
        self.mismatch: tuple[int, int, int] | None = None

    def check(self, index: int) -> bool:
        computed = zlib.crc32(self.slices[index])
        if computed != self.stored[index]:
            self.mismatch = (index, self.stored[index], computed)
            return False
        return True

    def release(self) -> None:
        """Let go of every slice (safe to repeat), so the target can be released."""
        for layer in self.slices:
            layer.release()


def _read_layers(
    file: io.RawIOBase,
    path: Path | str,
    header: FileHeader,
    view: memoryview,
    *,
    layers: _Layers,
    verifier: Worker[int],
) -> None:
    """Read layer after layer into ``view``, handing each to the verifier, until one fails."""
    layer_size = header.layer_size
    file.seek(header.payload_offset)
    for index in range(header.layer_count):
        if verifier.failed:
            break
        layers.slices.append(view[index * layer_size : (index + 1) * layer_size])
        _fill(file, layers.slices[index], path, index)
        verifier.put(index)
    verifier.close(stop=False)


def read_dimension(
    path: Path | str, spec: DimensionSpec, layer_size: int, target: memoryview
) -> FileHeader:
    """Read a dimension's file into ``target`` (exactly ``spec.size`` bytes), verifying it.

    On any return or exception, KeyboardInterrupt included, the verifier thread has stopped and
    no slice of ``target`` is left, so it may be freed at once; on failure its bytes are junk.
    """
    spec = check_spec(spec)
    if isinstance(layer_size, bool) or not isinstance(layer_size, int) or layer_size <= 0:
        raise InvalidArgument(f"a layer size is a positive int, not {layer_size!r}")
    with _writable_bytes(target, spec.size) as view, open_regular(path) as file:
        header = read_header(file, path)
        _require_match(header, spec, layer_size, path)
        layers = _Layers(header.layer_checksums)
        verifier = Worker(layers.check)
        try:
            if header.layer_count > 1:
                verifier.start()
            _read_layers(file, path, header, view, layers=layers, verifier=verifier)
        except OSError as exc:
            raise DataFileError(path, f"read failed: {reason(exc)}") from exc
        finally:
            # Written out, not called, so no interrupt can strike before the loop catches it:
            # one is held until the verifier has stopped and the slices are released.
            interrupt: BaseException | None = None
            while True:
                try:
                    verifier.close(stop=True)
                    layers.release()
                    break
                except BaseException as exc:
                    if interrupt is None:
                        interrupt = exc
            if interrupt is not None:
                try:
                    raise interrupt
                finally:
                    interrupt = None  # no cycle through this frame's traceback
        if verifier.error is not None:
            raise verifier.error
        if layers.mismatch is not None:
            raise DataFileError(path, mismatch(*layers.mismatch))
        return dataclasses.replace(header, identity=identity(os.fstat(file.fileno())))
