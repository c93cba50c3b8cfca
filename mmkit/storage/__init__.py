"""Dimension data files: a checked header, then the payload at a 64 KiB boundary.

The format is written out byte by byte in ``specs/data-format.md``. Loading copies the
payload into the region with ``readinto`` and verifies a CRC-32 per layer; the file is
never mapped, so truncating it later cannot raise SIGBUS in a reader. Writes go to a
temporary file that is fsynced and renamed over the final name, so a crash leaves the old
file or the new one under that name, never a mix.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import operator
import os
import re
import secrets
import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
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
# payload offset; then one u32 CRC-32 per layer, then the CRC-32 of everything before it.
_FIXED = struct.Struct("<8sHHII64sQQIQ")
_CRC = struct.Struct("<I")
_CHUNK = 1 << 20
_VARIANTS = 8
_PIECES = 16

Progress = Callable[[int, int], None]
Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class FileHeader:
    """What a data file says about itself, after its header checksum was verified."""

    dimension: DimensionId
    name: str
    size: int
    layer_size: int
    layer_checksums: tuple[int, ...]
    payload_offset: int

    @property
    def layer_count(self) -> int:
        """Number of layers, one stored checksum each."""
        return len(self.layer_checksums)

    @property
    def file_size(self) -> int:
        """The exact length a file with this header must have."""
        return self.payload_offset + self.size


def dimension_filename(spec: DimensionSpec) -> str:
    """``d01-emotion.mmkd``: the id, then the name lowercased with other characters as ``-``."""
    slug = re.sub(r"[^a-z0-9]+", "-", spec.name.lower()).strip("-") or "dimension"
    return f"d{int(spec.id):02d}-{slug}{SUFFIX}"


def dimension_path(directory: Path | str, spec: DimensionSpec) -> Path:
    """Where a dimension's file lives inside a data directory."""
    return Path(directory) / dimension_filename(spec)


def _header_length(layer_count: int) -> int:
    return _FIXED.size + 4 * layer_count


