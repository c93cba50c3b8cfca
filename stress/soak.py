"""Leak soak: load/evict cycles over the default dataset, then create/close cycles.

The process's mapping count, address space and resident set are sampled every tenth of the
run after a warm-up, through each OS's own interface (``tests.osprobe``: procfs on Linux,
Mach on macOS, kernel32 on Windows); the first and last samples must agree within a few
mappings and MiB.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

from mmkit import DimensionId, LayerId, MemoryConfig, MiB, MmapManager
from stress.common import Options, Result, mib
from tests.osprobe import address_space_bytes, mapping_count, resident_bytes

DEFAULT_CYCLES = 10_000
SAMPLES = 10
MAX_MAPS_GROWTH = 4
MAX_BYTES_GROWTH = 4 * MiB
HOLD_PAST_CLOSE_EVERY = 10
WARMUP_SHARE = 10
"""A tenth of the cycles again runs before the first sample: the allocator's own arenas settle
first (free-threaded CPython's mimalloc reserves 72 MiB more within the first 2,000 cycles,
then stays flat for 18,000), so what the samples compare is growth per cycle, a leak."""


@dataclass(frozen=True)
class Sample:
    """Where the process stood after ``cycle`` cycles."""

    cycle: int
    maps: int
    vm_size: int
    vm_rss: int


def _sample(cycle: int) -> Sample:
    return Sample(cycle, mapping_count(), address_space_bytes(), resident_bytes())


def _soak(cycles: int, warmup: int, step: Callable[[int], None]) -> list[Sample]:
    """Run ``warmup`` cycles, then ``cycles`` more, sampling every tenth of them."""
    for n in range(warmup):
        step(n)
    every = max(1, cycles // SAMPLES)
    samples = [_sample(0)]
    for n in range(cycles):
        step(warmup + n)
        if (n + 1) % every == 0 or n + 1 == cycles:
            samples.append(_sample(n + 1))
    return samples


class LoadEvict:
    """Load a dimension from its file, check one layer's CRC, evict it; rotate dimensions."""

    def __init__(self, options: Options, mgr: MmapManager) -> None:
        self.mgr = mgr
        self.files = options.data.files
        self.crcs = options.data.crcs
        self.specs = mgr.config.dimensions
        self.wrong: list[str] = []

    def __call__(self, n: int) -> None:
        spec = self.specs[n % len(self.specs)]
        self.mgr.load_dimension(spec.id, self.files[spec.id])
        layer = LayerId(spec.id, n // len(self.specs) % (spec.size // self.mgr.config.layer_size))
        crc = zlib.crc32(self.mgr.access_layer(layer))
        if crc != self.crcs[layer]:
            self.wrong.append(f"cycle {n}: {layer} crc {crc:#010x}")
        if not self.mgr.evict(spec.id):
            self.wrong.append(f"cycle {n}: evict({spec.id}) refused")


class CreateClose:
    """Create a manager, load and read a dimension, use the pool, close; some views outlive it."""

    def __init__(self) -> None:
        self.config = MemoryConfig()
        self.wrong: list[str] = []

    def __call__(self, n: int) -> None:
        mgr = MmapManager(self.config)
        mgr.load_dimension(DimensionId(14))
        view = mgr.access_layer(LayerId(14, n % 4))
        block = mgr.allocate(4096, owner="soak")
        block.view[:4] = b"soak"
        mgr.free(block)
        if n % HOLD_PAST_CLOSE_EVERY:
            del view
            mgr.close()
            return
        mgr.close()
        if view[0] != 0 or view[-1] != 0:
            self.wrong.append(f"cycle {n}: a view that outlived close() changed")


def _series(result: Result, label: str, samples: list[Sample]) -> None:
    rows = {
        "cycle": [str(s.cycle) for s in samples],
        "maps": [str(s.maps) for s in samples],
        "size MiB": [f"{s.vm_size / MiB:.1f}" for s in samples],
        "resident MiB": [f"{s.vm_rss / MiB:.1f}" for s in samples],
    }
    width = max(len(cell) for cells in rows.values() for cell in cells)
    for name, cells in rows.items():
        result.figures[f"{label} {name}"] = " ".join(cell.rjust(width) for cell in cells)
    first, last = samples[0], samples[-1]
    grew = last.maps - first.maps, last.vm_size - first.vm_size, last.vm_rss - first.vm_rss
    result.check(
        f"{label}: mappings {first.maps} -> {last.maps} ({grew[0]:+d}, at most "
        f"+{MAX_MAPS_GROWTH}), size {grew[1] / MiB:+.1f} MiB, resident {grew[2] / MiB:+.1f} MiB "
        f"(each at most +{mib(MAX_BYTES_GROWTH)})",
        grew[0] <= MAX_MAPS_GROWTH and max(grew[1:]) <= MAX_BYTES_GROWTH,
    )


def _wrong(result: Result, label: str, wrong: list[str]) -> None:
    result.check(
        f"{label}: every cycle read the right bytes and was let go ({len(wrong)} bad)", not wrong
    )
    result.notes += wrong[:10]


def run(options: Options) -> Result:
    """``--cycles`` (10,000 by default) of each kind, with the process sampled throughout."""
    cycles = options.cycles if options.cycles is not None else DEFAULT_CYCLES
    result = Result("soak")
    result.figures["cycles"] = f"{cycles} of each kind, sampled after a warm-up"
    with MmapManager(MemoryConfig()) as mgr:
        load_evict = LoadEvict(options, mgr)
        warmup = max(2 * len(mgr.config.dimensions), cycles // WARMUP_SHARE)
        _series(result, "load/evict", _soak(cycles, warmup, load_evict))
        stats = mgr.stats()
        _wrong(result, "load/evict", load_evict.wrong)
        result.check(
            f"load/evict: nothing left loaded (data {stats.data}, committed {stats.committed}, "
            f"{stats.evictions} evictions for {cycles + warmup} cycles)",
            stats.data == 0 and stats.committed == 0 and stats.evictions == cycles + warmup,
        )
    create_close = CreateClose()
    _series(result, "create/close", _soak(cycles, max(100, cycles // WARMUP_SHARE), create_close))
    _wrong(result, "create/close", create_close.wrong)
    return result
