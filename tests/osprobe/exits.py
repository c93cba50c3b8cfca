"""Whether a child process died of a memory fault, from its return code, on each OS.

POSIX: ``subprocess`` reports death by a signal as the negated signal number. A touch of
inaccessible memory is SIGSEGV (11 on Linux and macOS) or SIGBUS (7 on Linux, 10 on macOS:
macOS raises it for some protection faults). Windows: the exit code of a process killed by
an unhandled exception is the exception's NTSTATUS, ``STATUS_ACCESS_VIOLATION`` (0xC0000005)
for a bad access; ``subprocess`` gives it as the unsigned DWORD (3221225477), and other
tools as a signed int (-1073741819), so both are read. Any system NTSTATUS of error
severity (0xC000xxxx: severity 3, no customer bit, facility 0) counts as a crash, such as
``STATUS_STACK_BUFFER_OVERRUN`` (a fail-fast), except ``STATUS_CONTROL_C_EXIT`` (Ctrl-C).
"""

from __future__ import annotations

import sys

SIGBUS = {"linux": 7, "darwin": 10}
SIGSEGV = 11

STATUS_ACCESS_VIOLATION = 0xC0000005
STATUS_IN_PAGE_ERROR = 0xC0000006
STATUS_STACK_BUFFER_OVERRUN = 0xC0000409
STATUS_CONTROL_C_EXIT = 0xC000013A
_SYSTEM_ERROR = 0xC0000000
"""Severity error (the top two bits), customer bit clear, facility 0: the high 16 bits."""


def family(platform: str) -> str:
    """``linux``, ``darwin`` or ``win32`` for a ``sys.platform`` value."""
    if platform.startswith("linux"):
        return "linux"
    return platform


def crash_signals(platform: str = sys.platform) -> frozenset[int]:
    """The signals that mean a memory fault on a POSIX platform."""
    return frozenset({SIGSEGV, SIGBUS[family(platform)]})


def ntstatus(returncode: int) -> int:
    """A Windows exit code as the unsigned 32-bit NTSTATUS, whichever sign it came with."""
    return returncode & 0xFFFFFFFF


def crashed(returncode: int, platform: str = sys.platform) -> bool:
    """Whether a child with this return code was killed by a memory fault (or, on Windows,
    any unhandled exception)."""
    if family(platform) == "win32":
        status = ntstatus(returncode)
        return _system_error(status) and status != STATUS_CONTROL_C_EXIT
    return returncode < 0 and -returncode in crash_signals(platform)


def describe(returncode: int, platform: str = sys.platform) -> str:
    """A return code as a person reads it: ``exit 1``, ``signal 11``, ``NTSTATUS 0xc0000005``."""
    if family(platform) == "win32" and _system_error(ntstatus(returncode)):
        return f"NTSTATUS {ntstatus(returncode):#010x}"
    if returncode < 0 and family(platform) != "win32":
        return f"signal {-returncode}"
    return f"exit {returncode}"


def _system_error(status: int) -> bool:
    return status & 0xFFFF0000 == _SYSTEM_ERROR
