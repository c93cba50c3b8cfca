"""Interleaved timing (A, B, A, B, …) and the rows of the results table.

A sample is one call of a zero-argument function that returns what it measured, in
nanoseconds (per run or per operation, as the case decides); medians absorb the noise.
"""

from __future__ import annotations

import gc
import operator
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

Sample = Callable[[], float]

_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "≤": operator.le,
    "<": operator.lt,
    "≥": operator.ge,
}


@dataclass(frozen=True, slots=True)
class Settings:
    """How hard to try: repetitions per case and whether to shrink the work (``--quick``)."""

    repeat: int
    quick: bool

    def scale(self, full: int, quick: int) -> int:
        return quick if self.quick else full


@dataclass(frozen=True, slots=True)
class Goal:
    """A target for a row's ratio (or, with ``unit``, for its mmkit median in that unit)."""

    op: str
    value: float
    unit: str = ""
    what: str = ""

    def met(self, measured: float) -> bool:
        return _OPERATORS[self.op](measured, self.value)

    def __str__(self) -> str:
        value = f"{self.value:g}" if self.unit else str(float(self.value))
        return f"{self.what}{self.op} {value}{self.unit}"


@dataclass(slots=True)
class Row:
    """One line of the table: medians in ns, their ratio, the goal and whether it is met."""

    case: str
    mmkit: float | None
    peer: float | None
    ratio: float | None
    goal: Goal | None = None
    met: bool | None = None
    samples: dict[str, list[float]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "case": self.case,
            "mmkit_ns": self.mmkit,
            "peer_ns": self.peer,
            "ratio": self.ratio,
            "goal": None if self.goal is None else str(self.goal),
            "met": self.met,
            "samples_ns": self.samples,
        }


@dataclass(slots=True)
class Outcome:
    """What a case adds to the report: table rows, text printed after the table, JSON."""

    rows: list[Row] = field(default_factory=list)
    text: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def compare(case: str, mmkit: list[float], peer: list[float], goal: Goal | None = None) -> Row:
    """A row whose ratio is median(mmkit) / median(peer): below 1 means mmkit is faster."""
    a, b = statistics.median(mmkit), statistics.median(peer)
    ratio = a / b if b else float("inf")
    met = None if goal is None else goal.met(ratio)
    return Row(case, a, b, ratio, goal, met, {"mmkit": mmkit, "peer": peer})


def speedup(case: str, many: list[float], one: list[float], goal: Goal | None = None) -> Row:
    """A row whose ratio is median(one) / median(many): how much faster ``many`` runs."""
    a, b = statistics.median(many), statistics.median(one)
    ratio = b / a if a else float("inf")
    met = None if goal is None else goal.met(ratio)
    return Row(case, a, b, ratio, goal, met, {"mmkit": many, "peer": one})


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic collection while timing (as ``timeit`` does)."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def interleave(
    a: Sample, b: Sample, repeat: int, *, warmup: int = 1
) -> tuple[list[float], list[float]]:
    """Run ``a`` and ``b`` alternately ``repeat`` times each, after ``warmup`` unrecorded rounds."""
    first, second = interleave_all([a, b], repeat, warmup=warmup)
    return first, second


def interleave_all(samples: list[Sample], repeat: int, *, warmup: int = 1) -> list[list[float]]:
    """Round-robin over any number of samplers, so that all see the same machine weather."""
    results: list[list[float]] = [[] for _ in samples]
    with gc_paused():
        for _ in range(warmup):
            for sample in samples:
                sample()
        for _ in range(repeat):
            for sample, result in zip(samples, results, strict=True):
                result.append(sample())
    return results


def repeat_one(sample: Sample, repeat: int, *, warmup: int = 1) -> list[float]:
    """Samples of one function, for figures that have no peer."""
    with gc_paused():
        for _ in range(warmup):
            sample()
        return [sample() for _ in range(repeat)]


def elapsed(action: Callable[[], object]) -> float:
    """Nanoseconds one call of ``action`` takes."""
    start = time.perf_counter_ns()
    action()
    return float(time.perf_counter_ns() - start)


def format_ns(ns: float | None) -> str:
    """A duration with a unit that keeps three or four significant digits."""
    if ns is None:
        return "—"
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}" if ns < 100 * scale else f"{ns / scale:.0f} {unit}"
    return f"{ns:.3g} ns" if ns < 100 else f"{ns:.0f} ns"


def table(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A plain text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for r in [headers, *rows]:
        cells = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
