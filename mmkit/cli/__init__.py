"""The command line: ``mmkit demo [--workers N] | query | generate | inspect | bench``.

Output never fails on encoding, and names and paths go through ``printable`` to be shown safely.
``demo --workers N``, processes sharing the loaded dataset, is ``shared_demo``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import random
import statistics
import sys
import threading
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from mmkit import storage
from mmkit.bench import main as run_benchmarks
from mmkit.cli import shared_demo
from mmkit.manager import MmapManager
from mmkit.platform import shell_command, user_cache_dir
from mmkit.system import ConsciousnessSystem
from mmkit.values.config import MemoryConfig
from mmkit.values.errors import DataFileError, InvalidState, MmkitError
from mmkit.values.ids import LayerId
from mmkit.values.text import printable
from mmkit.values.units import MiB, format_size
from mmkit.values.version import VERSION

DEMO_THREADS = 4
DEMO_READS = 5000


def _progress(label: str) -> storage.Progress | None:
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        end = "\n" if done >= total else ""
        sys.stderr.write(
            f"\r{label}: {done * 100 // max(total, 1):3d}% of {format_size(total)}{end}"
        )
        sys.stderr.flush()

    return show


def _ensure_dataset(directory: Path, config: MemoryConfig, announce: TextIO | None) -> None:
    """Use a complete dataset as it is; write the default one only into a new or empty directory.

    Anything else there is the user's: left as it is, with an error saying what is missing."""
    paths = [storage.dimension_path(directory, spec) for spec in config.dimensions]
    missing = [path.name for path in paths if not path.is_file()]
    if not missing:
        return
    if directory.exists() and not directory.is_dir():
        raise DataFileError(directory, "not a directory")
    if len(missing) < len(paths):
        shown = ", ".join(missing[:3])
        if len(missing) > 3:
            shown += f" and {len(missing) - 3} more"
        raise DataFileError(
            directory,
            f"incomplete dataset: missing {shown} ({len(paths) - len(missing)} of {len(paths)} "
            f"files present); restore them, or rewrite the whole dataset with "
            f"`{shell_command('mmkit', 'generate', str(directory))} [--seed N]`",
        )
    if directory.is_dir() and any(directory.iterdir()):
        raise DataFileError(
            directory,
            "holds other files and no dataset; the default dataset is written only into a new "
            "or empty directory: pass another --data, or write it there with "
            f"`{shell_command('mmkit', 'generate', str(directory))}`",
        )
    print(f"creating the default dataset in {printable(directory)}", file=announce)
    storage.generate_dataset(directory, config, progress=_progress("generating"))


def demo(args: argparse.Namespace) -> int:
    directory = Path(args.data) if args.data else user_cache_dir() / "dataset-seed0"
    config = MemoryConfig(data_dir=directory, shared=args.workers is not None)
    _ensure_dataset(directory, config, None)
    if args.workers is not None:
        return shared_demo.run(config, _expected_checksums(directory, config), args.workers)

    started = time.perf_counter()
    manager = MmapManager(config)
    init_seconds = time.perf_counter() - started
    with manager:
        started = time.perf_counter()
        for spec in config.dimensions:
            manager.load_dimension(spec.id)
        load_seconds = time.perf_counter() - started
        expected = _expected_checksums(directory, config)
        latencies, mismatches = _workload(manager, config, expected)
        _print_regions(manager)
        stats = manager.stats()
        size = config.dimensions_size
        print()
        print(f"init            {init_seconds * 1e3:9.3f} ms  ({format_size(config.limit)} budget)")
        print(
            f"load + verify   {load_seconds * 1e3:9.1f} ms  "
            f"({size / load_seconds / MiB:,.0f} MiB/s, {len(config.dimensions)} dimensions)"
        )
        print(
            f"access_layer    p50 {_quantile(latencies, 0.50):,.0f} ns  "
            f"p99 {_quantile(latencies, 0.99):,.0f} ns  "
            f"({len(latencies):,} reads on {DEMO_THREADS} threads, {mismatches} mismatches)"
        )
        print(
            f"memory          allocated {format_size(stats.allocated)}, "
            f"committed {format_size(stats.committed)}, resident {format_size(stats.resident)}"
        )
    return 0 if mismatches == 0 else 1


def _expected_checksums(directory: Path, config: MemoryConfig) -> dict[LayerId, int]:
    expected: dict[LayerId, int] = {}
    for spec in config.dimensions:
        header = storage.read_header_file(storage.dimension_path(directory, spec))
        for index, crc in enumerate(header.layer_checksums):
            expected[LayerId(spec.id, index)] = crc
    return expected


