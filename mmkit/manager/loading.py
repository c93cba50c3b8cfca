"""Filling a dimension's region from a data file, a caller's bytes or zeros, verified.

The region is written through a writable lease, so the verifier threads' views of it are
counted like any reader's: whatever goes wrong, the region is given back only once no thread
can touch it any more. On success it is made read-only and gets the lease readers will see.
"""

from __future__ import annotations

from pathlib import Path

from mmkit import storage
from mmkit.manager.dimension import ZERO, LoadedDimension, Provenance, zero_checksums
from mmkit.manager.reclaim import Spans
from mmkit.manager.residency import check_reload
from mmkit.manager.sources import Fill
from mmkit.memory.lease import Lease
from mmkit.memory.region import Region
from mmkit.platform import PlatformError, Protection
from mmkit.values.config import DimensionSpec
from mmkit.values.errors import InvalidState, from_os_error
from mmkit.values.units import format_size


def load_region(
    spans: Spans,
    region: Region,
    spec: DimensionSpec,
    fill: Fill,
    *,
    expected: tuple[int, ...] | None = None,
) -> LoadedDimension:
    """Commit, fill, verify and protect a region; on any failure give it back as it was.

    ``expected``: the checksums a reload of a dropped dimension must bring back.
    """
    vm = spans.vm
    spans.settle(region.address, region.size, f"loading {spec.id}")
    try:
        vm.commit(region.address, region.size)
    except PlatformError as exc:
        spans.give_back(region.address, region.size)
        raise from_os_error(exc, f"committing {format_size(region.size)} for {spec.id}") from None
    filler = Lease(region.address, region.size, writable=True)
    header: storage.FileHeader | None = None
    try:
        target = filler.view()
        try:
            if isinstance(fill, Path):
                header = storage.read_dimension(fill, spec, region.layer_size, target)
                if expected is not None:
                    check_reload(spec.id, fill, header.layer_checksums, expected)
            elif fill is not None:
                target[:] = fill
        finally:
            target.release()
        if not filler.close():
            raise InvalidState(f"loading {spec.id}: its memory is still in use")
        vm.protect(region.address, region.size, Protection.READ)
    except BaseException as exc:
        spans.give_back(region.address, region.size, filler)
        if isinstance(exc, PlatformError):
            raise from_os_error(exc, f"loading {spec.id}") from None
        raise
    provenance: Provenance | None = None
    if isinstance(fill, Path) and header is not None:
        provenance = Provenance(fill.absolute(), header.layer_checksums, header.identity)
    elif fill is None:
        provenance = Provenance(ZERO, zero_checksums(region.layer_count, region.layer_size))
    return LoadedDimension(spec, region, provenance)
