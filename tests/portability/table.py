"""``specs/platforms.md``: which tests run on which OS, written from the tests' guards."""

from __future__ import annotations

from pathlib import Path

from tests.portability.checker import Entry, Report, check
from tests.portability.rules import NAMES, PLATFORMS

TABLE = Path("specs") / "platforms.md"

HEADER = """\
# specs/platforms.md — which tests run on which OS

CI runs the suite on Linux, macOS and Windows. A test that needs something one OS lacks
(procfs, `os.fork`, `RLIMIT_AS`, signals sent to a process, FIFOs, `mlockall`,
`vm.max_map_count`, the Linux backend's constant table) carries a guard that skips it there
and says why; the shared guards are in `tests/markers.py`. Memory is measured through each
OS's own interface (`tests/osprobe/`: procfs on Linux, Mach `task_info` and `mach_vm_region`
on macOS, `VirtualQuery` and `K32GetProcessMemoryInfo` on Windows), and a crashed child is
told apart on each (`tests/osprobe/exits.py`: SIGSEGV or SIGBUS, or an NTSTATUS error).

This file is generated from the guards in the source by `python -m tests.portability
--write`; `tests/test_portability.py` fails when it is out of date, and when a test uses
something an OS lacks with no guard that skips it there.

A test is a test function, class or hypothesis state machine, however many cases it is
parametrized into. "depends" is a guard on the machine as well as the OS (root, for
instance). Tests can also skip at run time for the machine's reasons (no sparse files, a
process that may lock past `RLIMIT_MEMLOCK`); those are not listed.
"""


def cell(entry: Entry, platform: str) -> str:
    state = entry.guard.skipped[platform]
    return {False: "runs", True: "skips", None: "depends"}[state]


def why(entry: Entry) -> str:
    reasons = []
    for platform in PLATFORMS:
        reason = entry.guard.reasons.get(platform)
        if entry.guard.skipped[platform] is not False and reason and reason not in reasons:
            reasons.append(reason)
    return "; ".join(reasons)


def guarded(entry: Entry) -> bool:
    return any(entry.guard.skipped[p] is not False for p in PLATFORMS)


def count(entries: list[Entry], platform: str) -> str:
    runs = sum(1 for e in entries if e.guard.skipped[platform] is False)
    depends = sum(1 for e in entries if e.guard.skipped[platform] is None)
    return f"{runs} (+{depends} depend)" if depends else str(runs)


def render(reports: list[Report]) -> str:
    reports = [r for r in reports if r.entries]
    lines = [HEADER, "## Tests that run, per module", ""]
    lines.append("| module | tests | " + " | ".join(NAMES[p] for p in PLATFORMS) + " |")
    lines.append("|---|---|" + "---|" * len(PLATFORMS))
    for report in reports:
        counts = " | ".join(count(report.entries, p) for p in PLATFORMS)
        lines.append(f"| `{report.path}` | {len(report.entries)} | {counts} |")
    every = [e for r in reports for e in r.entries]
    counts = " | ".join(count(every, p) for p in PLATFORMS)
    lines.append(f"| all | {len(every)} | {counts} |")
    lines += ["", "## Guarded tests", ""]
    lines.append("Every test not listed here runs on all three.")
    for report in reports:
        rows = [e for e in report.entries if guarded(e)]
        if not rows:
            continue
        lines += ["", f"### `{report.path}`", ""]
        lines.append("| test | " + " | ".join(NAMES[p] for p in PLATFORMS) + " | why |")
        lines.append("|---|" + "---|" * len(PLATFORMS) + "---|")
        for entry in rows:
            cells = " | ".join(cell(entry, p) for p in PLATFORMS)
            lines.append(f"| `{entry.name}` | {cells} | {why(entry)} |")
    return "\n".join(lines) + "\n"


def generate(root: Path) -> str:
    return render(check(root))