def _workload(
    manager: MmapManager, config: MemoryConfig, expected: dict[LayerId, int]
) -> tuple[list[int], int]:
    layers = list(expected)
    latencies: list[list[int]] = [[] for _ in range(DEMO_THREADS)]
    mismatches = [0] * DEMO_THREADS
    stop = threading.Event()

    def reader(slot: int) -> None:
        rng = random.Random(slot)
        clock = time.perf_counter_ns
        timings = latencies[slot]
        try:
            for _ in range(DEMO_READS):
                if stop.is_set():
                    return
                layer = rng.choice(layers)
                started = clock()
                view = manager.access_layer(layer)
                timings.append(clock() - started)
                if zlib.crc32(view) != expected[layer]:
                    mismatches[slot] += 1
        except InvalidState:
            return  # the manager closed under us: the demo is over

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(DEMO_THREADS)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    except BaseException:
        # Ctrl-C: stop the readers before the caller closes the manager under them.
        stop.set()
        for thread in threads:
            if thread.ident is not None:
                thread.join()
        raise
    return [t for per_thread in latencies for t in per_thread], sum(mismatches)


def _quantile(values: list[int], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def _print_regions(manager: MmapManager) -> None:
    print(f"{'id':<4} {'name':<11} {'address':>16} {'size':>9} {'state':<8} {'resident':>10}")
    for d in manager.stats().dimensions:
        state = "loaded" if d.loaded else "reserved"
        print(
            f"{d.id!s:<4} {printable(d.name):<11} {d.address:#16x} {format_size(d.size):>9} "
            f"{state:<8} {format_size(d.resident):>10}"
        )


def query(args: argparse.Namespace) -> int:
    directory = Path(args.data) if args.data else user_cache_dir() / "dataset-seed0"
    limit = None if args.resident_limit is None else args.resident_limit * MiB
    config = MemoryConfig(data_dir=directory, resident_limit=limit)
    _ensure_dataset(directory, config, sys.stderr)
    system = ConsciousnessSystem(config)
    try:
        response = asyncio.run(system.process_query(args.text))
    finally:
        system.close()
    print(response.render())
    return 0


def generate(args: argparse.Namespace) -> int:
    directory = Path(args.directory)
    started = time.perf_counter()
    paths = storage.generate_dataset(directory, seed=args.seed, progress=_progress("generating"))
    seconds = time.perf_counter() - started
    size = MemoryConfig().dimensions_size
    for dimension, path in sorted(paths.items()):
        print(f"{dimension}  {printable(path)}")
    print(f"wrote {format_size(size)} in {seconds:.2f} s ({size / seconds / MiB:,.0f} MiB/s)")
    return 0


def inspect(args: argparse.Namespace) -> int:
    report = storage.inspect_file(Path(args.file))
    print(report.render())
    return 0 if report.ok else 1


def bench(args: argparse.Namespace) -> int:
    return run_benchmarks(args.arguments)


def _worker_count(text: str) -> int:
    """``--workers N``: a whole number of processes from 1 to ``MAX_WORKERS``."""
    limit = shared_demo.MAX_WORKERS
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= limit:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {limit}, not {text!r}")
    return count


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmkit", description="A fixed memory budget as page-aligned regions, served zero-copy."
    )
    parser.add_argument("--version", action="version", version=f"mmkit {VERSION}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("demo", help="load the default dataset and exercise it")
    run.add_argument("--data", help="dataset directory (default: the user cache)")
    run.add_argument(
        "--workers",
        type=_worker_count,
        nargs="?",
        const=shared_demo.DEFAULT_WORKERS,
        metavar="N",
        help=f"share the loaded dataset with N processes instead (1 to {shared_demo.MAX_WORKERS}, "
        f"default {shared_demo.DEFAULT_WORKERS}): each checks every layer; prints their PSS",
    )
    run.set_defaults(handler=demo)
    gen = commands.add_parser("generate", help="write the deterministic default dataset")
    gen.add_argument("directory")
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(handler=generate)
    ask = commands.add_parser("query", help="answer one query over the default dataset")
    ask.add_argument("text")
    ask.add_argument("--data", help="dataset directory (default: the user cache)")
    ask.add_argument("--resident-limit", type=int, metavar="MIB", help="cap on resident data")
    ask.set_defaults(handler=query)
    measure = commands.add_parser(
        "bench", help="measure mmkit against the stdlib (add --help for the cases)", add_help=False
    )
    measure.add_argument("arguments", nargs=argparse.REMAINDER)
    measure.set_defaults(handler=bench)
    show = commands.add_parser("inspect", help="check one dimension data file")
    show.add_argument("file")
    show.set_defaults(handler=inspect)
    return parser


def _never_fail_on_encoding() -> None:
    """Write what the terminal's encoding cannot show as escapes instead of dying on it."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    _never_fail_on_encoding()
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":
        args.arguments = [*extra, *args.arguments]
    elif extra:
        parser.error(f"unrecognized arguments: {printable(' '.join(extra))}")
    try:
        return int(args.handler(args))
    except (MmkitError, OSError) as exc:
        print(f"mmkit: error: {printable(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mmkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
