"""The sharing case's timings: attach, a reader's ``access_layer``, publish-to-visible.

This process owns a shared manager with the dataset loaded. One spawned reader times
``mmkit.attach`` against opening a ``SharedMemory`` of the same size by name, interleaved,
and its ``access_layer`` against slicing a memoryview; this process does the same for the
owner's ``access_layer``. Then the owner stamps a layer with ``update_layer`` while readers
spin on ``access_layer`` and note when each stamp first shows; CLOCK_MONOTONIC
(``time.monotonic_ns``) is one clock for every process on the machine.
"""

from __future__ import annotations

import itertools
import multiprocessing
import statistics
import struct
import time
from functools import partial
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any

from mmkit.bench.cases import against_slices
from mmkit.bench.data import Dataset
from mmkit.bench.harness import Outcome, Row, Settings, compare, format_ns, interleave, table
from mmkit.bench.share_peers import open_shared_memory
from mmkit.bench.spawned import Spawned
from mmkit.manager import MmapManager
from mmkit.manager.reader import attach
from mmkit.values.config import MemoryConfig
from mmkit.values.ids import LayerId
from mmkit.values.share import ShareHandle

SECONDS = 120.0
"""The most the spawned readers of each measurement get: the case never hangs."""
LAYER = LayerId(1, 3)
STAMPED = LayerId(1, 0)
STAMP = struct.Struct("<Q")
LAST = (1 << 64) - 1
"""The stamp that tells the watching readers to stop."""
PAUSE = 0.001
"""Seconds between updates, so that readers see most stamps rather than only the latest."""


def _attach_ns(handle: ShareHandle) -> float:
    start = time.perf_counter_ns()
    reader = attach(handle)
    taken = time.perf_counter_ns() - start
    reader.close()
    return float(taken)


def _open_ns(name: str) -> float:
    start = time.perf_counter_ns()
    memory = open_shared_memory(name)
    taken = time.perf_counter_ns() - start
    memory.close()
    return float(taken)


def probe(link: Connection, handle: ShareHandle, name: str, settings: Settings) -> None:
    """A reader process: attach against SharedMemory open, then access_layer against a slice."""
    attaches, calls = settings.scale(200, 50), settings.scale(200_000, 50_000)
    repeat = settings.repeat * 3
    opened = interleave(partial(_attach_ns, handle), partial(_open_ns, name), attaches)
    with attach(handle) as reader:
        accessed = against_slices(reader.access_layer, LAYER, calls, repeat)
    link.send((opened, accessed))


def watch(link: Connection, handle: ShareHandle) -> None:
    """A reader process: spin on access_layer and note when each new stamp first shows."""
    seen: list[tuple[int, int]] = []
    with attach(handle) as reader:
        link.send("watching")
        last = 0
        end = time.monotonic() + SECONDS
        parent = multiprocessing.parent_process()
        for turn in itertools.count():
            if last == LAST or time.monotonic() > end:
                break
            if turn % 4096 == 0 and parent is not None and not parent.is_alive():
                return  # the owner's process is gone: nobody will read what we saw
            (stamp,) = STAMP.unpack_from(reader.access_layer(STAMPED))
            if stamp != last:
                seen.append((stamp, time.monotonic_ns()))
                last = stamp
    link.send(seen)


def _quantile(values: list[float], fraction: float) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(fraction * 100) - 1]


def _signed(ns: float) -> str:
    return f"−{format_ns(-ns)}" if ns < 0 else format_ns(ns)


def timings(manager: MmapManager, settings: Settings) -> list[Row]:
    """Attach and open latency (p50, p99) and access_layer per call, reader and owner."""
    calls, repeat = settings.scale(200_000, 50_000), settings.repeat * 3
    memory = SharedMemory(create=True, size=manager.config.dimensions_size)
    try:
        with Spawned("probe reader", SECONDS) as group:
            group.start(probe, [(manager.share(), memory.name, settings)])
            ((opened, accessed),) = group.gather("timing attach and access_layer")
    finally:
        memory.close()
        memory.unlink()
    owned = against_slices(manager.access_layer, LAYER, calls, repeat)
    attach_ns, open_ns = opened
    p99 = _quantile(attach_ns, 0.99), _quantile(open_ns, 0.99)
    return [
        compare("attach vs SharedMemory(name) open, p50", attach_ns, open_ns),
        Row("  same, p99", *p99, p99[0] / p99[1], samples={"mmkit": attach_ns, "peer": open_ns}),
        compare("reader access_layer vs memoryview slice", *accessed),
        compare("owner access_layer vs memoryview slice", *owned),
    ]


def publish(manager: MmapManager, settings: Settings, readers: int) -> tuple[str, dict[str, Any]]:
    """Publish-to-visible: per round, p50 and p99 over all readers; medians of the rounds."""
    rounds, per_round = settings.repeat, settings.scale(100, 30)
    page = bytearray(manager.config.layer_size)
    returned: dict[int, int] = {}
    calls: list[float] = []
    manager.update_layer(STAMPED, page)  # stamp 0, where the watchers start
    with Spawned("watching reader", SECONDS) as group:
        group.start(watch, [(manager.share(),)] * readers)
        group.gather("attaching")
        for stamp in [*range(1, rounds * per_round + 1), LAST]:
            STAMP.pack_into(page, 0, stamp)
            start = time.monotonic_ns()
            manager.update_layer(STAMPED, page)
            returned[stamp] = time.monotonic_ns()
            calls.append(float(returned[stamp] - start))
            time.sleep(PAUSE)
        seen: list[list[tuple[int, int]]] = group.gather("watching")
    lags: list[list[float]] = [[] for _ in range(rounds)]
    for stamp, when in (pair for pairs in seen for pair in pairs):
        if stamp != LAST:
            lags[(stamp - 1) // per_round].append(float(when - returned[stamp]))
    shown = sum(len(round_) for round_ in lags)
    p50 = statistics.median(_quantile(lag, 0.50) for lag in lags if lag)
    p99 = statistics.median(_quantile(lag, 0.99) for lag in lags if lag)
    quantiles: list[tuple[str, ...]] = [
        ("update_layer (owner)", format_ns(_quantile(calls, 0.50)),
         format_ns(_quantile(calls, 0.99))),
        ("seen − update_layer returned", _signed(p50), _signed(p99)),
    ]  # fmt: skip
    text = (
        f"publish → visible: the owner stamps {STAMPED} with update_layer every "
        f"{PAUSE * 1e3:g} ms; {readers} readers spin on access_layer\n"
        f"and note when each stamp first shows (CLOCK_MONOTONIC; medians of {rounds} rounds "
        f"of {per_round}; below 0: seen before update_layer returned)\n"
        f"{table(('', 'p50', 'p99'), quantiles)}\n"
        f"stamps seen: {shown} of {rounds * per_round * readers} (a reader skips a stamp "
        "replaced before it looked)"
    )
    return text, {"publish_p50_ns": p50, "publish_p99_ns": p99, "update_ns": calls}


def measure(settings: Settings, data: Dataset, readers: int) -> Outcome:
    """The timing rows, and the publish-to-visible table, against one shared owner here."""
    config = MemoryConfig(data_dir=data.directory, shared=True)
    with MmapManager(config) as manager:
        for spec in config.dimensions:
            manager.load_dimension(spec.id)
        rows = timings(manager, settings)
        text, details = publish(manager, settings, readers)
    return Outcome(rows, text, details)
