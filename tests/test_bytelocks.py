"""``ByteLocks``: per-open byte locks on top of per-process POSIX record locks (macOS's
pins). Linux has the same POSIX record locks, so everything here runs for real on both.

Another process's view is asked of a child interpreter through ``F_GETLK``, which is the
only way to see what this process holds as a whole.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import markers

pytestmark = [markers.posix_backend, pytest.mark.timeout(60)]

if sys.platform != "win32":
    from mmkit.platform import bytelocks
    from mmkit.platform.bytelocks import LOCKS

PROBE = """
    import fcntl, os, sys
    from mmkit.platform.bytelocks import flock, flock_kind
    fd = os.open(sys.argv[1], os.O_RDWR)
    for byte in map(int, sys.argv[2:]):
        kind = flock_kind(fcntl.fcntl(fd, fcntl.F_GETLK, flock(fcntl.F_WRLCK, byte)))
        print({fcntl.F_UNLCK: "-", fcntl.F_RDLCK: "r", fcntl.F_WRLCK: "w"}[kind], end="")
"""


def seen(path: Path, *bytes_: int) -> str:
    """What another process sees on each byte: ``-`` free, ``r`` shared, ``w`` exclusive."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PROBE), str(path), *map(str, bytes_)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def lockfile(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "locks"
    path.write_bytes(b"")
    yield path


def test_two_opens_in_one_process_conflict_like_two_processes(lockfile: Path) -> None:
    a = LOCKS.open(os.open(lockfile, os.O_RDWR))
    b = LOCKS.again(a)
    try:
        assert LOCKS.lock(a, 0, exclusive=True)
        assert not LOCKS.lock(b, 0, exclusive=False)
        assert LOCKS.locked(b, 0) and not LOCKS.locked(a, 0)
        assert LOCKS.lock(a, 0, exclusive=False)  # a lock again changes its kind
        assert LOCKS.lock(b, 0, exclusive=False)
        assert not LOCKS.lock(b, 0, exclusive=True)
        assert seen(lockfile, 0, 1) == "r-"
        LOCKS.unlock(a, 0)
        assert seen(lockfile, 0) == "r"  # b still holds it
        LOCKS.unlock(b, 0)
        assert seen(lockfile, 0) == "-"
    finally:
        LOCKS.close(a)
        LOCKS.close(b)


def test_the_process_holds_the_union_of_its_opens_locks(lockfile: Path) -> None:
    a = LOCKS.open(os.open(lockfile, os.O_RDWR))
    b = LOCKS.again(a)
    try:
        assert LOCKS.lock(a, 2, exclusive=True)
        assert LOCKS.lock(b, 3, exclusive=False)
        assert seen(lockfile, 2, 3, 4) == "wr-"
    finally:
        LOCKS.close(b)  # closing one open keeps the other's locks (POSIX would drop them)
    try:
        assert seen(lockfile, 2, 3) == "w-"
    finally:
        LOCKS.close(a)
    assert seen(lockfile, 2) == "-"