def _payload_offset(layer_count: int) -> int:
    end = _header_length(layer_count) + _CRC.size
    return -(-end // PAYLOAD_ALIGNMENT) * PAYLOAD_ALIGNMENT


def _stored_name(name: str) -> bytes:
    """The name as stored: UTF-8, cut to ``NAME_BYTES`` at a character boundary."""
    encoded = name.encode("utf-8")[:NAME_BYTES]
    return encoded.decode("utf-8", "ignore").encode("utf-8")


def encode_header(
    dimension: DimensionId,
    name: str,
    size: int,
    layer_size: int,
    layer_checksums: Sequence[int],
) -> bytes:
    """The header bytes up to and including the header checksum, without the zero padding.

    Names longer than ``NAME_BYTES`` UTF-8 bytes are stored cut short (the id identifies
    the dimension; the name is for people). Impossible fields are a ``ValueError``.
    """
    count = len(layer_checksums)
    if not 0 < count <= MAX_LAYERS:
        raise ValueError(f"a data file has 1 to {MAX_LAYERS} layers, not {count}")
    if layer_size <= 0 or size != count * layer_size:
        raise ValueError(f"{count} layers of {layer_size} bytes do not make {size} bytes")
    try:
        body = _FIXED.pack(
            MAGIC,
            FORMAT_VERSION,
            0,
            _header_length(count),
            int(dimension),
            _stored_name(name),
            size,
            layer_size,
            count,
            _payload_offset(count),
        ) + struct.pack(f"<{count}I", *layer_checksums)
    except struct.error as exc:
        raise ValueError(f"a header field is out of range: {exc}") from None
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


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _parse_header(file: BinaryIO, path: Path | str) -> tuple[FileHeader, int]:
    """The verified header and the file's length; every check but the length itself."""
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
    if length != _header_length(count):
        raise DataFileError(
            path, f"corrupt header: header length {length}, expected {_header_length(count)}"
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
    if offset % PAYLOAD_ALIGNMENT or offset < header_end:
        raise DataFileError(path, f"corrupt header: payload offset {offset}")
    try:
        name = raw_name.rstrip(b"\0").decode("utf-8")
    except UnicodeDecodeError:
        raise DataFileError(path, "corrupt header: the name is not UTF-8") from None
    position = header_end
    while position < offset:
        chunk = file.read(min(offset - position, _CHUNK))
        if not chunk:
            break
        nonzero = len(chunk) - len(chunk.lstrip(b"\0"))
        if nonzero < len(chunk):
            raise DataFileError(
                path,
                f"corrupt padding: non-zero byte at offset {position + nonzero} "
                "between the header and the payload",
            )
        position += len(chunk)
    checksums = struct.unpack(f"<{count}I", rest[: 4 * count])
    header = FileHeader(DimensionId(dimension), name, size, layer_size, checksums, offset)
    return header, actual


def _length_problem(header: FileHeader, actual: int) -> str | None:
    expected = header.file_size
    if actual < expected:
        return f"truncated: {actual} bytes, expected {expected}"
    if actual > expected:
        return f"{actual - expected} trailing bytes after the payload"
    return None


def _mismatch(index: int, stored: int, computed: int) -> str:
    return f"layer {index} checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"


def read_header(file: BinaryIO, path: Path | str) -> FileHeader:
    """Read and check a header: magic, version, fields, checksum, padding and file length.

    ``file`` is any seekable binary file; ``path`` names it in errors.
    """
    try:
        header, actual = _parse_header(file, path)
    except OSError as exc:
        raise DataFileError(path, f"read failed: {_reason(exc)}") from exc
    problem = _length_problem(header, actual)
    if problem is not None:
        raise DataFileError(path, problem)
    return header


def _open(path: Path | str) -> io.FileIO:
    """Unbuffered, so ``readinto`` fills the caller's memory straight from the kernel."""
    try:
        return io.FileIO(path, "rb")
    except OSError as exc:
        raise DataFileError(path, f"cannot open: {_reason(exc)}") from exc


def _writable_bytes(target: memoryview, size: int) -> memoryview:
    if target.readonly:
        raise ValueError("the target must be writable")
    if not target.c_contiguous:
        raise ValueError("the target must be C-contiguous")
    if target.nbytes != size:
        raise ValueError(f"the target is {target.nbytes} bytes, expected {size}")
    return target.cast("B")


def read_dimension(
    path: Path | str, spec: DimensionSpec, layer_size: int, target: memoryview
) -> FileHeader:
    """Read a dimension's file into ``target`` (exactly ``spec.size`` bytes), verifying it.

    On failure the target's bytes are unspecified; the caller discards them.
    """
    with _writable_bytes(target, spec.size) as view, _open(path) as file:
        header = read_header(file, path)
        if header.dimension != spec.id:
            raise DataFileError(path, f"holds dimension {header.dimension}, expected {spec.id}")
        if header.size != spec.size:
            raise DataFileError(
                path, f"holds {header.size} bytes for {spec.id}, expected {spec.size}"
            )
        if header.layer_size != layer_size:
            raise DataFileError(
                path, f"has layers of {header.layer_size} bytes, expected {layer_size}"
            )
        checks: list[tuple[int, memoryview, Future[int]]] = []
        try:
            file.seek(header.payload_offset)
            for index in range(header.layer_count):
                layer = view[index * layer_size : (index + 1) * layer_size]
                filled = 0
                while filled < layer_size:
                    got = file.readinto(layer[filled:])
                    if not got:
                        layer.release()
                        raise DataFileError(path, f"truncated while reading layer {index}")
                    filled += got
                checks.append((index, layer, _verifier().submit(zlib.crc32, layer)))
        except OSError as exc:
            raise DataFileError(path, f"read failed: {_reason(exc)}") from exc
        finally:
            # Every check must be over before the caller can see an error, since on one
            # it takes the memory the checks are reading away.
            wait([future for _, _, future in checks])
            for _, layer, _ in checks:
                layer.release()
        for index, _, future in checks:
            stored = header.layer_checksums[index]
            computed = future.result()
            if computed != stored:
                raise DataFileError(path, _mismatch(index, stored, computed))
        return header


_VERIFIERS: list[ThreadPoolExecutor] = []
_VERIFIERS_LOCK = threading.Lock()


def _verifier() -> ThreadPoolExecutor:
    """Threads that check layers while the next ones are read (zlib releases the GIL)."""
    with _VERIFIERS_LOCK:
        if not _VERIFIERS:
            _VERIFIERS.append(
                ThreadPoolExecutor(os.cpu_count() or 2, thread_name_prefix="mmkit-verify")
            )
        return _VERIFIERS[0]


@dataclass(slots=True)
class _Staged:
    """A complete temporary file, still open, waiting to be synced and renamed."""

    path: Path
    temporary: Path
    file: BinaryIO

    def discard(self) -> None:
        self.file.close()
        with contextlib.suppress(OSError):
            os.unlink(self.temporary)


def _create_temporary(path: Path) -> tuple[Path, BinaryIO]:
    """A new hidden file beside ``path``, created like ``open(..., "wb")`` (umask applies)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(temporary, flags, 0o666)
        except FileExistsError:
            continue
        try:
            return temporary, open(fd, "wb", buffering=0)
        except BaseException:
            os.close(fd)
            raise
    raise FileExistsError(f"no free temporary name beside {path}")


def _write_all(file: BinaryIO, data: Buffer) -> None:
    with memoryview(data) as raw, raw.cast("B") as view:
        written = 0
        while written < view.nbytes:
            written += file.write(view[written:])


def _stage(
    path: Path,
    spec: DimensionSpec,
    layer_size: int,
    layers: Iterable[Buffer],
    advance: Callable[[int], None] | None = None,
) -> _Staged:
    """Write zero padding, the layers and then the header into a new temporary file.

    The header goes last, into the space the padding kept for it, so the layer checksums
    are computed in the one pass that writes the payload.
    """
    count = spec.size // layer_size if layer_size > 0 else 0
    if not 0 < count <= MAX_LAYERS or count * layer_size != spec.size:
        raise ValueError(
            f"{spec.id} ({spec.size} bytes) is not 1 to {MAX_LAYERS} layers of {layer_size}"
        )
    try:
        temporary, file = _create_temporary(path)
    except OSError as exc:
        raise DataFileError(path, f"cannot create a temporary file: {_reason(exc)}") from exc
    staged = _Staged(path, temporary, file)
    try:
        _write_all(file, bytes(_payload_offset(count)))
        checksums: list[int] = []
        for layer in layers:
            with memoryview(layer) as data:
                if data.nbytes != layer_size:
                    raise ValueError(f"a layer is {data.nbytes} bytes, expected {layer_size}")
                if len(checksums) == count:
                    raise ValueError(f"more than the {count} layers of {spec.id}")
                checksums.append(zlib.crc32(data))
                _write_all(file, data)
            if advance is not None:
                advance(layer_size)
        if len(checksums) != count:
            raise ValueError(f"{len(checksums)} layers given, {spec.id} has {count}")
        file.seek(0)
        _write_all(file, encode_header(spec.id, spec.name, spec.size, layer_size, checksums))
    except BaseException as exc:
        staged.discard()
        if isinstance(exc, OSError):
            raise DataFileError(path, f"write failed: {_reason(exc)}") from exc
        raise
    return staged


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable; skipped where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _commit(staged: _Staged) -> Path:
    """fsync the temporary file, rename it over the final name, fsync the directory."""
    try:
        with staged.file:
            os.fsync(staged.file.fileno())
        os.replace(staged.temporary, staged.path)
    except BaseException as exc:
        staged.discard()
        if isinstance(exc, OSError):
            raise DataFileError(staged.path, f"write failed: {_reason(exc)}") from exc
        raise
    _fsync_directory(staged.path.parent)
    return staged.path


def write_layers(
    path: Path | str, spec: DimensionSpec, layer_size: int, layers: Iterable[Buffer]
) -> FileHeader:
    """Write a dimension file atomically from its layers, in order, in one pass."""
    _commit(_stage(Path(path), spec, layer_size, layers))
    return read_header_file(path)


def read_header_file(path: Path | str) -> FileHeader:
    with _open(path) as file:
        return read_header(file, path)


def check_savable(spec: DimensionSpec, layer_size: int) -> None:
    pass


def write_dimension(path: Path | str, spec: DimensionSpec, layer_size: int, data: Buffer) -> Path:
    """Write a dimension file atomically from one buffer of exactly ``spec.size`` bytes."""
    with memoryview(data) as whole:
        if whole.nbytes != spec.size:
            raise ValueError(f"data is {whole.nbytes} bytes, {spec.id} is {spec.size}")
        if layer_size <= 0:
            raise ValueError(f"layer size must be positive, not {layer_size}")
        with whole.cast("B") as view:
            layers = (view[i : i + layer_size] for i in range(0, spec.size, layer_size))
            return write_layers(path, spec, layer_size, layers)


def _draw(label: str, nbytes: int) -> bytes:
    """``nbytes`` of SHAKE-256 of a label: the dataset's only source of randomness."""
    return hashlib.shake_256(f"mmkit-dataset/v1/{label}".encode()).digest(nbytes)


def _permutation(ranks: bytes) -> bytes:
    """A byte permutation: the 256 values ordered by 256 two-byte ranks (ties by value)."""
    keys = [ranks[i : i + 2] for i in range(0, 512, 2)]
    return bytes(sorted(range(256), key=keys.__getitem__))


def _sources(seed: int, layer_size: int) -> tuple[memoryview, ...]:
    """``_VARIANTS`` random pools of twice the layer size, each through its own permutation."""
    pool = _draw(f"{seed}/{layer_size}/pool", 2 * layer_size)
    return tuple(
        memoryview(pool.translate(_permutation(_draw(f"{seed}/{layer_size}/variant/{v}", 512))))
        for v in range(_VARIANTS)
    )


def _generated_layer(
    sources: tuple[memoryview, ...], seed: int, dimension: int, index: int, layer_size: int
) -> bytes:
    """One layer: ``_PIECES`` windows, each of a random source at a random offset.

    It depends only on (seed, layer size, dimension, index), and costs one copy.
    """
    draw = _draw(f"{seed}/{layer_size}/{dimension}/{index}", 8 * _PIECES)
    pieces = []
    for piece in range(_PIECES):
        low, high = piece * layer_size // _PIECES, (piece + 1) * layer_size // _PIECES
        number = int.from_bytes(draw[8 * piece : 8 * piece + 8], "little")
        source = sources[number % _VARIANTS]
        start = number // _VARIANTS % (len(source) - (high - low) + 1)
        pieces.append(source[start : start + high - low])
    return b"".join(pieces)


def generate_dataset(
    directory: Path | str,
    config: MemoryConfig | None = None,
    *,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[DimensionId, Path]:
    """Write deterministic, varied data for every dimension: one file each, in ``directory``.

    Each file is written atomically. A background thread fsyncs and renames each finished
    file while the next one is generated; a failure stops the run, and files already
    renamed stay (each is complete). ``progress(done, total)`` is called per layer.
    """
    config = MemoryConfig() if config is None else config
    seed = operator.index(seed)
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataFileError(directory, f"cannot create the directory: {_reason(exc)}") from exc
    layer_size = config.layer_size
    sources = _sources(seed, layer_size)
    total = config.dimensions_size
    done = 0

    def advance(nbytes: int) -> None:
        nonlocal done
        done += nbytes
        if progress is not None:
            progress(done, total)

    paths: dict[DimensionId, Path] = {}
    commits: list[Future[Path]] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmkit-sync") as syncer:
        for spec in config.dimensions:
            if any(c.done() and c.exception() is not None for c in commits):
                break
            path = dimension_path(directory, spec)
            layers = (
                _generated_layer(sources, seed, int(spec.id), index, layer_size)
                for index in range(spec.size // layer_size)
            )
            commits.append(syncer.submit(_commit, _stage(path, spec, layer_size, layers, advance)))
            paths[spec.id] = path
    for commit in commits:
        commit.result()
    return paths


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
        """The report ``mmkit inspect`` prints."""
        lines = [f"file            {self.path}"]
        header = self.header
        if self.file_size is not None:
            lines.append(f"file size       {self.file_size} bytes")
        if header is not None:
            lines += [
                f"dimension       {header.dimension} ({header.name})",
                f"size            {header.size} bytes in {header.layer_count} layers of "
                f"{header.layer_size}",
                f"payload offset  {header.payload_offset}",
                "layer  stored      computed",
            ]
            for layer in self.layers:
                computed = "missing" if layer.computed is None else f"{layer.computed:#010x}"
                mark = "ok" if layer.ok else "MISMATCH"
                lines.append(f"{layer.index:5d}  {layer.stored:#010x}  {computed:<10}  {mark}")
        lines.append(f"verdict         {self.verdict}")
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
    """Check a data file without loading it anywhere; never raises for a bad file."""
    path = Path(path)
    size: int | None = None
    try:
        with _open(path) as file:
            size = file.seek(0, os.SEEK_END)
            header, _ = _parse_header(file, path)
            checks = _check_layers(file, header)
    except DataFileError as exc:
        return Inspection(path, None, size, (), False, exc.problem)
    except OSError as exc:
        return Inspection(path, None, size, (), False, f"read failed: {_reason(exc)}")
    problem = _length_problem(header, size)
    if problem is None:
        bad = next((c for c in checks if not c.ok), None)
        if bad is not None and bad.computed is not None:
            problem = _mismatch(bad.index, bad.stored, bad.computed)
        elif bad is not None:
            problem = f"truncated while reading layer {bad.index}"
    return Inspection(path, header, size, checks, problem is None, problem or "ok")
