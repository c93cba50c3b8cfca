"""The OS says no: RLIMIT_AS, RLIMIT_DATA and a locked address space, each in a child.

A child exits 0 when every check held, 1 with the reason on stderr when one did not, and
77 when the machine cannot set the case up; a negative exit code (a signal) is a crash.
The parent reports each child's ``ok`` lines and figures. Linux only: macOS enforces neither
limit on mmap and has no mlockall, Windows has none of the three; elsewhere the scenario is
reported as skipped.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import sys
import zlib
from collections.abc import Callable

from mmkit import DimensionSpec, LayerId, MemoryConfig, MiB, MmapManager, OutOfMemory
from stress.common import ROOT, Options, Result, map_count, mib, proc_status
from tests.osprobe import crashed, describe

if sys.platform.startswith("linux"):
    import resource

SKIP = 77
NOBODY = 65534
MEMLOCK_LIMIT = 16 * MiB
MCL_FUTURE = 2
CAP_IPC_LOCK = 14
CHILD_TIMEOUT = 120.0


class CheckFailed(Exception):
    """A check in a child did not hold."""


def expect(ok: bool, what: str) -> None:
    """Print ``ok what`` for the parent, or fail the child with ``what``."""
    if not ok:
        raise CheckFailed(what)
    print(f"ok {what}", flush=True)


def figure(name: str, value: object) -> None:
    """Hand a figure to the parent."""
    print(f"figure {name}={value}", flush=True)


def _small_config() -> MemoryConfig:
    """One 1 MiB dimension and no pool: 4 MiB of address space with guards and alignment."""
    return MemoryConfig(limit=MiB, layer_size=MiB, dimensions=(DimensionSpec(1, "Small", MiB),))


def _serves(mgr: MmapManager, layer: LayerId, expected: int) -> bool:
    return zlib.crc32(mgr.access_layer(layer)) == expected


def _expect_out_of_memory(action: Callable[[], object], what: str, word: str) -> None:
    try:
        action()
    except OutOfMemory as exc:
        figure(f"error: {what}", exc)
        expect(word in str(exc), f"{what} raised OutOfMemory that says {word!r}")
    else:
        expect(False, f"{what} raised OutOfMemory")


def _small_manager_works() -> bool:
    payload = bytes(range(256)) * (MiB // 256)
    with MmapManager(_small_config()) as mgr:
        mgr.load_dimension(1, payload)
        return _serves(mgr, LayerId(1, 0), zlib.crc32(payload))


def case_as() -> None:
    """RLIMIT_AS below what the budget needs: init fails cleanly, leaves nothing, recovers."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    budget = MemoryConfig().limit
    cap = proc_status()["VmSize"] + budget // 2
    figure("limit", f"{mib(cap)} (VmSize + {mib(budget // 2)}; the budget is {mib(budget)})")
    maps, size = map_count(), proc_status()["VmSize"]
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    _expect_out_of_memory(MmapManager, "MmapManager()", "reserving")
    expect(map_count() == maps, f"no mapping left behind ({map_count() - maps:+d})")
    expect(proc_status()["VmSize"] == size, "VmSize unchanged after the failure")
    expect(_small_manager_works(), "a small manager works under the same limit")
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    MmapManager().close()
    expect(True, "with the limit lifted MmapManager() initialises")


