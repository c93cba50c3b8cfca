"""Cases 1–5: mmkit against the stdlib doing the same job, interleaved in one process."""

from __future__ import annotations

import mmap
import os
import struct
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import repeat as forever

from mmkit.bench.data import HEADER, Dataset
from mmkit.bench.harness import (
    Goal,
    Outcome,
    Settings,
    compare,
    elapsed,
    interleave,
    interleave_all,
    speedup,
    table,
)
from mmkit.manager import MmapManager
from mmkit.platform import PAGE_SIZE, populated_stdlib_map
from mmkit.values.config import MemoryConfig
from mmkit.values.errors import LimitExceeded
from mmkit.values.ids import LayerId
from mmkit.values.units import MiB

LAYER = 1 * MiB
BUDGET = 280 * MiB

Access = Callable[[LayerId], memoryview]


def per_call(access: Access, layer: LayerId, calls: int) -> Callable[[], float]:
    """A sample: ns per call of ``access(layer)`` over ``calls`` calls in a tight loop."""

    def sample() -> float:
        start = time.perf_counter_ns()
        for _ in forever(None, calls):
            access(layer)
        return (time.perf_counter_ns() - start) / calls

    return sample


def slicer(view: memoryview) -> Access:
    """The stdlib peer of ``access_layer``: slice a layer out of one memoryview."""

    def access(layer: LayerId) -> memoryview:
        start = layer.index * LAYER
        return view[start : start + LAYER]

    return access


def against_slices(
    access: Access, layer: LayerId, calls: int, repeat: int
) -> tuple[list[float], list[float]]:
    """ns per call of ``access(layer)`` and of slicing a layer out of a memoryview of a stdlib
    mmap, interleaved."""
    stdlib = mmap.mmap(-1, 16 * MiB)
    whole = memoryview(stdlib)
    try:
        access(layer)
        return interleave(
            per_call(access, layer, calls), per_call(slicer(whole), layer, calls), repeat
        )
    finally:
        whole.release()
        stdlib.close()


def access(settings: Settings, data: Dataset) -> Outcome:
    """Case 1: ``access_layer`` against slicing a memoryview of a stdlib mmap (1 MiB layers)."""
    calls = settings.scale(200_000, 50_000)
    manager = MmapManager(MemoryConfig())
    try:
        manager.load_dimension(1)
        mine, theirs = against_slices(
            manager.access_layer, LayerId(1, 3), calls, settings.repeat * 3
        )
    finally:
        manager.close()
    return Outcome(
        [compare("access_layer vs memoryview slice (per call)", mine, theirs, Goal("≤", 2.0))]
    )


def init(settings: Settings, data: Dataset) -> Outcome:
    """Case 2: initialising the 280 MiB budget, plain and prefaulted, against ``mmap.mmap``."""
    batch = settings.scale(20, 5)

    def manager() -> float:
        start = time.perf_counter_ns()
        for _ in range(batch):
            MmapManager(MemoryConfig()).close()
        return (time.perf_counter_ns() - start) / batch

    def stdlib() -> float:
        start = time.perf_counter_ns()
        for _ in range(batch):
            mmap.mmap(-1, BUDGET).close()
        return (time.perf_counter_ns() - start) / batch

    def manager_prefault() -> float:
        return elapsed(lambda: MmapManager(MemoryConfig(prefault=True)).close())

    def stdlib_populate() -> float:
        def run() -> None:
            mapping = populated_stdlib_map(BUDGET)
            assert mapping is not None
            mapping.close()

        return elapsed(run)

    plain = interleave(manager, stdlib, settings.repeat * 3)
    rows = [compare("init+close 280 MiB vs mmap(-1, 280 MiB)", *plain)]
    probe = populated_stdlib_map(PAGE_SIZE)
    if probe is not None:
        probe.close()
        faulted = interleave(manager_prefault, stdlib_populate, settings.repeat)
        rows.append(compare("prefault init+close vs MAP_POPULATE", *faulted, Goal("≤", 0.4)))
    return Outcome(rows)


