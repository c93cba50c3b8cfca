"""How fast ``generate_dataset`` writes the default dataset, against the plain I/O floor.

Run from the project root: ``python -m benchmarks.bench_generate [--runs 5] [--dir DIR]``.
Each figure is the median of the runs, in MB/s (10^6 bytes per second) of dimension data.
The floors write as many bytes of zeros, one ``open(...).write(bytes(size))`` per
dimension file: once as is, and once with the ``fsync`` an atomic writer must pay.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mmkit import MemoryConfig, generate_dataset
from mmkit.storage import dimension_path


def _generate(directory: Path, config: MemoryConfig) -> None:
    generate_dataset(directory, config)


def _plain_write(directory: Path, config: MemoryConfig) -> None:
    for spec in config.dimensions:
        with open(dimension_path(directory, spec), "wb") as file:
            file.write(bytes(spec.size))


def _synced_write(directory: Path, config: MemoryConfig) -> None:
    for spec in config.dimensions:
        with open(dimension_path(directory, spec), "wb") as file:
            file.write(bytes(spec.size))
            file.flush()
            os.fsync(file.fileno())


def _median_rate(
    work: Callable[[Path, MemoryConfig], None], config: MemoryConfig, runs: int, where: str | None
) -> float:
    rates = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(dir=where) as directory:
            started = time.perf_counter()
            work(Path(directory), config)
            rates.append(config.dimensions_size / (time.perf_counter() - started) / 1e6)
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", help="where the temporary directories go (default: the OS's)")
    args = parser.parse_args()
    config = MemoryConfig()
    print(f"default dataset: {config.dimensions_size / 2**20:.0f} MiB, median of {args.runs} runs")
    generated = _median_rate(_generate, config, args.runs, args.dir)
    plain = _median_rate(_plain_write, config, args.runs, args.dir)
    synced = _median_rate(_synced_write, config, args.runs, args.dir)
    print(f"generate_dataset              {generated:8.0f} MB/s")
    print(f"floor: write zeros            {plain:8.0f} MB/s   ratio {generated / plain:.2f}")
    print(f"floor: write zeros + fsync    {synced:8.0f} MB/s   ratio {generated / synced:.2f}")


if __name__ == "__main__":
    main()
