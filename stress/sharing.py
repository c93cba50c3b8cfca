"""Readers in other processes against an owner that updates, evicts and reloads, for a while.

The owner shares the default dataset under a resident limit that forces evictions, and
keeps updating layers (stamped with their id and a version), evicting and touching
dimensions. Each reader process reads random layers and checks every view: a layer holds
its file's bytes (the stored CRC-32) or a whole stamp of itself with a version no older than
the last it saw; views it keeps for a while must not change. At the end nothing of the
arena may be left in any process. Linux only (memfd).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import threading
import time

import mmkit
from mmkit import DimensionId, LayerId, MemoryConfig, MiB, MmapManager
from stress.common import ROOT, Options, Result

DEFAULT_SECONDS = 30.0
READERS = 6

READER = """
    import random, sys, time, zlib
    import mmkit
    from mmkit import LayerId, NotLoaded
    token, seconds, expected = sys.argv[1], float(sys.argv[2]), {}
    for item in sys.argv[3].split(","):
        dimension, index, crc = map(int, item.split(":"))
        expected[LayerId(dimension, index)] = crc
    reader = mmkit.attach(token)
    layers, seen, held = list(expected), {}, []
    reads = missing = 0
    rng = random.Random()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        layer = rng.choice(layers)
        try:
            view = reader.access_layer(layer)
        except NotLoaded:
            missing += 1  # evicted by the owner: it loads it again when it next reads it
            continue
        data = bytes(view)
        if zlib.crc32(data) != expected[layer]:
            head = data[:8]
            if data != head * (len(data) // 8) or head[:2] != bytes([layer[0], layer[1]]):
                sys.exit(f"{layer}: neither its file's bytes nor a whole stamp of it")
            version = int.from_bytes(head[2:6], "little")
            if version < seen.get(layer, 0):
                sys.exit(f"{layer}: version {version} after {seen[layer]}")
            seen[layer] = version
        reads += 1
        held.append((view, data))
        if len(held) > 32:
            old, kept = held.pop(rng.randrange(len(held)))
            if bytes(old) != kept:
                sys.exit("a view held by this reader changed")
            old.release()
    for view, kept in held:
        if bytes(view) != kept:
            sys.exit("a view held by this reader changed")
    print(reads, missing)
"""


def _stamp(layer: LayerId, version: int, size: int) -> bytes:
    head = bytes([layer.dimension, layer.index]) + version.to_bytes(4, "little") + b"\xa5\x5a"
    return head * (size // 8)


def _arena_users(inode: int) -> int:
    """How many processes map the arena with this inode."""
    users = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/maps") as maps:
                    users += any(
                        "mmkit-arena" in line and line.split()[4] == str(inode) for line in maps
                    )
            except OSError:
                continue
    return users


def _owner(mgr: MmapManager, stop: threading.Event, counts: dict[str, int]) -> None:
    """Update, evict and touch until told to stop; refusals are back-pressure, not errors."""
    rng = random.Random(7)
    config = mgr.config
    version = 0
    updated = [DimensionId(1), DimensionId(2)]  # updated dimensions cannot be dropped
    while not stop.is_set():
        choice = rng.random()
        try:
            if choice < 0.5:
                dimension = rng.choice(updated)
                layer = LayerId(dimension, rng.randrange(config.layer_count(dimension)))
                version += 1
                mgr.update_layer(layer, _stamp(layer, version, config.layer_size))
                counts["updates"] += 1
            elif choice < 0.7:
                mgr.evict(rng.choice(config.dimensions[2:]).id)
            else:
                spec = rng.choice(config.dimensions)
                mgr.access_layer(LayerId(spec.id, 0)).release()
        except mmkit.LimitExceeded:
            counts["refused"] += 1
        time.sleep(0.001)


def run(options: Options) -> Result:
    result = Result("sharing")
    if not sys.platform.startswith("linux"):
        result.skipped = "mmkit shares memory between processes on Linux only so far"
        return result
    seconds = options.seconds or DEFAULT_SECONDS
    data = options.data
    config = MemoryConfig(data_dir=data.directory, shared=True, resident_limit=96 * MiB)
    expected = ",".join(f"{int(d)}:{i}:{crc}" for (d, i), crc in data.crcs.items())
    counts = {"updates": 0, "refused": 0}
    stop = threading.Event()
    with MmapManager(config) as mgr:
        for spec in config.dimensions:
            mgr.load_dimension(spec.id)
        handle = mgr.share()
        token = str(handle)
        inode = os.stat(f"/proc/self/fd/{handle.handle}").st_ino
        readers = [
            subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(READER), token, str(seconds), expected],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            for _ in range(READERS)
        ]
        owner = threading.Thread(target=_owner, args=(mgr, stop, counts))
        owner.start()
        outcomes = [process.communicate(timeout=seconds + 120) for process in readers]
        stop.set()
        owner.join()
        stats = mgr.stats()
    reads = missing = 0
    for process, (out, err) in zip(readers, outcomes, strict=True):
        ok = process.returncode == 0
        result.check(f"reader {process.pid} verified every view (exit {process.returncode})", ok)
        if ok:
            done, gone = map(int, out.split())
            reads, missing = reads + done, missing + gone
        else:
            result.notes += err.strip().splitlines()[-3:]
    deadline = time.monotonic() + 10
    while _arena_users(inode) and time.monotonic() < deadline:
        time.sleep(0.1)
    result.check("no process maps the arena once all are closed", _arena_users(inode) == 0)
    result.figures.update(
        {
            "readers": READERS,
            "verified reads": reads,
            "reads of evicted dimensions (NotLoaded)": missing,
            "owner updates": counts["updates"],
            "owner evictions (resident_limit and evict)": stats.evictions,
            "updates refused (spare layers pinned)": counts["refused"],
            "spare layers free at the end": f"{stats.spare_layers_free}/{stats.spare_layers}",
        }
    )
    result.check(
        "the owner updated and evicted meanwhile", counts["updates"] > 0 and stats.evictions > 0
    )
    return result
