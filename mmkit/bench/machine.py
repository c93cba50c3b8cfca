"""Facts about this machine, measured in the same run as the cases they explain."""

from __future__ import annotations

import mmap
import os
import platform
import statistics
from dataclasses import asdict, dataclass
from typing import Any

from mmkit.bench.harness import Settings, elapsed, gc_paused
from mmkit.platform import describe_system, transparent_huge_pages

MiB = 1024 * 1024
PAGE = mmap.PAGESIZE


@dataclass(frozen=True, slots=True)
class Machine:
    """Bandwidth and fault cost (medians) and what shapes them."""

    python: str
    system: str
    cpus: int
    page_size: int
    thp: str
    memcpy_gb_s: float
    fault_ns_per_page: float

    def render(self) -> str:
        return "\n".join(
            [
                f"python {self.python} on {self.system}, {self.cpus} CPUs, "
                f"page {self.page_size} B, transparent huge pages: {self.thp}",
                f"memcpy (bytearray slice copy, 64 MiB): {self.memcpy_gb_s:.2f} GB/s",
                f"page fault (first touch of fresh anonymous mmap pages): "
                f"{self.fault_ns_per_page:.0f} ns per {self.page_size // 1024} KiB page "
                f"= {self.page_size / self.fault_ns_per_page:.2f} GB/s",
            ]
        )

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def memcpy_bandwidth(repeat: int) -> float:
    """Bytes per second of ``dst[:] = src`` over 64 MiB, both already resident."""
    size = 64 * MiB
    source = bytearray(os.urandom(MiB)) * 64
    target = bytearray(size)
    target[:] = source

    def copy() -> None:
        target[:] = source

    with gc_paused():
        times = [elapsed(copy) for _ in range(repeat)]
    return size / statistics.median(times)


def fault_cost(repeat: int) -> float:
    """Nanoseconds per page to touch one byte of each page of a fresh anonymous mapping."""
    size = 64 * MiB
    pages = size // PAGE
    ones = b"\x01" * pages
    times = []
    with gc_paused():
        for _ in range(repeat):
            mapping = mmap.mmap(-1, size)
            view = memoryview(mapping)

            def touch(view: memoryview = view) -> None:
                view[::PAGE] = ones

            times.append(elapsed(touch) / pages)
            view.release()
            mapping.close()
    return statistics.median(times)


def measure(settings: Settings) -> Machine:
    """Measure bandwidth and fault cost, with as many samples as the run allows."""
    count = max(3, settings.scale(7, 3))
    return Machine(
        python=platform.python_version(),
        system=describe_system(),
        cpus=os.cpu_count() or 1,
        page_size=PAGE,
        thp=transparent_huge_pages(),
        memcpy_gb_s=memcpy_bandwidth(count),
        fault_ns_per_page=fault_cost(count),
    )
