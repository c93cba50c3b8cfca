"""Case 7: 128 concurrent queries through ``mmkit.system``, and the manager's own RSS."""

from __future__ import annotations

import asyncio
import gc
import mmap
import os
import statistics
import time
import tracemalloc
from pathlib import Path

from mmkit.bench.data import Dataset
from mmkit.bench.harness import Goal, Outcome, Row, Settings, table
from mmkit.manager import MmapManager
from mmkit.system import ConsciousnessSystem
from mmkit.values.config import MemoryConfig
from mmkit.values.units import MiB

CONCURRENCY = 128
WORDS = (
    "feel", "think", "plan", "friend", "future", "meaning", "code", "music",
    "fair", "reflect", "climate", "hope", "calm", "threat", "memory", "idea",
)  # fmt: skip


def _texts(count: int) -> list[str]:
    """Deterministic, varied queries: one or two vocabulary words each."""
    texts = []
    for i in range(count):
        first = WORDS[i % len(WORDS)]
        second = WORDS[(i * 7 + 3) % len(WORDS)]
        texts.append(f"query {i}: how do I {first} about {second}?" if i % 3 else f"{first}?")
    return texts


def _quantile(values: list[float], fraction: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(fraction * 100) - 1]


def queries(settings: Settings, data: Dataset) -> Outcome:
    """128 ``process_query`` calls at once via ``asyncio.gather``: throughput, p50 and p99."""
    config = data.config()
    texts = _texts(CONCURRENCY)
    system = ConsciousnessSystem(config)
    for spec in config.dimensions:
        system.manager.load_dimension(spec.id)

    async def one(text: str) -> tuple[float, int]:
        start = time.perf_counter_ns()
        response = await system.process_query(text)
        return float(time.perf_counter_ns() - start), response.bytes_scanned

    async def alone(count: int) -> list[float]:
        return [(await one(text))[0] for text in texts[:count]]

    async def rounds(count: int) -> list[tuple[float, list[float], int]]:
        await asyncio.gather(*(one(text) for text in texts))
        results = []
        for _ in range(count):
            start = time.perf_counter_ns()
            done = await asyncio.gather(*(one(text) for text in texts))
            wall = float(time.perf_counter_ns() - start)
            results.append((wall, [ns for ns, _ in done], sum(n for _, n in done)))
        return results

    try:
        single = asyncio.run(alone(settings.scale(32, 8)))
        measured = asyncio.run(rounds(settings.repeat))
    finally:
        system.close()
    walls = [wall for wall, _, _ in measured]
    p50 = [_quantile(latencies, 0.50) for _, latencies, _ in measured]
    p99 = [_quantile(latencies, 0.99) for _, latencies, _ in measured]
    scanned = statistics.median(n for _, _, n in measured)
    wall = statistics.median(walls)
    goal = Goal("<", 100.0, " ms", "p99 ")
    rows = [
        Row("1 query alone: latency", statistics.median(single), None, None,
            samples={"alone": single}),
        Row(f"{CONCURRENCY} queries: wall per query", wall / CONCURRENCY, None, None,
            samples={"wall": walls}),
        Row(f"{CONCURRENCY} queries: p50 latency", statistics.median(p50), None, None,
            samples={"p50": p50}),
        Row(f"{CONCURRENCY} queries: p99 latency", statistics.median(p99), None, None, goal,
            goal.met(statistics.median(p99) / 1e6), {"p99": p99}),
    ]  # fmt: skip
    text = (
        f"{CONCURRENCY} concurrent queries: {CONCURRENCY / wall * 1e9:.1f} queries/s, "
        f"{scanned / wall:.2f} GB/s scanned ({scanned / CONCURRENCY / MiB:.1f} MiB per query), "
        f"{os.cpu_count()} CPUs"
    )
    return Outcome(
        rows,
        text,
        {"queries_per_s": CONCURRENCY / wall * 1e9, "bytes_per_round": scanned},
    )


def _rss() -> int:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * mmap.PAGESIZE


def _heap(config: MemoryConfig) -> tuple[int, int]:
    """Bytes the manager's Python objects take (tracemalloc): after init, after loading all."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        manager = MmapManager(config)
        after_init = tracemalloc.get_traced_memory()[0] - base
        for spec in config.dimensions:
            manager.load_dimension(spec.id)
        after_load = tracemalloc.get_traced_memory()[0] - base
        manager.close()
    finally:
        tracemalloc.stop()
    return after_init, after_load


def rss(settings: Settings, data: Dataset) -> Outcome:
    """The manager's bookkeeping in RSS: after init, and after loading all data beyond its bytes."""
    if not Path("/proc/self/statm").exists():
        return Outcome(text="rss: skipped (this system has no /proc/self/statm)")
    config = data.config()
    MmapManager(config).close()
    samples: dict[str, list[int]] = {"init": [], "loaded": [], "stdlib_loaded": []}
    for _ in range(max(3, settings.repeat // 2)):
        gc.collect()
        before = _rss()
        manager = MmapManager(config)
        after_init = _rss()
        for spec in config.dimensions:
            manager.load_dimension(spec.id)
        after_load = _rss()
        manager.close()
        del manager
        samples["init"].append(after_init - before)
        samples["loaded"].append(after_load - before - config.dimensions_size)
        gc.collect()
        before = _rss()
        maps = []
        for spec in config.dimensions:
            mapping = mmap.mmap(-1, spec.size)
            mapping[:] = data.payload(spec.id)
            maps.append(mapping)
        samples["stdlib_loaded"].append(_rss() - before - config.dimensions_size)
        for mapping in maps:
            mapping.close()
    heap_init, heap_loaded = _heap(config)
    kib = [
        ("RSS after init − before", samples["init"]),
        ("RSS after loading 14 dims − before − data", samples["loaded"]),
        ("RSS, stdlib mmaps with the same data − data", samples["stdlib_loaded"]),
        ("Python heap after init (tracemalloc)", [heap_init]),
        ("Python heap after loading 14 dims (tracemalloc)", [heap_loaded]),
    ]
    text = "manager bookkeeping (KiB)\n" + table(
        ("measure", "median", "max"),
        [
            (name, f"{statistics.median(values) / 1024:.0f}", f"{max(values) / 1024:.0f}")
            for name, values in kib
        ],
    )
    details = {"rss_bytes": samples, "heap_init": heap_init, "heap_loaded": heap_loaded}
    return Outcome(text=text, details=details)