def _stdlib_load(paths: list[os.PathLike[str]]) -> list[mmap.mmap]:
    """The naive stdlib load: anonymous mmap, readinto at the payload, crc32 per layer."""
    maps = []
    for path in paths:
        with open(path, "rb", buffering=0) as file:
            fields = HEADER.unpack(file.read(HEADER.size))
            size, layer_size, count, offset = fields[6:10]
            stored = struct.unpack(f"<{count}I", file.read(4 * count))
            mapping = mmap.mmap(-1, size)
            view = memoryview(mapping)
            file.seek(offset)
            filled = 0
            while filled < size:
                got = file.readinto(view[filled:])
                if not got:
                    raise EOFError(path)
                filled += got
            for index, crc in enumerate(stored):
                if zlib.crc32(view[index * layer_size : (index + 1) * layer_size]) != crc:
                    raise ValueError(f"{path}: layer {index} checksum mismatch")
            view.release()
            maps.append(mapping)
    return maps


def load(settings: Settings, data: Dataset) -> Outcome:
    """Case 3: load and verify all 14 page-cached dimension files, against the naive stdlib way."""
    config = data.config()
    paths: list[os.PathLike[str]] = [data.paths[spec.id] for spec in config.dimensions]

    def manager() -> float:
        mgr = MmapManager(config)
        try:
            start = time.perf_counter_ns()
            for spec in config.dimensions:
                mgr.load_dimension(spec.id)
            return float(time.perf_counter_ns() - start)
        finally:
            mgr.close()

    def stdlib() -> float:
        start = time.perf_counter_ns()
        maps = _stdlib_load(paths)
        taken = float(time.perf_counter_ns() - start)
        for mapping in maps:
            mapping.close()
        return taken

    data.warm()
    mine, theirs = interleave(manager, stdlib, settings.repeat)
    return Outcome(
        [compare("load+verify 14 dims (page cache) vs readinto", mine, theirs, Goal("≤", 0.7))]
    )


def scan_layers(access: Access, layers: list[LayerId]) -> int:
    """crc32 of each layer through ``access``, combined: a scan a reader would do."""
    crc = 0
    for layer in layers:
        crc ^= zlib.crc32(access(layer))
    return crc


def _scan_bytes(payload: bytes) -> int:
    view = memoryview(payload)
    crc = 0
    for start in range(0, len(payload), LAYER):
        crc ^= zlib.crc32(view[start : start + LAYER])
    return crc


def scan(settings: Settings, data: Dataset) -> Outcome:
    """Case 4: crc32 over a 16 MiB dimension; then all 14 on a thread pool against one thread."""
    config = data.config()
    manager = MmapManager(config)
    payload = data.payload(1)
    stdlib = mmap.mmap(-1, len(payload))
    stdlib[:] = payload
    whole = memoryview(stdlib)
    threads = os.cpu_count() or 1
    executor = ThreadPoolExecutor(threads)
    try:
        for spec in config.dimensions:
            manager.load_dimension(spec.id)
        get = manager.access_layer
        ones = [LayerId(1, index) for index in range(config.layer_count(1))]
        if scan_layers(get, ones) != scan_layers(slicer(whole), ones):
            raise AssertionError("the mmkit and stdlib scans disagree")
        single = interleave(
            lambda: elapsed(lambda: scan_layers(get, ones)),
            lambda: elapsed(lambda: scan_layers(slicer(whole), ones)),
            settings.repeat * 5,
        )
        per_dimension = [
            [LayerId(spec.id, index) for index in range(config.layer_count(spec.id))]
            for spec in config.dimensions
        ]
        per_dimension.sort(key=len, reverse=True)

        def pooled() -> None:
            list(executor.map(lambda layers: scan_layers(get, layers), per_dimension))

        def serial() -> None:
            for layers in per_dimension:
                scan_layers(get, layers)

        copies = [data.payload(spec.id) for spec in config.dimensions]
        copies.sort(key=len, reverse=True)
        many, one, stdlib_many, stdlib_one = interleave_all(
            [
                lambda: elapsed(pooled),
                lambda: elapsed(serial),
                lambda: elapsed(lambda: list(executor.map(_scan_bytes, copies))),
                lambda: elapsed(lambda: [_scan_bytes(payload) for payload in copies]),
            ],
            settings.repeat * 2,
        )
    finally:
        executor.shutdown()
        whole.release()
        stdlib.close()
        manager.close()
    return Outcome(
        [
            compare("scan 16 MiB crc32 vs stdlib mmap slices", *single, Goal("≤", 1.05)),
            speedup(f"scan 14 dims: {threads} threads vs 1 (speed-up)", many, one, Goal("≥", 1.8)),
            speedup(f"  same, stdlib bytes: {threads} threads vs 1", stdlib_many, stdlib_one),
        ]
    )


