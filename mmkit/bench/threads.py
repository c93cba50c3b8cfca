"""Case 7: reads from many threads at once, on this build and, if asked, beside another.

On a GIL build threads take turns; on free-threaded CPython (PEP 703) they run at once.
Each row is ``access_layer`` calls per second on one layer, all threads together, against
slicing a stdlib ``memoryview``; then a scan of all 14 dimensions on N threads against one.
``--beside PYTHON`` runs the same case in that interpreter and prints both side by side.
"""

from __future__ import annotations

import json
import mmap
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from itertools import repeat as forever
from pathlib import Path
from typing import Any

from mmkit.bench.cases import Access, scan_layers, slicer
from mmkit.bench.data import Dataset
from mmkit.bench.harness import Outcome, Settings, elapsed, interleave, table
from mmkit.manager import MmapManager
from mmkit.platform import FREE_THREADED
from mmkit.values.config import MemoryConfig
from mmkit.values.ids import LayerId
from mmkit.values.units import MiB

THREADS = (1, 2, 4, 8)
SCAN_THREADS = (2, 4)
BESIDE_SECONDS = 1800


def build() -> str:
    """Which CPython this is, as far as threads go."""
    if not FREE_THREADED:
        return f"{sys.version.split()[0]} GIL"
    enabled = getattr(sys, "_is_gil_enabled", lambda: True)()
    return f"{sys.version.split()[0]}t GIL {'on' if enabled else 'off'}"


def _threaded(accesses: list[Access], layer: LayerId, total: int) -> float:
    """Nanoseconds per access (wall time / all accesses), one thread per access function."""
    threads = len(accesses)
    each = max(1, total // threads)
    barrier = threading.Barrier(threads + 1)

    def work(access: Access) -> None:
        mine = LayerId(*layer)  # shared objects' reference counts contend on free threading
        barrier.wait()
        for _ in forever(None, each):
            access(mine)

    workers = [threading.Thread(target=work, args=(access,)) for access in accesses]
    for worker in workers:
        worker.start()
    barrier.wait()
    start = time.perf_counter_ns()
    for worker in workers:
        worker.join()
    return (time.perf_counter_ns() - start) / (each * threads)


def access_rows(settings: Settings) -> list[dict[str, float]]:
    """access_layer and a memoryview slice, calls per second, for each thread count."""
    total = settings.scale(200_000, 40_000)
    manager = MmapManager(MemoryConfig())
    stdlib = mmap.mmap(-1, 16 * MiB)
    # A memoryview per thread: on free-threaded CPython, threads slicing one memoryview lose
    # its export counts (CPython gh-127716), and the map could not be closed afterwards.
    wholes = [memoryview(stdlib) for _ in range(max(THREADS))]
    rows = []
    try:
        manager.load_dimension(1)
        layer = LayerId(1, 0)
        manager.access_layer(layer)
        for threads in THREADS:
            mine, theirs = interleave(
                partial(_threaded, [manager.access_layer] * threads, layer, total),
                partial(_threaded, [slicer(whole) for whole in wholes[:threads]], layer, total),
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
        for whole in wholes:
            whole.release()
        stdlib.close()
        manager.close()
    return rows


def scan_speedups(settings: Settings, data: Dataset) -> dict[int, float]:
    """Per thread count, how much faster all 14 dimensions are scanned than on one thread."""
    config = data.config()
    manager = MmapManager(config)
    speedups = {}
    try:
        for spec in config.dimensions:
            manager.load_dimension(spec.id)
        get = manager.access_layer
        per_dimension = sorted(
            (
                [LayerId(spec.id, index) for index in range(config.layer_count(spec.id))]
                for spec in config.dimensions
            ),
            key=len,
            reverse=True,
        )

        def serial() -> None:
            for layers in per_dimension:
                scan_layers(get, layers)

        for threads in SCAN_THREADS:
            with ThreadPoolExecutor(threads) as executor:

                def pooled(executor: ThreadPoolExecutor = executor) -> None:
                    list(executor.map(lambda layers: scan_layers(get, layers), per_dimension))

                many, one = interleave(
                    lambda: elapsed(pooled), lambda: elapsed(serial), settings.repeat
                )
            speedups[threads] = statistics.median(one) / statistics.median(many)
    finally:
        manager.close()
    return speedups


def _beside(python: str, settings: Settings) -> dict[str, Any]:
    """This case's results from another interpreter, run on the same source tree."""
    root = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory(prefix="mmkit-beside-") as scratch:
        report = Path(scratch) / "threads.json"
        command = [python, "-m", "mmkit", "bench", "threads", "--json", str(report)]
        command += ["--repeat", str(settings.repeat)] + (["--quick"] if settings.quick else [])
        env = dict(os.environ, PYTHONPATH=str(root))
        try:
            done = subprocess.run(
                command,
                env=env,
                capture_output=True,
                text=True,
                timeout=BESIDE_SECONDS,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"{python} could not run the threads case: {exc}") from None
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"{python} could not run the threads case: {tail[0]}")
        details: dict[str, Any] = json.loads(report.read_text())["details"]["threads"]
        return details


def _render(results: list[dict[str, Any]]) -> str:
    headers: tuple[str, ...] = ("threads",)
    for result in results:
        headers += (f"{result['build']}: access_layer/s", "× 1 thread", "slice/s")
    rows = []
    for index, threads in enumerate(THREADS):
        cells: tuple[str, ...] = (str(threads),)
        for result in results:
            row, first = result["access"][index], result["access"][0]
            cells += (
                f"{row['mmkit_per_s'] / 1e6:.2f} M",
                f"{row['mmkit_per_s'] / first['mmkit_per_s']:.2f}",
                f"{row['peer_per_s'] / 1e6:.2f} M",
            )
        rows.append(cells)
    for threads in SCAN_THREADS:
        cells = (f"scan ×{threads}",)
        for result in results:
            cells += ("", f"{result['scan'][str(threads)]:.2f}", "")
        rows.append(cells)
    return table(headers, rows)


def threads(settings: Settings, data: Dataset, beside: str | None = None) -> Outcome:
    """Case 7: the thread-scaling table of this build, and of ``beside``'s if given."""
    result: dict[str, Any] = {
        "build": build(),
        "access": access_rows(settings),
        "scan": {str(count): speedup for count, speedup in scan_speedups(settings, data).items()},
    }
    results = [result]
    if beside is not None:
        results.append(_beside(beside, settings))
    text = (
        "threads: access_layer calls per second on one layer, all threads together (medians);\n"
        "scan ×N: all 14 dimensions on N threads, speed-up over one thread\n"
        f"{_render(results)}"
    )
    return Outcome([], text, result)