def test_another_process_holding_a_byte_is_a_refusal_not_an_error(lockfile: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys\n"
            "from mmkit.platform.bytelocks import flock\n"
            "fd = os.open(sys.argv[1], os.O_RDWR)\n"
            "fcntl.fcntl(fd, fcntl.F_SETLK, flock(fcntl.F_WRLCK, 5))\n"
            "print('held', flush=True)\n"
            "sys.stdin.read()\n",
            str(lockfile),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        a = LOCKS.open(os.open(lockfile, os.O_RDWR))
        try:
            assert LOCKS.locked(a, 5)
            assert not LOCKS.lock(a, 5, exclusive=False)
            assert LOCKS.lock(a, 6, exclusive=False)
        finally:
            LOCKS.close(a)
    finally:
        holder.communicate("", timeout=30)


def test_a_second_descriptor_of_a_locked_file_does_not_drop_its_locks(lockfile: Path) -> None:
    a = LOCKS.open(os.open(lockfile, os.O_RDWR))
    try:
        assert LOCKS.lock(a, 0, exclusive=True)
        second = os.open(lockfile, os.O_RDWR)
        b = LOCKS.open(second)  # kept open: closing it would end every lock of the process
        assert seen(lockfile, 0) == "w"
        LOCKS.close(b)
        assert seen(lockfile, 0) == "w"
    finally:
        LOCKS.close(a)
    with pytest.raises(OSError):
        os.fstat(second)  # closed with the file's last open


def test_a_forked_child_holds_its_inherited_shared_locks_before_the_parent_goes_on(
    lockfile: Path,
) -> None:
    a = LOCKS.open(os.open(lockfile, os.O_RDWR))
    reader, writer = os.pipe()
    try:
        assert LOCKS.lock(a, 1, exclusive=True)  # the owner's: never the child's
        assert LOCKS.lock(a, 7, exclusive=False)  # a pin: the child's too
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child)
            os.read(reader, 1)
            os._exit(0)
        LOCKS.unlock(a, 7)
        assert seen(lockfile, 1, 7) == "wr"  # the child holds the pin, not the owner's byte
        os.write(writer, b"x")
        os.waitpid(pid, 0)
        assert seen(lockfile, 7) == "-"  # gone with the child
    finally:
        LOCKS.close(a)
        os.close(reader)
        os.close(writer)


def test_a_child_that_cannot_take_its_locks_leaves_them_with_the_parent(
    lockfile: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = os.getpid()
    take = bytelocks._File.set

    def refused_in_the_child(file: bytelocks._File, byte: int, kind: int) -> bool:
        return os.getpid() == parent and take(file, byte, kind)

    monkeypatch.setattr(bytelocks._File, "set", refused_in_the_child)
    a = LOCKS.open(os.open(lockfile, os.O_RDWR))
    try:
        assert LOCKS.lock(a, 9, exclusive=False)
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child)
            os._exit(0)
        os.waitpid(pid, 0)
        assert LOCKS._files[LOCKS.key(a)].kept == {9}
        LOCKS.unlock(a, 9)
        assert LOCKS.locked(a, 9)  # to this open too: nothing here may rewrite what it guards
        assert seen(lockfile, 9) == "r"  # the child might have read through it: kept
    finally:
        LOCKS.close(a)
    assert seen(lockfile, 9) == "r"  # for the life of the process


def test_a_collection_in_the_middle_of_a_call_lets_go_only_after_it(lockfile: Path) -> None:
    """mmkit gives memory back from a collection's callback, which can run inside any call
    here: what it lets go of then must wait until that call is done."""
    a = LOCKS.open(os.open(lockfile, os.O_RDWR))
    b = LOCKS.again(a)
    assert LOCKS.lock(a, 3, exclusive=False)
    key = LOCKS.key(a)
    with bytelocks.GUARD:  # as the callback finds it: inside a call
        LOCKS.unlock(a, 3)
        LOCKS.close(b)
        assert LOCKS._files[key].held == {3: {a: False}}
        assert b in LOCKS._files[key].opens
    bytelocks.settle()  # what the interrupted call does as it returns
    assert b not in LOCKS._files[key].opens
    LOCKS.close(a)


def test_a_lock_taken_but_not_recorded_is_let_go_of_by_unlock(
    lockfile: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal handler's exception between taking the lock and recording it."""
    a = LOCKS.open(os.open(lockfile, os.O_RDWR))
    take = bytelocks._File.set

    def cut_short(file: bytelocks._File, byte: int, kind: int) -> bool:
        take(file, byte, kind)
        raise KeyboardInterrupt

    monkeypatch.setattr(bytelocks._File, "set", cut_short)
    with pytest.raises(KeyboardInterrupt):
        LOCKS.lock(a, 4, exclusive=False)
    monkeypatch.undo()
    try:
        assert seen(lockfile, 4) == "r"
        LOCKS.unlock(a, 4)
        assert seen(lockfile, 4) == "-"
    finally:
        LOCKS.close(a)
