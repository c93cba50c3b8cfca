"""The lock-free read path under writers: every byte read is a byte that was published.

Many reader threads call ``access_layer`` while a writer updates layers, saves and evicts
dimensions, and at the end closes the manager under them. On a free-threaded build the
threads really run at once; on a GIL build they interleave at every switch interval.
"""

from __future__ import annotations

import random
import struct
import sys
import threading
import time
from pathlib import Path

from mmkit import DimensionId, InvalidState, LayerId, MmapManager
from tests.conftest import small_config

READERS = 8
ROUNDS = 6
READS_PER_ROUND = 200  # at least; readers go on until the writer's round is done too
UPDATES_PER_ROUND = 40
HELD_AT_MOST = 6
JOIN_SECONDS = 60.0

_HEADER = struct.Struct("<HHI")


def layer_bytes(layer: LayerId, version: int, size: int) -> bytes:
    """What layer ``layer`` holds at ``version``: a header naming both, then a fill byte."""
    dimension, index = layer
    fill = (dimension * 37 + index * 11 + version * 101) & 0xFF
    return _HEADER.pack(dimension, index, version) + bytes([fill]) * (size - _HEADER.size)


def version_of(view: memoryview) -> int:
    return int(_HEADER.unpack(view[: _HEADER.size])[2])


class Ledger:
    """Per layer, the newest version whose update has returned."""

    def __init__(self, layers: list[LayerId]) -> None:
        self.done = dict.fromkeys(layers, 0)
        self.failures: list[str] = []
        self.lock = threading.Lock()

    def fail(self, message: str) -> None:
        with self.lock:
            self.failures.append(message)


def check(ledger: Ledger, layer: LayerId, view: memoryview, floor: int, size: int) -> int:
    """A view must hold exactly one published version, no older than ``floor``."""
    version = version_of(view)
    if version < floor:
        ledger.fail(f"{layer}: read version {version} after version {floor} was published")
    if view != layer_bytes(layer, version, size):
        ledger.fail(f"{layer}: the bytes of version {version} are not the ones published")
    return version


def test_readers_see_only_published_bytes_while_writers_update_evict_and_close(
    tmp_path: Path,
) -> None:
    config = small_config()
    size = config.layer_size
    layers = [
        LayerId(spec.id, index)
        for spec in config.dimensions
        for index in range(spec.size // config.layer_size)
    ]
    ledger = Ledger(layers)
    manager = MmapManager(config)
    for spec in config.dimensions:
        manager.load_dimension(
            spec.id,
            b"".join(layer_bytes(layer, 0, size) for layer in layers if layer[0] == spec.id),
        )
    round_over = threading.Barrier(READERS + 1, timeout=JOIN_SECONDS)
    round_begins = threading.Barrier(READERS + 1, timeout=JOIN_SECONDS)
    written = [threading.Event() for _ in range(ROUNDS)]
    closed = threading.Event()
    reads = [0] * READERS
    after_close = [0] * READERS

    def reader(number: int) -> None:
        chooser = random.Random(number)
        held: list[tuple[LayerId, memoryview, int]] = []
        try:
            for round_number in range(ROUNDS):
                round_begins.wait()
                done = 0
                while done < READS_PER_ROUND or not written[round_number].is_set():
                    done += 1
                    if done % 32 == 0:
                        time.sleep(0)  # under a GIL, lets the writer in between switch intervals
                    layer = chooser.choice(layers)
                    floor = ledger.done[layer]
                    view = manager.access_layer(layer)
                    version = check(ledger, layer, view, floor, size)
                    reads[number] += 1
                    if len(held) < HELD_AT_MOST and chooser.random() < 0.1:
                        held.append((layer, view, version))
                    elif held and chooser.random() < 0.2:
                        old_layer, old, old_version = held.pop(chooser.randrange(len(held)))
                        if version_of(old) != old_version or old != layer_bytes(
                            old_layer, old_version, size
                        ):
                            ledger.fail(f"{old_layer}: a held view changed under its reader")
                        old.release()
                    del view
                for _, view, _ in held:
                    view.release()
                held.clear()
                round_over.wait()
            # The last round: the writer closes the manager while readers still read.
            round_begins.wait()
            while not closed.is_set() or after_close[number] < 50:
                layer = chooser.choice(layers)
                try:
                    view = manager.access_layer(layer)
                except InvalidState:
                    after_close[number] += 1
                    continue
                version = check(ledger, layer, view, 0, size)
                held.append((layer, view, version))
                if len(held) > HELD_AT_MOST:
                    held.pop(0)[1].release()
            for layer, view, version in held:  # what was read before the close is still there
                if view != layer_bytes(layer, version, size):
                    ledger.fail(f"{layer}: a view held across close changed")
                view.release()
        except Exception as exc:  # reported below, with the thread's number
            ledger.fail(f"reader {number}: {type(exc).__name__}: {exc}")
            round_over.abort()
            round_begins.abort()

    threads = [threading.Thread(target=reader, args=(n,), daemon=True) for n in range(READERS)]
    for thread in threads:
        thread.start()
    writer = random.Random(99)
    updates = evicted = refused = 0
    try:
        for round_number in range(ROUNDS):
            round_begins.wait()
            for _ in range(UPDATES_PER_ROUND):
                layer = writer.choice(layers)
                version = ledger.done[layer] + 1
                manager.update_layer(layer, layer_bytes(layer, version, size))
                ledger.done[layer] = version
                updates += 1
                if updates % 7 == 0:  # save and evict one, under the readers
                    dimension = DimensionId(layer[0])
                    manager.save_dimension(dimension, tmp_path / f"{dimension}.mmd")
                    if manager.evict(dimension):
                        evicted += 1
                    else:
                        refused += 1
            written[round_number].set()
            round_over.wait()
            # Between rounds no reader holds a view: every saved dimension can go, and the
            # next round starts with many readers loading it again at once.
            for spec in config.dimensions:
                if round_number % 2 == 0:
                    manager.save_dimension(spec.id, tmp_path / f"{spec.id}.mmd")
                    assert manager.evict(spec.id), f"{spec.id} could not be evicted"
        round_begins.wait()
        manager.update_layer(layers[0], layer_bytes(layers[0], ledger.done[layers[0]] + 1, size))
        manager.close()
    except threading.BrokenBarrierError:  # a reader failed: its failure is the story
        assert ledger.failures == [], "a reader failed"
        raise
    except BaseException:
        round_over.abort()  # so no reader waits for a round that will not come
        round_begins.abort()
        raise
    finally:
        closed.set()
        for thread in threads:
            thread.join(JOIN_SECONDS)
    assert not any(thread.is_alive() for thread in threads), "a reader hung"
    assert ledger.failures == []
    assert all(count >= ROUNDS * READS_PER_ROUND for count in reads)
    assert all(count >= 50 for count in after_close)
    assert updates == ROUNDS * UPDATES_PER_ROUND
    print(
        f"{sys.version.split()[0]}: {sum(reads)} verified reads, {updates} updates, "
        f"{evicted} evictions under readers ({refused} refused), {ROUNDS // 2 * 3} between rounds"
    )
