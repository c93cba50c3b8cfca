"""One helper thread per call, handling items in order (inline when none can start).

Nothing outlives the call, so no fork or interpreter shutdown finds a pool half alive.
"""

from __future__ import annotations

import _thread
import contextlib
import queue
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Worker(Generic[T]):
    """Calls ``handle(item)`` for each item put, in order, until one returns False or raises."""

    def __init__(self, handle: Callable[[T], bool]) -> None:
        self._handle = handle
        self._queue: queue.SimpleQueue[tuple[T, ...]] = queue.SimpleQueue()
        self._done = _thread.allocate_lock()
        self._launched: list[int] = []
        self._stopping = False
        self._finished = False
        self.failed = False
        self.error: BaseException | None = None

    def start(self) -> None:
        """Start the thread; if none can start (interpreter shutdown, limits), work inline."""
        self._done.acquire()
        # extend(map(...)) starts the thread and records it without running any bytecode in
        # between, so an interrupt cannot leave a thread running that close() does not know.
        with contextlib.suppress(RuntimeError):
            self._launched.extend(map(_thread.start_new_thread, (self._run,), ((),)))

    def put(self, item: T) -> None:
        """Hand over an item; handled at once when there is no thread, skipped after a failure."""
        if self._launched:
            self._queue.put((item,))
        elif not self.failed:
            self._apply(item)

    def close(self, *, stop: bool) -> None:
        """Return once the thread has stopped; with ``stop``, skipping what is still queued.

        An interrupt may cut this short: callers repeat it (that is safe) until it returns.
        """
        if stop:
            self._stopping = True
        if self._launched and not self._finished:
            self._queue.put(())
            while not self._finished:
                self._done.acquire()

    def _apply(self, item: T) -> bool:
        try:
            ok = self._handle(item)
        except BaseException as exc:
            self.error = exc
            ok = False
        if not ok:
            self.failed = True
        return ok

    def _run(self) -> None:
        try:
            while not self._stopping:
                entry = self._queue.get()
                if not entry or self._stopping or not self._apply(entry[0]):
                    break
        finally:
            self._finished = True
            self._done.release()
