"""What callers hand the manager as bytes or as a path, checked into exactly what it needs."""

from __future__ import annotations

import os
from pathlib import Path

from mmkit import storage
from mmkit.values.config import DimensionSpec
from mmkit.values.errors import InvalidSource

Fill = Path | memoryview | None
"""What a region is filled from: a data file, a caller's bytes, or nothing (zeros)."""


def exact_bytes(data: object, size: int, what: str, alternatives: str = "") -> memoryview:
    """``data`` as a flat ``'B'`` view of exactly ``size`` bytes; the caller releases it.

    ``InvalidSource`` otherwise, with no view of ``data`` left behind, so a refused
    ``bytearray`` can be resized at once.
    """
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidSource(
            f"{what} must be {alternatives}a bytes-like object of {size} bytes, "
            f"not {type(data).__name__}"
        ) from None
    except ValueError as exc:  # a released memoryview
        raise InvalidSource(f"{what} cannot be read: {exc}") from None
    with view:
        if not view.c_contiguous:
            problem = "is not contiguous (a strided view); pass a contiguous copy"
        elif view.nbytes != size:
            problem = f"is {view.nbytes} bytes; it must be {size} bytes"
        else:
            return view.cast("B")  # outlives ``view``: both share one managed buffer
    raise InvalidSource(f"{what} {problem}")


def resolve(spec: DimensionSpec, source: object, data_dir: Path | None) -> Fill:
    """What ``load_dimension(spec, source)`` fills the region from; the caller releases a view.

    None: the data directory's file, or zeros without one; a path; or exactly the
    dimension's size in bytes.
    """
    if source is None:
        return None if data_dir is None else storage.dimension_path(data_dir, spec)
    if isinstance(source, str | os.PathLike):
        return Path(storage.checked_path(source))
    what = f"source for {spec.id} ({spec.name})"
    return exact_bytes(source, spec.size, what, "None, a path or ")