def case_data() -> None:
    """RLIMIT_DATA just above the current use: loads fail, the manager is unchanged and serves."""
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    payload = bytes(range(256)) * (4 * MiB // 256)
    big = bytes(16 * MiB)
    update = b"\x07" * MiB
    mgr = MmapManager(MemoryConfig())
    mgr.load_dimension(14, payload)
    crcs = [zlib.crc32(payload[i * MiB : (i + 1) * MiB]) for i in range(4)]
    cap = proc_status()["VmData"] + 8 * MiB
    figure("limit", f"{mib(cap)} (VmData + 8 MiB)")
    before, maps = mgr.stats(), map_count()
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    _expect_out_of_memory(lambda: mgr.load_dimension(1), "load_dimension(1) (zeros)", "committing")
    expect(mgr.stats() == before, "stats() unchanged")
    _expect_out_of_memory(
        lambda: mgr.load_dimension(2, big), "load_dimension(2, bytes)", "committing"
    )
    _expect_out_of_memory(lambda: mgr.allocate(64 * MiB), "allocate(64 MiB)", "committing")
    expect(mgr.stats() == before, "stats() unchanged after all three")
    expect(map_count() == maps, f"no mapping split or left ({map_count() - maps:+d})")
    expect(not mgr.is_loaded(1) and not mgr.is_loaded(2), "D01 and D02 are not loaded")
    expect(all(_serves(mgr, LayerId(14, i), crcs[i]) for i in range(4)), "D14 still serves reads")
    mgr.update_layer(LayerId(14, 0), update)
    expect(_serves(mgr, LayerId(14, 0), zlib.crc32(update)), "an update within the limit works")
    resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
    mgr.load_dimension(1)
    expect(mgr.is_loaded(1), "with the limit lifted D01 loads")
    mgr.close()


def _drop_to_nobody(limit: int) -> None:
    """Set the lock limit, then become uid/gid 65534: root's CAP_IPC_LOCK would ignore it."""
    if os.getuid() == 0:
        with contextlib.suppress(ValueError):
            resource.setrlimit(resource.RLIMIT_MEMLOCK, (limit, limit))
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    figure("uid", os.getuid())
    with open("/proc/self/status") as status:
        caps = next(line for line in status if line.startswith("CapEff:"))
    if int(caps.split()[1], 16) >> CAP_IPC_LOCK & 1:
        print("CAP_IPC_LOCK is still effective: the lock limit cannot be tested", file=sys.stderr)
        raise SystemExit(SKIP)


def case_mlock() -> None:
    """``mlockall(MCL_FUTURE)`` under a small RLIMIT_MEMLOCK: init fails cleanly, small fits."""
    libc = ctypes.CDLL(None, use_errno=True)
    _drop_to_nobody(MEMLOCK_LIMIT)
    _, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    limit = MEMLOCK_LIMIT if hard == resource.RLIM_INFINITY else min(hard, MEMLOCK_LIMIT)
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (limit, limit))
    figure("limit", f"{mib(limit)} (the budget is {mib(MemoryConfig().limit)})")
    expect(libc.mlockall(MCL_FUTURE) == 0, f"mlockall(MCL_FUTURE) (errno {ctypes.get_errno()})")
    maps = map_count()
    _expect_out_of_memory(MmapManager, "MmapManager()", "reserving")
    expect(map_count() == maps, f"no mapping left behind ({map_count() - maps:+d})")
    expect(_small_manager_works(), "a small manager initialises and serves while locked")
    expect(libc.munlockall() == 0, "munlockall()")
    MmapManager().close()
    expect(True, "unlocked, MmapManager() initialises")


CASES: dict[str, Callable[[], None]] = {
    "RLIMIT_AS": case_as,
    "RLIMIT_DATA": case_data,
    "mlockall": case_mlock,
}


def child(name: str) -> int:
    """Entry point of a child process: run one case, return its exit code."""
    try:
        CASES[name]()
    except CheckFailed as exc:
        print(f"check failed: {exc}", file=sys.stderr)
        return 1
    return 0


def _spawn(name: str) -> subprocess.CompletedProcess[str]:
    code = f"import sys, stress.rlimit as r; sys.exit(r.child({name!r}))"
    return subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=False,
    )


def _verdict(name: str, code: int, stderr: str) -> tuple[str, bool]:
    tail = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    if code == 0:
        return f"{name}: child exited 0", True
    if crashed(code):
        return f"{name}: child crashed ({describe(code)})", False
    if code < 0:
        return f"{name}: child killed by signal {-code}", False
    return f"{name}: child exited {code}: {tail}", False


def run(options: Options) -> Result:
    """Run every case in its own child process and report its checks and figures."""
    del options
    result = Result("rlimit")
    if not sys.platform.startswith("linux"):
        result.skipped = "only Linux enforces RLIMIT_AS and RLIMIT_DATA on mmap and has mlockall"
        print(f"skipped: {result.skipped}")
        return result
    skipped: list[str] = []
    for name in CASES:
        done = _spawn(name)
        for line in done.stdout.splitlines():
            kind, _, text = line.partition(" ")
            if kind == "ok":
                result.check(f"{name}: {text}", True)
            elif kind == "figure":
                key, _, value = text.partition("=")
                result.figures[f"{name} {key}"] = value
        if done.returncode == SKIP:
            skipped.append(f"{name} ({done.stderr.strip()})")
            continue
        result.check(*_verdict(name, done.returncode, done.stderr))
        if done.returncode != 0:
            result.notes += done.stderr.strip().splitlines()[-15:]
    if skipped:
        result.skipped = "; ".join(skipped)
    return result
