"""Generated data: the same bytes on every run, platform and Python version, at disk speed.

All randomness is SHAKE-256 of fixed labels (``specs/data-format.md``); every step runs in C.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from mmkit.storage.files import Temporary, checked_path, reason, save_target
from mmkit.storage.format import check_savable, dimension_path
from mmkit.storage.worker import Worker
from mmkit.storage.writer import stage
from mmkit.values.config import MemoryConfig
from mmkit.values.errors import DataFileError, InvalidArgument
from mmkit.values.ids import DimensionId

Progress = Callable[[int, int], None]

_VARIANTS = 8
_PIECES = 16
_MAX_SEED = (1 << 64) - 1


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


def _checked(config: object, seed: object) -> tuple[MemoryConfig, int]:
    """The configuration and seed, or ``InvalidArgument`` before anything is created."""
    if config is None:
        config = MemoryConfig()
    if not isinstance(config, MemoryConfig):
        raise InvalidArgument(f"config must be a MemoryConfig or None, not {config!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidArgument(f"seed must be an int, not {seed!r}")
    if not 0 <= seed <= _MAX_SEED:
        shown = str(seed) if seed.bit_length() <= 128 else f"an int of {seed.bit_length()} bits"
        raise InvalidArgument(f"seed must be in 0 … 2^64-1, not {shown}")
    for spec in config.dimensions:
        check_savable(spec, config.layer_size)
    return config, int(seed)


def _commit(temporary: Temporary) -> bool:
    temporary.commit()
    return True


def generate_dataset(
    directory: Path | str,
    config: MemoryConfig | None = None,
    *,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[DimensionId, Path]:
    """Write deterministic, varied data for every dimension: one file each, in ``directory``.

    Each file is written atomically. A helper thread fsyncs and renames each finished file
    while the next one is generated; a failure stops the run, and files already renamed
    stay (each is complete). ``progress(done, total)`` is called per layer.
    """
    config, seed = _checked(config, seed)
    if progress is not None and not callable(progress):
        raise InvalidArgument(f"progress must be callable or None, not {progress!r}")
    directory = Path(checked_path(directory))
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataFileError(directory, f"cannot create the directory: {reason(exc)}") from exc
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
    staged: list[Temporary] = []
    syncer = Worker(_commit)
    try:
        syncer.start()
        for spec in config.dimensions:
            if syncer.failed:
                break
            path = dimension_path(directory, spec)
            layers = (
                _generated_layer(sources, seed, int(spec.id), index, layer_size)
                for index in range(spec.size // layer_size)
            )
            staged.append(stage(save_target(path), spec, layer_size, layers, advance)[0])
            syncer.put(staged[-1])
            paths[spec.id] = path
    finally:
        # Files already staged are complete: they are committed even after an interrupt,
        # which is held until then. After a failed commit the rest are removed instead.
        interrupt: BaseException | None = None
        while True:
            try:
                syncer.close(stop=False)
                break
            except BaseException as exc:
                if interrupt is None:
                    interrupt = exc
        for temporary in staged:
            if not temporary.file.closed:
                temporary.discard()
        if interrupt is not None:
            try:
                raise interrupt
            finally:
                interrupt = None  # no cycle through this frame's traceback
    if syncer.error is not None:
        raise syncer.error
    return paths
