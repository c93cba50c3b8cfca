"""``mmkit demo --workers N``: this process loads the dataset once, N others attach and check it.

The owner loads every dimension into shared memory and starts N workers with the "spawn"
context, handing each the pickled ``ShareHandle``. Each worker attaches, checks every layer
against the CRC-32 its file stores, and measures its PSS only once all of them have done
so: while every process maps the data, their PSS adds up to what they hold together.
"""

from __future__ import annotations

import os
import sys
import time
import zlib
from multiprocessing.connection import Connection
from typing import NamedTuple

from mmkit.bench.harness import table
from mmkit.bench.pss import pss
from mmkit.bench.spawned import Spawned, WorkerFailed
from mmkit.manager import MmapManager
from mmkit.manager.reader import attach
from mmkit.values.config import MemoryConfig
from mmkit.values.ids import LayerId
from mmkit.values.share import ShareHandle
from mmkit.values.units import format_size

DEFAULT_WORKERS = 4
MAX_WORKERS = 64
WORKER_SECONDS = 120.0
"""The most the workers get, from the first start to the last exit: the demo never hangs."""


class Verified(NamedTuple):
    """What a worker reports once it has read every layer."""

    attach_seconds: float
    verify_seconds: float
    layers: int
    mismatches: int


class Worker(NamedTuple):
    """One worker's row: its process, what it verified, its PSS (None where unknown)."""

    pid: int
    verified: Verified
    pss: int | None


def worker(link: Connection, handle: ShareHandle, expected: dict[LayerId, int]) -> None:
    """A worker process: attach, check every layer, then report its PSS when the owner asks."""
    started = time.perf_counter()
    reader = attach(handle)
    attached = time.perf_counter()
    with reader:
        mismatches = sum(
            zlib.crc32(reader.access_layer(layer)) != crc for layer, crc in expected.items()
        )
        verified = time.perf_counter() - attached
        link.send(Verified(attached - started, verified, len(expected), mismatches))
        link.recv()  # every process maps and has read everything: measure now
        link.send(pss())
        link.recv()  # every process has measured: let go


def run(config: MemoryConfig, expected: dict[LayerId, int], workers: int) -> int:
    """Share the dataset with ``workers`` processes and print the table; 0 if all layers match."""
    with MmapManager(config) as manager:
        started = time.perf_counter()
        for spec in config.dimensions:
            manager.load_dimension(spec.id)
        load_seconds = time.perf_counter() - started
        try:
            rows, owner = _share(manager.share(), expected, workers)
        except WorkerFailed as exc:
            print(f"mmkit: error: {exc}", file=sys.stderr)
            return 1
    print(
        f"owner: process {os.getpid()} loaded {format_size(config.dimensions_size)} "
        f"({len(config.dimensions)} dimensions, {len(expected)} layers) into shared memory in "
        f"{load_seconds * 1e3:.0f} ms;\n{workers} workers (spawned) attached by the pickled "
        "ShareHandle and checked every layer's CRC-32\n"
    )
    print(_render(rows, owner, config.dimensions_size))
    bad = [n for n, row in enumerate(rows, 1) if row.verified.mismatches]
    if bad:
        names = ", ".join(str(n) for n in bad)
        print(f"mmkit: error: layers that do not match their checksums in worker(s) {names}",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _share(
    handle: ShareHandle, expected: dict[LayerId, int], count: int
) -> tuple[list[Worker], int | None]:
    """Each worker's row and the owner's PSS, measured while every worker still maps the data."""
    with Spawned("worker", WORKER_SECONDS) as workers:
        workers.start(worker, [(handle, expected)] * count)
        verified: list[Verified] = workers.gather("attaching and verifying")
        workers.send("measure")
        owner = pss()
        sizes: list[int | None] = workers.gather("measuring its PSS")
        workers.send("done")
        pids = workers.pids
    rows = [Worker(*row) for row in zip(pids, verified, sizes, strict=True)]
    return rows, owner


def _render(rows: list[Worker], owner: int | None, data: int) -> str:
    """Per worker: attach, verify, PSS; the owner's PSS, the total, and N+1 private copies."""
    cells: list[tuple[str, ...]] = [
        (
            f"worker {n}",
            str(row.pid),
            f"{row.verified.attach_seconds * 1e3:.2f} ms",
            f"{row.verified.verify_seconds * 1e3:.0f} ms",
            str(row.verified.layers),
            str(row.verified.mismatches),
            _size(row.pss),
        )
        for n, row in enumerate(rows, 1)
    ]
    cells.append(("owner", str(os.getpid()), "", "", "", "", _size(owner)))
    sizes = [owner, *(row.pss for row in rows)]
    total = sum(size for size in sizes if size is not None) if None not in sizes else None
    copies = len(sizes)
    private = copies * data
    summary = [
        ("total", _size(total)),
        (f"{copies} private copies (estimate)", format_size(private)),
        ("saving", "n/a" if total is None else
         f"{format_size(private - total)} ({(private - total) / private:.0%})"),
    ]  # fmt: skip
    cells += [(label, "", "", "", "", "", value) for label, value in summary]
    headers = ("", "process", "attach", "verify", "layers", "mismatches", "PSS")
    return (
        f"{table(headers, cells)}\n\n"
        f"PSS (proportional set size) is measured while all {copies} processes map the data. "
        f"The estimate\ncounts {copies} × {format_size(data)} of data and nothing else: each "
        "private copy's interpreter would add to it."
    )


def _size(nbytes: int | None) -> str:
    return "n/a" if nbytes is None else format_size(nbytes)
