"""Platform guards shared by the test modules, so each reason is stated once, the same way.

Each marker skips a test where the OS lacks what it needs; ``specs/platforms.md`` lists
which tests each one keeps off which OS, and ``tests/test_portability.py`` checks that
every use of something one OS lacks sits under a guard that covers it.
"""

from __future__ import annotations

import os
import sys

import pytest

from mmkit.platform import SHARING

procfs = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc, which only Linux has"
)
linux_backend = pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="checks the Linux constant table (MAP_*, MADV_*) against this kernel's",
)
linux_rlimits = pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="only Linux enforces RLIMIT_AS and RLIMIT_DATA on mmap",
)
map_count_limit = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="vm.max_map_count is Linux's"
)
needs_mlockall = pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="mlockall is Linux's here (ENOSYS on macOS, no such call on Windows)",
)
posix_backend = pytest.mark.skipif(
    sys.platform == "win32",
    reason="checks what the POSIX backend's calls (mmap, mprotect, madvise) report",
)
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX")
posix_signals = pytest.mark.skipif(
    sys.platform == "win32",
    reason="sends SIGINT to a process (os.kill, send_signal), which Windows cannot deliver",
)
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
posix_devices = pytest.mark.skipif(
    sys.platform == "win32", reason="character devices such as /dev/zero are POSIX"
)
posix_modes = pytest.mark.skipif(os.name != "posix", reason="POSIX modes and sparse files")
merged_neighbours = pytest.mark.skipif(
    sys.platform == "darwin",
    reason="macOS keeps neighbouring map entries apart once each has its own VM object "
    "(vm_map_simplify_entry merges only entries of one object)",
)
sharing = pytest.mark.skipif(
    SHARING is None,
    reason="this system cannot share memory between processes (Windows before 10 version 1803)",
)
shm_sharing = pytest.mark.skipif(
    sys.platform == "win32" or SHARING is None or SHARING.name != "shm",
    reason="about macOS's sharing backend (on Linux too, run by test_shm_sharing)",
)
windows_sharing = pytest.mark.skipif(
    sys.platform != "win32" or SHARING is None,
    reason="about Windows' sharing backend (sections mapped into placeholders)",
)
memfd_sharing = pytest.mark.skipif(
    not sys.platform.startswith("linux") or SHARING is None or SHARING.name != "memfd",
    reason="about Linux's sharing backend (a sealed memfd, whatever the size of /dev/shm)",
)
