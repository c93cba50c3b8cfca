"""Case 6: how init, load and access cost grow with the budget, and access with threads."""

from __future__ import annotations

import importlib
import mmap
import statistics
import threading
import time
from functools import partial
from itertools import repeat as forever
from pathlib import Path
from typing import Any

from mmkit.bench.cases import BUDGET, Access, per_call, slicer
from mmkit.bench.data import Dataset
from mmkit.bench.harness import Outcome, Settings, elapsed, interleave, repeat_one, table
from mmkit.manager import MmapManager
from mmkit.values.config import DEFAULT_DIMENSIONS, DimensionSpec, MemoryConfig
from mmkit.values.ids import LayerId
from mmkit.values.units import GiB, MiB

BUDGETS = (64 * MiB, 256 * MiB, 1 * GiB, 2 * GiB)
THREADS = (1, 2, 4, 16, 64, 128)


def scaled_config(budget: int) -> MemoryConfig:
    """The default's 14 dimensions, each resized in proportion to ``budget`` (whole MiB)."""
    factor = budget / BUDGET
    dimensions = tuple(
        DimensionSpec(spec.id, spec.name, max(1, round(spec.size / MiB * factor)) * MiB)
        for spec in DEFAULT_DIMENSIONS
    )
    return MemoryConfig(limit=budget, dimensions=dimensions)


def _load_all(config: MemoryConfig, source: memoryview | None) -> float:
    """Nanoseconds to load every dimension: zero-filled, or copied from ``source``."""
    manager = MmapManager(config)
    try:
        start = time.perf_counter_ns()
        for spec in config.dimensions:
            manager.load_dimension(spec.id, None if source is None else source[: spec.size])
        return float(time.perf_counter_ns() - start)
    finally:
        manager.close()


def _budget_row(settings: Settings, budget: int) -> dict[str, float]:
    config = scaled_config(budget)
    repeat = settings.repeat
    init, peer = interleave(
        lambda: elapsed(lambda: MmapManager(config).close()),
        lambda: elapsed(lambda: mmap.mmap(-1, budget).close()),
        repeat,
    )
    zero = repeat_one(lambda: _load_all(config, None), repeat)
    largest = max(spec.size for spec in config.dimensions)
    source = memoryview(bytes(largest))
    copied = repeat_one(lambda: _load_all(config, source), repeat)
    source.release()
    manager = MmapManager(config)
    try:
        for spec in config.dimensions:
            manager.load_dimension(spec.id)
        layer = LayerId(1, 0)
        manager.access_layer(layer)
        calls = settings.scale(100_000, 20_000)
        access = repeat_one(per_call(manager.access_layer, layer, calls), repeat)
    finally:
        manager.close()
    return {
        "budget": budget,
        "data": config.dimensions_size,
        "init_ns": statistics.median(init),
        "mmap_init_ns": statistics.median(peer),
        "load_zero_ns": statistics.median(zero),
        "load_bytes_ns": statistics.median(copied),
        "access_ns": statistics.median(access),
    }


def _threaded(access: Access, layer: LayerId, threads: int, total: int) -> float:
    """Nanoseconds per access (wall time / all accesses) with ``threads`` threads at once."""
    each = max(1, total // threads)
    barrier = threading.Barrier(threads + 1)

    def work() -> None:
        barrier.wait()
        for _ in forever(None, each):
            access(layer)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    start = time.perf_counter_ns()
    for worker in workers:
        worker.join()
    return (time.perf_counter_ns() - start) / (each * threads)


def _thread_rows(settings: Settings) -> list[dict[str, float]]:
    total = settings.scale(200_000, 40_000)
    manager = MmapManager(MemoryConfig())
    stdlib = mmap.mmap(-1, 16 * MiB)
    whole = memoryview(stdlib)
    rows = []
    try:
        manager.load_dimension(1)
        layer = LayerId(1, 0)
        manager.access_layer(layer)
        peer = slicer(whole)
        for threads in THREADS:
            mine, theirs = interleave(
                partial(_threaded, manager.access_layer, layer, threads, total),
                partial(_threaded, peer, layer, threads, total),
                settings.repeat,
            )
            rows.append(
                {
                    "threads": threads,
                    "mmkit_per_s": 1e9 / statistics.median(mine),
                    "peer_per_s": 1e9 / statistics.median(theirs),
                }
            )
    finally:
        whole.release()
        stdlib.close()
        manager.close()
    return rows


def _plot(path: Path, budgets: list[dict[str, float]], threads: list[dict[str, float]]) -> bool:
    """Write both curves (SVG or PNG, by the name) if matplotlib is importable; else False."""
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
    except ImportError:
        return False
    matplotlib.use("Agg")
    pyplot: Any = importlib.import_module("matplotlib.pyplot")
    figure, (left, right) = pyplot.subplots(1, 2, figsize=(11, 4))
    sizes = [row["budget"] / MiB for row in budgets]
    for key, label in (
        ("init_ns", "init"),
        ("load_zero_ns", "load zero-filled"),
        ("load_bytes_ns", "load from bytes"),
    ):
        left.plot(sizes, [row[key] / 1e6 for row in budgets], marker="o", label=label)
    left.set(xscale="log", yscale="log", xlabel="budget (MiB)", ylabel="ms", title="budget")
    left.legend()
    counts = [row["threads"] for row in threads]
    right.plot(counts, [row["mmkit_per_s"] for row in threads], marker="o", label="access_layer")
    right.plot(counts, [row["peer_per_s"] for row in threads], marker="o", label="memoryview slice")
    right.set(xscale="log", xlabel="threads", ylabel="accesses/s", title="threads")
    right.legend()
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
    return True


def scaling(settings: Settings, data: Dataset, plot: Path | None = None) -> Outcome:
    """Case 6: a plain table per axis; an SVG of both when asked and matplotlib is there."""
    budgets = [_budget_row(settings, budget) for budget in BUDGETS]
    threads = _thread_rows(settings)
    budget_table = table(
        ("budget", "data", "init", "mmap init", "load zero", "load bytes", "copy", "access"),
        [
            (
                f"{row['budget'] / MiB:.0f} MiB",
                f"{row['data'] / MiB:.0f} MiB",
                f"{row['init_ns'] / 1e3:.0f} µs",
                f"{row['mmap_init_ns'] / 1e3:.0f} µs",
                f"{row['load_zero_ns'] / 1e6:.2f} ms",
                f"{row['load_bytes_ns'] / 1e6:.1f} ms",
                f"{row['data'] / row['load_bytes_ns']:.2f} GB/s",
                f"{row['access_ns']:.0f} ns",
            )
            for row in budgets
        ],
    )
    thread_table = table(
        ("threads", "access_layer/s", "slice/s", "mmkit/peer"),
        [
            (
                f"{row['threads']:.0f}",
                f"{row['mmkit_per_s'] / 1e6:.2f} M",
                f"{row['peer_per_s'] / 1e6:.2f} M",
                f"{row['mmkit_per_s'] / row['peer_per_s']:.2f}",
            )
            for row in threads
        ],
    )
    text = (
        "scaling with the budget (14 dimensions in proportion; medians)\n"
        f"{budget_table}\n\n"
        "scaling with threads (all threads calling access_layer on one layer; total)\n"
        f"{thread_table}"
    )
    if plot is not None:
        wrote = _plot(plot, budgets, threads)
        text += f"\n\nplot: {plot}" if wrote else "\n\nplot: skipped (matplotlib not importable)"
    return Outcome([], text, {"budgets": budgets, "threads": threads})