SIZES = (64, 80, 100, 256, 1000, 3000, 4096, 5000, 64 * 1024, 1 * MiB, 8 * MiB)
SMALL_POOL = MemoryConfig(limit=148 * MiB + 8 * MiB)


def _fill(config: MemoryConfig, size: int) -> tuple[int, int, int, int]:
    """Allocate ``size``-byte blocks until the pool is full: blocks, block bytes, pool size, ns."""
    manager = MmapManager(config)
    blocks = []
    allocate = manager.allocate
    start = time.perf_counter_ns()
    try:
        while True:
            blocks.append(allocate(size))
    except LimitExceeded:
        taken = time.perf_counter_ns() - start
        stats = manager.stats()
        return len(blocks), stats.pool_block_bytes, stats.pool_size, taken
    finally:
        manager.close()
        blocks.clear()


def pool(settings: Settings, data: Dataset) -> Outcome:
    """Case 5: allocate+free of 4 KiB against ``bytearray(4096)``, then the fill ratio per size."""
    pairs = settings.scale(20_000, 5_000)
    manager = MmapManager(MemoryConfig())
    allocate, free = manager.allocate, manager.free

    def mine() -> float:
        start = time.perf_counter_ns()
        for _ in forever(None, pairs):
            free(allocate(4096))
        return (time.perf_counter_ns() - start) / pairs

    def theirs() -> float:
        start = time.perf_counter_ns()
        for _ in forever(None, pairs):
            bytearray(4096)
        return (time.perf_counter_ns() - start) / pairs

    try:
        timing = interleave(mine, theirs, settings.repeat * 3)
    finally:
        manager.close()
    rows: list[tuple[str, ...]] = []
    fills = []
    for size in SIZES:
        config = SMALL_POOL if size < 64 * 1024 else MemoryConfig()
        count, block_bytes, pool_size, taken = _fill(config, size)
        fills.append(
            {
                "size": size,
                "blocks": count,
                "pool_size": pool_size,
                "block_fill": block_bytes / pool_size,
                "requested_fill": count * size / pool_size,
                "ns_per_allocate": taken / max(count, 1),
            }
        )
        rows.append(
            (
                f"{size}",
                f"{pool_size // MiB} MiB",
                f"{count}",
                f"{block_bytes / pool_size:.3f}",
                f"{count * size / pool_size:.3f}",
                f"{taken / max(count, 1) / 1e3:.2f} µs",
            )
        )
    text = "pool fill until LimitExceeded (equal blocks)\n" + table(
        ("size", "pool", "blocks", "block bytes/pool", "requested/pool", "per allocate"), rows
    )
    return Outcome(
        [compare("pool allocate(4096)+free vs bytearray(4096)", *timing, Goal("≤", 3.0))],
        text,
        {"fill": fills},
    )
