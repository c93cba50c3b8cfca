"""Keeping the manager's state whole across ``fork`` and Ctrl-C.

``os.fork`` copies only the calling thread; a lock another thread held at that moment stays
held forever in the child, and the child's next call that needs it hangs. Two kinds:

- a *state lock* guards data that must be consistent in the child (the manager's tables): the
  parent takes every state lock before forking, so the fork happens between two writes, and
  both sides let go afterwards;
- a *counter lock* guards a few lines that cannot fork half-done in a way that matters (a
  lease's export count): the child just gets a fresh one.

``WriteGuard`` is how the manager's writes use a state lock: it also holds Ctrl-C until the
write is whole (``mmkit.platform.interrupts``) and refuses a call that re-enters the manager
from inside one of its own writes on the same thread (a ``__del__`` or a weakref callback the
collector ran mid-write, an ``__index__`` of an argument), which would see its state half
changed.
"""

from __future__ import annotations

import _thread
import operator
import os
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

from mmkit.platform.interrupts import deliver, hold
from mmkit.values.errors import InvalidState

T = TypeVar("T")


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


class ForkAware:
    """An object that must act around ``fork`` while no write is under way: its hooks run
    with every state lock held (after they are taken; before they are let go)."""

    __slots__ = ("__weakref__",)

    def before_fork(self) -> None: ...

    def after_fork_in_parent(self) -> None: ...

    def after_fork_in_child(self) -> None: ...


_FORK_AWARE: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def watch_fork(target: ForkAware) -> None:
    """Call ``target``'s fork hooks at each ``os.fork`` while it lives."""
    _FORK_AWARE.add(target)


def _snapshot(items: weakref.WeakSet[T]) -> list[T]:
    for _ in range(8):  # another thread may add one while we look
        try:
            return sorted(items, key=id)  # one order, whoever forks
        except RuntimeError:
            continue
    return []


_WATCHED: list[ForkAware] = []


def _before_fork() -> None:
    taken = _snapshot(_STATE_LOCKS)
    for lock in taken:
        lock.acquire()
    _TAKEN[:] = taken
    _WATCHED[:] = _snapshot(_FORK_AWARE)
    _each(_WATCHED, operator.methodcaller("before_fork"))


def _after_fork_in_parent() -> None:
    watched, _WATCHED[:] = list(_WATCHED), []
    try:
        _each(watched, operator.methodcaller("after_fork_in_parent"))
    finally:
        taken, _TAKEN[:] = list(_TAKEN), []
        for lock in reversed(taken):
            lock.release()


def _after_fork_in_child() -> None:
    _TAKEN.clear()
    for lock in [*_STATE_LOCKS, *_COUNTER_LOCKS]:
        lock._at_fork_reinit()  # type: ignore[attr-defined]  # how threading resets its own
    watched, _WATCHED[:] = list(_WATCHED), []
    _each(watched, operator.methodcaller("after_fork_in_child"))


def _each(targets: list[ForkAware], hook: Callable[[ForkAware], None]) -> None:
    """Run one hook of every target, whatever one of them raises: a target skipped would
    fork without its pins, or leave a child that may write. The first error is raised
    after (CPython prints what an at-fork hook raises, and forks)."""
    failure: BaseException | None = None
    for target in targets:
        try:
            hook(target)
        except BaseException as exc:  # raised below, once every target ran
            failure = failure or exc
    if failure is not None:
        raise failure


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )


class WriteGuard:
    """A state lock for writes: one at a time, none re-entered, Ctrl-C held meanwhile."""

    __slots__ = ("_held", "busy", "lock")

    def __init__(self) -> None:
        self.lock = ForkSafeLock(held_across_fork=True)
        self.busy = False
        self._held: object = None

    def enter(self) -> None:
        """Mark a write begun, with ``lock`` held; refuse one inside another on this thread."""
        if self.busy:
            raise InvalidState(
                "a call re-entered the manager from inside one of its own writes "
                "(a __del__, a weakref callback or an argument's method)"
            )
        self.busy = True

    def run(self, work: Callable[..., T], *args: object) -> T:
        """``with self: return work(*args)``, without the two method calls ``with`` costs.

        For the hottest writes (the pool's allocate and free).
        """
        held = hold()
        try:
            with self.lock:
                if self.busy:
                    self.enter()  # refuses
                self.busy = True
                try:
                    return work(*args)
                finally:
                    self.busy = False
        finally:
            deliver(held)

    def __enter__(self) -> WriteGuard:
        held = hold()  # first, so no KeyboardInterrupt can leave the lock taken
        self.lock.acquire()
        try:
            self.enter()
        except BaseException:
            self.lock.release()
            deliver(held)
            raise
        self._held = held
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        held, self._held = self._held, None
        self.busy = False
        self.lock.release()
        deliver(held)
