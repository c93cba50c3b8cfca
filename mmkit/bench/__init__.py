"""mmkit against its stdlib peers: ``mmkit bench`` / ``python -m benchmarks``.

``[case ...] [--repeat N] [--quick] [--json FILE] [--plot FILE] [--workers-max N]``: each
case runs mmkit and the stdlib doing the same work interleaved in one process, and reports
medians and ratios. ``share`` (mmkit's sharing against its peers, in processes of one run)
runs only when named: it starts some 200 interpreters and holds up to 1.5 GiB at once.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from mmkit.bench import cases, machine, queries, scaling, share, threads
from mmkit.bench.data import Dataset
from mmkit.bench.harness import Outcome, Row, Settings, format_ns, table
from mmkit.values.text import printable

Case = Callable[[Settings, Dataset], Outcome]
NAMED_ONLY = ("share",)
"""Cases that run only when named on the command line."""


def _cases(
    plot: Path | None, beside: str | None = None, workers_max: int = max(share.READERS)
) -> dict[str, Case]:
    found: dict[str, Case] = {
        "access": cases.access,
        "init": cases.init,
        "load": cases.load,
        "scan": cases.scan,
        "pool": cases.pool,
        "scaling": partial(scaling.scaling, plot=plot),
        "threads": partial(threads.threads, beside=beside),
    }
    found["queries"] = queries.queries
    found["rss"] = queries.rss
    found["share"] = partial(share.share, workers_max=workers_max)
    return found


def _parser(names: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmkit bench",
        description="mmkit against its stdlib peers, interleaved in one process; medians, ratios.",
    )
    parser.add_argument(
        "cases",
        nargs="*",
        metavar="case",
        help=f"any of: {', '.join(names)} (default: all but {', '.join(NAMED_ONLY)})",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        help="samples per side (default 15, --quick 3; cheap cases take a multiple)",
    )
    parser.add_argument("--quick", action="store_true", help="less work: about a minute")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")
    parser.add_argument("--plot", type=Path, metavar="FILE", help="scaling SVG (matplotlib)")
    parser.add_argument(
        "--beside",
        metavar="PYTHON",
        help="also run the threads case in this interpreter (e.g. a free-threaded one)",
    )
    parser.add_argument(
        "--workers-max",
        type=int,
        default=max(share.READERS),
        metavar="N",
        help=f"share: at most N reader processes (of {', '.join(map(str, share.READERS))})",
    )
    return parser


def _render(rows: list[Row]) -> str:
    return table(
        ("case", "mmkit", "peer", "ratio", "goal", "met?"),
        [
            (
                row.case,
                format_ns(row.mmkit),
                format_ns(row.peer),
                "—" if row.ratio is None else f"{row.ratio:.2f}",
                "" if row.goal is None else str(row.goal),
                {None: "", True: "yes", False: "NO"}[row.met],
            )
            for row in rows
        ],
    )


def _unwritable(path: Path) -> str | None:
    """Why the JSON report cannot be written to ``path``, found before minutes of measuring."""
    if path.is_dir():
        return "is a directory"
    if path.exists():
        return None if os.access(path, os.W_OK) else "is not writable"
    parent = path.parent
    if not parent.is_dir():
        return f"no such directory: {printable(parent)}"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create a file in {printable(parent)}"
    return None


def main(argv: list[str] | None = None) -> int:
    names = list(_cases(None))
    args = _parser(names).parse_args(argv)
    unknown = [name for name in args.cases if name not in names]
    if unknown:
        _parser(names).error(f"unknown case(s): {', '.join(unknown)}; known: {', '.join(names)}")
    if args.repeat is not None and args.repeat < 1:
        _parser(names).error("--repeat must be at least 1")
    if args.workers_max < 1:
        _parser(names).error("--workers-max must be at least 1")
    if args.json is not None:
        problem = _unwritable(args.json)
        if problem is not None:
            print(f"mmkit bench: error: --json {printable(args.json)}: {problem}", file=sys.stderr)
            return 2
    if args.beside is not None:
        found = shutil.which(args.beside)
        if found is None:
            print(
                f"mmkit bench: error: --beside {printable(args.beside)}: no such interpreter",
                file=sys.stderr,
            )
            return 2
        args.beside = found
    repeat = args.repeat if args.repeat is not None else (3 if args.quick else 15)
    settings = Settings(repeat=repeat, quick=args.quick)
    chosen = _cases(args.plot, args.beside, args.workers_max)
    selected = args.cases or [name for name in chosen if name not in NAMED_ONLY]
    started = time.perf_counter()
    print("measuring the machine…", file=sys.stderr, flush=True)
    facts = machine.measure(settings)
    data = Dataset()
    outcomes: dict[str, Outcome] = {}
    terminate = _exit_on_sigterm()
    try:
        for name in selected:
            print(f"running {name}…", file=sys.stderr, flush=True)
            outcomes[name] = chosen[name](settings, data)
    finally:
        data.cleanup()
        if terminate is not None:
            signal.signal(signal.SIGTERM, terminate)
    took = time.perf_counter() - started
    rows = [row for outcome in outcomes.values() for row in outcome.rows]
    sections = [facts.render()]
    if rows:
        sections.append(_render(rows))
    sections += [outcome.text for outcome in outcomes.values() if outcome.text]
    kind = "quick" if args.quick else "full"
    sections.append(f"{repeat} samples per side, {kind} run, {took:.0f} s")
    print("\n\n".join(sections))
    if args.json is not None:
        report: dict[str, Any] = {
            "settings": {"repeat": repeat, "quick": args.quick, "seconds": took},
            "machine": facts.as_json(),
            "rows": [row.as_json() for row in rows],
            "details": {name: o.details for name, o in outcomes.items() if o.details},
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _exit_on_sigterm() -> signal.Handlers | Callable[..., object] | int | None:
    """Make a plain ``kill`` unwind like Ctrl-C, so the dataset and the peers' temporary
    files are removed; the handler it replaced (None off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def terminated(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, terminated)
