"""128 threads against one manager under a 24 MiB cap: reads, updates, evictions, saves.

Readers mostly read the dimensions the writer updates, now and then any layer. Every read
is checked against a ledger of the bytes published for its layer: the writer records a new
CRC before it publishes and counts the update as done after; a reader notes how many
updates were done before its access and accepts only the CRCs from that version up to the
newest begun after it. Views a reader holds must keep their bytes.
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from mmkit import DimensionId, LayerId, LimitExceeded, MemoryConfig, MiB, MmapManager
from stress.common import Options, Result, mib, payload_crcs

DEFAULT_SECONDS = 60.0
THREADS = 128
UPDATED = (DimensionId(12), DimensionId(13), DimensionId(14))
RESIDENT_LIMIT = 24 * MiB
HOLD_CHANCE = 0.05
HOT_CHANCE = 0.97
READER_PAUSE = 0.1
WRITER_PAUSE = 0.002
EVICTOR_PAUSE = 0.005
MONITOR_PAUSE = 0.05
SAVE_EVERY = 10
JOIN_SECONDS = 60.0
KEPT_FAILURES = 20


class Ledger:
    """Per layer, every CRC published in order, and how many updates have finished."""

    def __init__(self, crcs: Mapping[LayerId, int]) -> None:
        self._lock = threading.Lock()
        self._history = {layer: [crc] for layer, crc in crcs.items()}
        self._done = dict.fromkeys(crcs, 0)

    def begin(self, layer: LayerId, crc: int) -> None:
        """An update of ``layer`` to bytes with ``crc`` is about to be published."""
        with self._lock:
            self._history[layer].append(crc)

    def end(self, layer: LayerId) -> None:
        """The update begun last has been published."""
        with self._lock:
            self._done[layer] += 1

    def abandon(self, layer: LayerId) -> None:
        """The update begun last failed: its bytes were never published."""
        with self._lock:
            self._history[layer].pop()

    def since(self, layer: LayerId) -> int:
        """The oldest version of ``layer`` that may still be published."""
        with self._lock:
            return self._done[layer]

    def accepted(self, layer: LayerId, since: int) -> list[int]:
        """CRCs that may be seen now by an access that started at version ``since``."""
        with self._lock:
            return self._history[layer][since:]

    def latest(self, layer: LayerId) -> int:
        """The CRC of the newest version (when no update is in flight)."""
        with self._lock:
            return self._history[layer][-1]


@dataclass
class Tally:
    """Counters and failures, shared by the threads."""

    reads: int = 0
    held_checks: int = 0
    updates: int = 0
    refused_updates: int = 0
    evictions: int = 0
    refused_evictions: int = 0
    saves: int = 0
    samples: int = 0
    peak_data: int = 0
    failures: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, **counts: int) -> None:
        """Add to counters."""
        with self.lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def fail(self, message: str) -> None:
        """Record a failure; the first few distinct messages are kept, with their counts."""
        with self.lock:
            self.failures += 1
            if message in self.kinds or len(self.kinds) < KEPT_FAILURES:
                self.kinds[message] = self.kinds.get(message, 0) + 1


@dataclass
class Shared:
    """Everything the threads work on."""

    mgr: MmapManager
    config: MemoryConfig
    ledger: Ledger
    layers: list[LayerId]
    saved: Path
    hot: list[LayerId] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    tally: Tally = field(default_factory=Tally)


def _guarded(shared: Shared, role: str, body: Callable[[], None]) -> Callable[[], None]:
    """``body`` as a thread target that records any exception as a failure and stops."""

    def target() -> None:
        try:
            body()
        except BaseException as exc:
            shared.tally.fail(f"{role}: {type(exc).__name__}: {exc}")

    return target


def _read_once(
    shared: Shared, rng: random.Random, held: list[tuple[LayerId, memoryview, int]]
) -> None:
    """Read one layer and check it; re-check the view held from last time; maybe hold this."""
    layer = rng.choice(shared.hot if rng.random() < HOT_CHANCE else shared.layers)
    since = shared.ledger.since(layer)
    view = shared.mgr.access_layer(layer)
    crc = zlib.crc32(view)
    accepted = shared.ledger.accepted(layer, since)
    if crc not in accepted:
        shared.tally.fail(f"read {layer}: crc {crc:#010x}, accepted {[hex(c) for c in accepted]}")
    if not view.readonly or view.nbytes != shared.config.layer_size:
        shared.tally.fail(f"read {layer}: readonly={view.readonly}, {view.nbytes} bytes")
    for old_layer, old_view, old_crc in held:
        if zlib.crc32(old_view) != old_crc:
            shared.tally.fail(f"a held view of {old_layer} changed under its reader")
    shared.tally.add(reads=1, held_checks=len(held))
    held.clear()
    if rng.random() < HOLD_CHANCE:
        held.append((layer, view, crc))


def _reader(shared: Shared, seed: int) -> None:
    """Read, mostly the updated dimensions, pausing between reads."""
    rng = random.Random(seed)
    held: list[tuple[LayerId, memoryview, int]] = []
    while not shared.stop.is_set():
        _read_once(shared, rng, held)
        time.sleep(READER_PAUSE)


def _writer(shared: Shared, seed: int) -> None:
    """Publish fresh random bytes for a random layer of an updated dimension, again and again."""
    rng = random.Random(seed)
    while not shared.stop.is_set():
        layer = rng.choice(shared.hot)
        data = rng.randbytes(shared.config.layer_size)
        shared.ledger.begin(layer, zlib.crc32(data))
        try:
            shared.mgr.update_layer(layer, data)
        except LimitExceeded:
            shared.ledger.abandon(layer)
            shared.tally.add(refused_updates=1)
        else:
            shared.ledger.end(layer)
            shared.tally.add(updates=1)
        time.sleep(WRITER_PAUSE)


def _evictor(shared: Shared, seed: int) -> None:
    """Evict a random dimension every few milliseconds."""
    rng = random.Random(seed)
    dimensions = [spec.id for spec in shared.config.dimensions]
    while not shared.stop.is_set():
        if shared.mgr.evict(rng.choice(dimensions)):
            shared.tally.add(evictions=1)
        else:
            shared.tally.add(refused_evictions=1)
        time.sleep(EVICTOR_PAUSE)


def _save_and_check(shared: Shared, dimension: DimensionId) -> None:
    """Save a dimension and check each saved layer is a version published during the save."""
    layers = [layer for layer in shared.layers if layer.dimension == dimension]
    since = {layer: shared.ledger.since(layer) for layer in layers}
    path = shared.mgr.save_dimension(dimension, shared.saved / f"d{int(dimension):02d}.mmkd")
    for layer, crc in zip(layers, payload_crcs(path), strict=True):
        if crc not in shared.ledger.accepted(layer, since[layer]):
            shared.tally.fail(f"saved {layer}: crc {crc:#010x} was not published during the save")
    shared.tally.add(saves=1)


def _monitor(shared: Shared, seed: int) -> None:
    """Sample ``stats().data``; every tenth round save an updated dimension and check the file."""
    rng = random.Random(seed)
    rounds = 0
    while not shared.stop.is_set():
        data = shared.mgr.stats().data
        if not 0 <= data <= shared.config.limit:
            shared.tally.fail(f"stats().data is {data}, outside [0, {shared.config.limit}]")
        with shared.tally.lock:
            shared.tally.peak_data = max(shared.tally.peak_data, data)
            shared.tally.samples += 1
        rounds += 1
        if rounds % SAVE_EVERY == 0:
            _save_and_check(shared, rng.choice(UPDATED))
        time.sleep(MONITOR_PAUSE)


def _threads(shared: Shared) -> list[threading.Thread]:
    roles: list[tuple[str, Callable[[Shared, int], None]]] = [
        ("writer", _writer),
        ("evictor", _evictor),
        ("monitor", _monitor),
    ]
    roles += [(f"reader-{n}", _reader) for n in range(THREADS - len(roles))]
    return [
        threading.Thread(
            target=_guarded(shared, role, partial(function, shared, seed)),
            name=f"stress-{role}",
            daemon=True,
        )
        for seed, (role, function) in enumerate(roles)
    ]


def _run_threads(shared: Shared, seconds: float, result: Result) -> bool:
    """Start every thread, let them work for ``seconds``, stop them; False if any hangs."""
    threads = _threads(shared)
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    shared.stop.set()
    deadline = time.monotonic() + JOIN_SECONDS
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [thread.name for thread in threads if thread.is_alive()]
    return result.check(
        f"all {len(threads)} threads stopped within {JOIN_SECONDS:.0f} s "
        f"({len(stuck)} stuck{': ' + ', '.join(stuck[:5]) if stuck else ''})",
        not stuck,
    )


def _report(shared: Shared, result: Result, seconds: float) -> None:
    """The figures, and the checks on what the threads saw."""
    tally = shared.tally
    stats = shared.mgr.stats()
    result.figures.update(
        {
            "threads": f"{THREADS}: {THREADS - 3} readers, a writer, an evictor, a saver/sampler",
            "duration": f"{seconds:.0f} s",
            "reads": f"{tally.reads} ({tally.reads / seconds:.0f}/s), every one verified",
            "held views re-verified": tally.held_checks,
            "updates": f"{tally.updates} published, {tally.refused_updates} refused (pool full)",
            "explicit evictions": f"{tally.evictions} done, {tally.refused_evictions} refused",
            "evictions (all, stats)": stats.evictions,
            "reloads (stats)": stats.reloads,
            "saves": tally.saves,
            "peak stats().data": f"{mib(tally.peak_data)} over {tally.samples} samples",
            "failures": tally.failures,
        }
    )
    result.notes += [f"{count} x {message}" for message, count in tally.kinds.items()]
    result.check(f"no failed read, save or call ({tally.failures} failures)", tally.failures == 0)
    result.check(
        "the run exercised reads, updates and saves",
        min(tally.reads, tally.updates, tally.saves) > 0,
    )
    result.check(
        "dimensions were evicted and loaded again",
        stats.evictions > 0 and stats.reloads > 0 and tally.evictions > 0,
    )


def _stale(shared: Shared) -> list[LayerId]:
    """Layers whose bytes now are not the newest published (call with no update in flight)."""
    mgr, ledger = shared.mgr, shared.ledger
    return [lay for lay in shared.layers if zlib.crc32(mgr.access_layer(lay)) != ledger.latest(lay)]


def _final_checks(shared: Shared, result: Result) -> None:
    """Quiescent: the newest bytes everywhere, then everything evictable with no leftovers."""
    mgr = shared.mgr
    for dimension in UPDATED:
        mgr.save_dimension(dimension, shared.saved / f"d{int(dimension):02d}.mmkd")
    wrong = _stale(shared)
    result.check(
        f"after the run every layer shows its newest bytes ({len(wrong)} wrong)", not wrong
    )
    kept = [d for d in mgr.stats().loaded if not mgr.evict(d)]
    stats = mgr.stats()
    result.check(
        f"with no reader left everything is evictable and nothing stays: {len(kept)} refused, "
        f"data {stats.data}, layer copies {stats.layer_copies}, pool used {stats.pool_used}",
        not kept and stats.data == 0 and stats.layer_copies == 0 and stats.pool_used == 0,
    )
    wrong = _stale(shared)
    result.check(f"loaded again, every layer is right ({len(wrong)} wrong)", not wrong)
    data = mgr.stats().data
    result.check(
        f"with nothing pinned the cap holds ({mib(data)} of {mib(RESIDENT_LIMIT)})",
        data <= RESIDENT_LIMIT,
    )


def run(options: Options) -> Result:
    """Run the threads for ``--seconds`` (60 by default) and check everything they saw."""
    seconds = options.seconds if options.seconds is not None else DEFAULT_SECONDS
    result = Result("concurrency")
    crcs = options.data.crcs
    config = MemoryConfig(data_dir=options.data.directory, resident_limit=RESIDENT_LIMIT)
    layers = sorted(crcs, key=lambda layer: (layer.dimension, layer.index))
    hot = [layer for layer in layers if layer.dimension in UPDATED]
    with tempfile.TemporaryDirectory(prefix="mmkit-saved-") as saved:
        mgr = MmapManager(config)
        shared = Shared(mgr, config, Ledger(crcs), layers, Path(saved), hot)
        stopped = False
        try:
            stopped = _run_threads(shared, seconds, result)
            _report(shared, result, seconds)
            if stopped:
                _final_checks(shared, result)
        finally:
            if stopped:  # a stuck thread may hold the manager's lock: close() would wait forever
                mgr.close()
    return result
