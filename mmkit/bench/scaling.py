"""Case 6: how init, load and access cost grow with the budget (threads: ``threads``)."""

from __future__ import annotations

import importlib
import mmap
import statistics
import time
from pathlib import Path
from typing import Any

from mmkit.bench.cases import BUDGET, per_call
from mmkit.bench.data import Dataset
from mmkit.bench.harness import Outcome, Settings, elapsed, interleave, repeat_one, table
from mmkit.manager import MmapManager
from mmkit.values.config import DEFAULT_DIMENSIONS, DimensionSpec, MemoryConfig
from mmkit.values.ids import LayerId
from mmkit.values.units import GiB, MiB

BUDGETS = (64 * MiB, 256 * MiB, 1 * GiB, 2 * GiB)


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


def _plot(path: Path, budgets: list[dict[str, float]]) -> bool:
    """Write the curves (SVG or PNG, by the name) if matplotlib is importable; else False."""
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
    except ImportError:
        return False
    matplotlib.use("Agg")
    pyplot: Any = importlib.import_module("matplotlib.pyplot")
    figure, axes = pyplot.subplots(figsize=(6, 4))
    sizes = [row["budget"] / MiB for row in budgets]
    for key, label in (
        ("init_ns", "init"),
        ("load_zero_ns", "load zero-filled"),
        ("load_bytes_ns", "load from bytes"),
    ):
        axes.plot(sizes, [row[key] / 1e6 for row in budgets], marker="o", label=label)
    axes.set(xscale="log", yscale="log", xlabel="budget (MiB)", ylabel="ms", title="budget")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
    return True


def scaling(settings: Settings, data: Dataset, plot: Path | None = None) -> Outcome:
    """Case 6: a plain table; an SVG of it when asked and matplotlib is there."""
    budgets = [_budget_row(settings, budget) for budget in BUDGETS]
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
    text = f"scaling with the budget (14 dimensions in proportion; medians)\n{budget_table}"
    if plot is not None:
        wrote = _plot(plot, budgets)
        text += f"\n\nplot: {plot}" if wrote else "\n\nplot: skipped (matplotlib not importable)"
    return Outcome([], text, {"budgets": budgets})
