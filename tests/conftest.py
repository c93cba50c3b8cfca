"""Shared fixtures: small configurations that keep the tests fast, and a child interpreter.

What the OS says about the process's memory is in ``tests.osprobe``; platform guards are in
``tests.markers``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from mmkit import DimensionSpec, MemoryConfig, MmapManager
from mmkit.platform import PAGE_SIZE

# dev: quick and random; ci: derandomized (the same examples every run), within CI's time;
# nightly: many more examples and longer stateful programs. Failing stateful runs print
# the minimal program of calls, and ci/nightly also the blob to replay it.
settings.register_profile("dev", deadline=None, max_examples=40, stateful_step_count=30)
settings.register_profile(
    "ci", deadline=None, derandomize=True, print_blob=True, max_examples=300,
    stateful_step_count=50,
)  # fmt: skip
settings.register_profile(
    "nightly", deadline=None, print_blob=True, max_examples=3000, stateful_step_count=100
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

ROOT = Path(__file__).resolve().parent.parent


def small_config(**overrides: object) -> MemoryConfig:
    """Three small dimensions of page-sized layers inside a 64-page budget."""
    fields: dict[str, object] = {
        "limit": 64 * PAGE_SIZE,
        "layer_size": PAGE_SIZE,
        "dimensions": (
            DimensionSpec(1, "Alpha", 4 * PAGE_SIZE),
            DimensionSpec(2, "Beta", 2 * PAGE_SIZE),
            DimensionSpec(3, "Gamma", 3 * PAGE_SIZE),
        ),
    }
    fields.update(overrides)
    return MemoryConfig(**fields)  # type: ignore[arg-type]


@pytest.fixture
def config() -> MemoryConfig:
    return small_config()


@pytest.fixture
def manager(config: MemoryConfig) -> Iterator[MmapManager]:
    with MmapManager(config) as mgr:
        yield mgr


def run_threads(target: Callable[[int], object], count: int) -> None:
    """Run ``target(n)`` for n in range(count) on as many threads, and wait for them all."""
    threads = [threading.Thread(target=target, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def run_python(
    code: str, *, timeout: float = 60, measured: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a scenario in a fresh interpreter; the caller asserts on its exit code.

    ``measured=False`` keeps coverage out of the child: its tracer's own Python code is not
    safe against a storm of KeyboardInterrupts (a lock of its own stays taken) on 3.10.
    """
    env = None
    if not measured:
        env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_PROCESS")}
    process = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
        start_new_session=hasattr(os, "killpg"),  # its own group: a timeout ends forks too
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        if hasattr(os, "killpg"):
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)
