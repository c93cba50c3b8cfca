"""Case: N processes reading one dataset, through mmkit's sharing and its peers.

For N readers, each peer (``share_peers``) runs an owner and N spawned readers that each
read all 148 layers; once all have, the PSS of every one of those processes is summed, so
shared pages count once. Wall time runs from starting the readers to the last one done.
Then, beside their stdlib peers: attach latency, a reader's ``access_layer`` and
publish-to-visible latency (``share_latency``). Linux only: PSS is read from ``/proc``.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import NamedTuple

from mmkit.bench import share_latency
from mmkit.bench.data import Dataset
from mmkit.bench.harness import Outcome, Settings, format_ns, table
from mmkit.bench.pss import pss
from mmkit.bench.share_peers import Layers, Peer, has_lmdb, idle, peers
from mmkit.bench.spawned import Spawned
from mmkit.platform import SHARING
from mmkit.storage import dimension_path, read_header_file
from mmkit.values.ids import LayerId
from mmkit.values.units import format_size

READERS = (1, 2, 4, 8)
SESSION_SECONDS = 120.0
"""The most one owner and its readers get, start to exit: the case never hangs."""


class Session(NamedTuple):
    """One run of a peer with N readers: PSS of all its processes (and their share of shared
    memory alone), and its wall time in ns."""

    pss: int
    wall: float
    shmem: int = 0


def checksums(data: Dataset) -> Layers:
    """Every layer of the dataset in file order, with the CRC-32 its file stores."""
    config = data.config()
    found: list[tuple[LayerId, int]] = []
    for spec in config.dimensions:
        header = read_header_file(dimension_path(data.directory, spec))
        found += [(LayerId(spec.id, i), crc) for i, crc in enumerate(header.layer_checksums)]
    return Layers(config.layer_size, tuple(found))


def _total_pss(pids: list[int], kind: str = "Pss") -> int:
    return sum(size for size in (pss(pid, kind) for pid in pids) if size is not None)


def session(peer: Peer, readers: int, directory: Path, layers: Layers) -> Session:
    """An owner (if the peer has one) and ``readers`` readers, measured once all have read."""
    with (
        Spawned(f"{peer.name} owner", SESSION_SECONDS) as owner,
        Spawned(f"{peer.name} reader", SESSION_SECONDS) as group,
    ):
        source: object = directory
        if peer.owner is not None:
            owner.start(peer.owner, [(directory, layers)])
            source = owner.gather("making the data")[0]
        started = time.perf_counter_ns()
        group.start(peer.reader, [(source, layers)] * readers)
        group.gather("reading every layer")
        wall = float(time.perf_counter_ns() - started)
        total = _total_pss(owner.pids + group.pids)
        shmem = _total_pss(owner.pids + group.pids, "Pss_Shmem")
        group.send("done")
        owner.send("done")
    return Session(total, wall, shmem)


def baseline() -> int:
    """PSS of a spawned worker that holds no data: the interpreter and its imports."""
    with Spawned("idle worker", SESSION_SECONDS) as group:
        group.start(idle, [()])
        group.gather("starting")
        size = _total_pss(group.pids)
        group.send("done")
    return size


def measure(
    data: Dataset, counts: tuple[int, ...], rounds: int
) -> dict[int, dict[str, list[Session]]]:
    """Per reader count and peer, the sessions of every round; peers interleaved in each."""
    layers = checksums(data)
    for peer in peers():
        session(peer, 1, data.directory, layers)  # warm-up: imports and files in the page cache
    results: dict[int, dict[str, list[Session]]] = {}
    for readers in counts:
        per_peer: dict[str, list[Session]] = {peer.name: [] for peer in peers()}
        for _ in range(rounds):
            for peer in peers():
                per_peer[peer.name].append(session(peer, readers, data.directory, layers))
        results[readers] = per_peer
    return results


def _render(results: dict[int, dict[str, list[Session]]], data_size: int) -> str:
    rows: list[tuple[str, ...]] = []
    for readers, per_peer in results.items():
        ours = next(iter(per_peer.values()))  # mmkit's: peers() lists it first
        ours_pss = statistics.median(s.pss for s in ours)
        ours_wall = statistics.median(s.wall for s in ours)
        for name, sessions in per_peer.items():
            total = statistics.median(s.pss for s in sessions)
            shmem = statistics.median(s.shmem for s in sessions)
            wall = statistics.median(s.wall for s in sessions)
            rows.append(
                (
                    str(readers),
                    name,
                    format_size(round(total)),
                    f"{total / data_size:.2f}",
                    f"{total / ours_pss:.2f}",
                    f"{shmem / data_size:.2f}" if shmem else "—",
                    format_ns(wall),
                    f"{wall / ours_wall:.2f}",
                )
            )
    headers = (
        "readers",
        "peer",
        "total PSS",
        "÷ data",
        "× mmkit",
        "shared ÷ data",
        "wall",
        "× mmkit",
    )
    return table(headers, rows)


def share(settings: Settings, data: Dataset, workers_max: int = max(READERS)) -> Outcome:
    """The case: PSS and wall time for 1 to ``workers_max`` readers, then the latency rows."""
    if SHARING is None or pss() is None:
        return Outcome(text="share: skipped (needs mmkit's sharing and /proc: Linux)")
    counts = tuple(n for n in READERS if n <= workers_max)
    rounds = max(1, settings.repeat // 5)  # each session starts up to 9 interpreters
    results = measure(data, counts, rounds)
    size = data.config().dimensions_size
    lines = [
        f"share: an owner and N readers, each reader reading every layer ({format_size(size)}) "
        "against its stored CRC-32;\ntotal PSS of them all once every reader has read (shared: "
        "their Pss_Shmem alone, the shared memory); wall from starting the readers to the last "
        "done\n"
        f"(medians of {rounds}; × mmkit: against mmkit shared with as many readers, same run)",
        _render(results, size),
        f"an idle spawned worker (interpreter and imports, no data): {format_size(baseline())} "
        "PSS, part of every process above;\nprivate copies: no owner, each reader loads the "
        "dataset into a manager of its own",
    ]
    if not has_lmdb():
        lines.append("lmdb: skipped (py-lmdb is not installed: pip install 'mmkit[bench]')")
    timed = share_latency.measure(settings, data, min(workers_max, max(READERS)))
    details = {
        str(readers): {name: [s._asdict() for s in sessions] for name, sessions in per_peer.items()}
        for readers, per_peer in results.items()
    }
    text = "\n".join(lines) + "\n\n" + timed.text
    return Outcome(timed.rows, text, {"sessions": details, **timed.details})
