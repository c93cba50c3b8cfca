"""``python -m stress [scenario ...] [--seconds N] [--cycles N]``; exits 1 if any failed."""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable

from stress import concurrency, rlimit, sharing, soak, valgrind
from stress.common import Dataset, Options, Result

Scenario = Callable[[Options], Result]
SCENARIOS: dict[str, Scenario] = {
    "concurrency": concurrency.run,
    "rlimit": rlimit.run,
    "sharing": sharing.run,
    "soak": soak.run,
    "valgrind": valgrind.run,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stress",
        description="Long concurrency, resource-limit, leak and memcheck runs against mmkit.",
    )
    parser.add_argument(
        "scenarios",
        nargs="*",
        metavar="scenario",
        help=f"any of: {', '.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        help=f"how long the concurrency run lasts (default {concurrency.DEFAULT_SECONDS:.0f})",
    )
    parser.add_argument(
        "--cycles",
        type=int,
        help=f"soak cycles of each kind (default {soak.DEFAULT_CYCLES})",
    )
    return parser


def _attempt(name: str, options: Options) -> Result:
    """Run one scenario; an exception it lets out is a failed check, not a crash of the run."""
    try:
        return SCENARIOS[name](options)
    except Exception as exc:
        result = Result(name)
        result.check(f"ran to the end (raised {type(exc).__name__}: {exc})", False)
        result.notes += traceback.format_exc().rstrip().splitlines()
        return result


def _print(result: Result, elapsed: float) -> None:
    verdict = "PASS" if result.passed else "FAIL"
    extra = f" (skipped: {result.skipped})" if result.skipped else ""
    print(f"\n== {result.name}: {verdict}{extra}  [{elapsed:.1f} s]")
    width = max((len(key) for key in result.figures), default=0)
    for key, value in result.figures.items():
        print(f"   {key:<{width}}  {value}")
    for what, ok in result.checks:
        print(f"   [{'ok' if ok else 'FAIL'}] {what}")
    for note in result.notes:
        print(f"   | {note}")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    if args.seconds is not None and args.seconds <= 0:
        parser.error("--seconds must be positive")
    if args.cycles is not None and args.cycles < 1:
        parser.error("--cycles must be at least 1")
    data = Dataset()
    options = Options(seconds=args.seconds, cycles=args.cycles, data=data)
    results: list[Result] = []
    try:
        for name in args.scenarios or list(SCENARIOS):
            started = time.monotonic()
            results.append(_attempt(name, options))
            _print(results[-1], time.monotonic() - started)
            sys.stdout.flush()
    finally:
        data.cleanup()
    failed = [result.name for result in results if not result.passed]
    print(f"\n{len(results) - len(failed)} of {len(results)} scenarios passed", end="")
    print(f"; failed: {', '.join(failed)}" if failed else "")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
