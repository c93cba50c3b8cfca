"""Keeping the manager's state whole across ``fork`` and Ctrl-C.

``os.fork`` copies only the calling thread; a lock another thread held at that moment stays
held forever in the child, and the child's next call that needs it hangs. Two kinds:

- a *state lock* guards data that must be consistent in the child (the manager's tables): the
  parent takes every state lock before forking, so the fork happens between two writes, and
  both sides let go afterwards;
- a *counter lock* guards a few lines that cannot fork half-done in a way that matters (a
  lease's export count): the child just gets a fresh one.

Ctrl-C raises ``KeyboardInterrupt`` in the main thread between any two bytecodes; inside a
write that changes memory mappings and the tables describing them, that could leave the two
out of step. ``interrupts_deferred`` holds a SIGINT that arrives during such a write and
hands it to the program's own handler as soon as the write is whole.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import threading
import weakref
from collections.abc import Iterator
from types import FrameType


class ForkSafeLock(_thread.RLock):  # type: ignore[misc]
    """A re-entrant lock that a forked child gets back unlocked (a C ``RLock`` underneath).

    ``held_across_fork``: the parent acquires it before ``fork`` (waiting for the holder to
    finish) and releases it after; the child gets it fresh.
    """

    __slots__ = ()

    def __init__(self, *, held_across_fork: bool = False) -> None:
        super().__init__()
        (_STATE_LOCKS if held_across_fork else _COUNTER_LOCKS).add(self)


_STATE_LOCKS: weakref.WeakSet[ForkSafeLock] = weakref.WeakSet()
_COUNTER_LOCKS: weakref.WeakSet[ForkSafeLock] = weakref.WeakSet()
_TAKEN: list[ForkSafeLock] = []


def _before_fork() -> None:
    taken: list[ForkSafeLock] = []
    for _ in range(8):  # another thread may make a lock while we look
        try:
            taken = sorted(_STATE_LOCKS, key=id)  # one order, whoever forks
            break
        except RuntimeError:
            continue
    for lock in taken:
        lock.acquire()
    _TAKEN[:] = taken


def _after_fork_in_parent() -> None:
    taken, _TAKEN[:] = list(_TAKEN), []
    for lock in reversed(taken):
        lock.release()


def _after_fork_in_child() -> None:
    _TAKEN.clear()
    for lock in [*_STATE_LOCKS, *_COUNTER_LOCKS]:
        lock._at_fork_reinit()  # type: ignore[attr-defined]  # how threading resets its own


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )


_DEFERRING = threading.local()


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT (Ctrl-C) until the block is done, then deliver it to the saved handler.

    Only the main thread receives KeyboardInterrupt, and only it may change signal handlers,
    so elsewhere (and when nested) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread() or getattr(
        _DEFERRING, "active", False
    ):
        yield
        return
    held: list[FrameType | None] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        held.append(frame)

    try:
        previous = signal.getsignal(signal.SIGINT)
        if previous is None:  # installed outside Python: leave it alone
            raise ValueError("foreign SIGINT handler")
        signal.signal(signal.SIGINT, hold)
    except (ValueError, OSError):  # not the main interpreter, or no SIGINT here
        yield
        return
    _DEFERRING.active = True
    try:
        yield
    finally:
        _DEFERRING.active = False
        signal.signal(signal.SIGINT, previous)
        if held:
            if callable(previous):
                previous(signal.SIGINT, held[0])
            elif previous == signal.SIG_DFL:
                signal.raise_signal(signal.SIGINT)
