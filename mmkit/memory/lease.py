"""Leases: the one way mmkit owns committed memory that callers can reach.

A lease stands for one span: a dimension's region, a layer copy, a pool block. Every view of
the span is an export of the lease, counted by the buffer protocol itself as it fills and
releases buffers, so "can anyone still reach this memory?" has an exact answer at any
instant: ``close()`` ends the lease if, and only if, no view of it exists, and afterwards no
view of it can be made.

The counting is done by CPython, in C. Each view gets its own *counter*: a fresh, empty
``memoryview``. The view is made over the counter (through ``pickle.PickleBuffer``, so it is a
new export with a managed buffer of its own, which CPython counts as one of the counter's
exports) and is then pointed at the span, before anyone else can see it. Releasing the view,
however and wherever that happens (in a thread, in the collector, while an exception
unwinds), is CPython's own ``releasebuffer`` of the counter: no Python code runs. A counter is
lent exactly once and given back exactly once, so no two threads ever change one count:
this holds where memoryview's counts are not atomic (free-threaded 3.13, CPython
gh-127716). ``close()`` releases every counter, which CPython refuses for one still lent;
under a GIL, a counter that anything besides its lease still refers to counts as lent too
(numpy's ``ndarray(buffer=view)`` keeps only ``view.obj``).

So ``view.obj`` is the view's counter: an empty memoryview, read-only unless the lease is
writable. Nothing reachable from a view offers more than the view itself does.

Counters are always held strongly, by their lease or, once it is closed, by ``_UNCLAIMED``:
CPython 3.10-3.12 crash when the collector clears a memoryview that still has exports, and
the collector calls weak-reference callbacks before the finalizers that may still read a
view, so memory is never given back from one.
"""

from __future__ import annotations

import ctypes
import gc
import operator
import os
import pickle
import sys
from _thread import get_ident
from collections.abc import Callable
from sys import getrefcount

from mmkit.memory.locks import ForkSafeLock
from mmkit.platform import FREE_THREADED
from mmkit.platform.interrupts import interrupts_deferred
from mmkit.values.errors import InvalidState, OwnsMemory

_Word = ctypes.c_ssize_t


class _ViewFields(ctypes.Structure):
    """The fields of a memoryview object that pointing it changes (laid out below)."""

    buf: int
    len: int
    shape: int


def _view_layout() -> tuple[type[_ViewFields], int]:
    """Where a 1-D memoryview object keeps its buffer's ``buf`` and ``len`` and its shape.

    ``PyMemoryViewObject`` keeps a private copy of its ``Py_buffer`` (Include/cpython/
    memoryobject.h) after a header whose size differs between builds, and its shape after
    that; we find them by the values a fresh view over an empty counter must hold there,
    and return a structure that lays them over a view (from its ``buf``).
    """
    counter = memoryview(b"")
    probe = memoryview(pickle.PickleBuffer(counter))
    size = memoryview.__basicsize__ + 3 * memoryview.__itemsize__
    step = ctypes.sizeof(_Word)
    words = (_Word * (size // step)).from_address(id(probe))
    # Py_buffer: buf, obj, len, itemsize, readonly+ndim, format, shape, strides, ...
    found = [
        index
        for index in range(len(words) - 7)
        if words[index + 1] == id(counter) and words[index + 2] == 0 and words[index + 3] == 1
    ]
    if len(found) != 1:
        raise ImportError("mmkit does not know how this interpreter lays out a memoryview")
    buf = found[0] * step
    shape = words[found[0] + 6] - id(probe)
    if not buf + 8 * step <= shape < size:
        raise ImportError("mmkit does not know where this interpreter keeps a view's shape")

    class Fields(_ViewFields):
        _fields_ = (
            ("buf", _Word),
            ("obj", _Word),
            ("len", _Word),
            ("between", ctypes.c_char * (shape - buf - 3 * step)),
            ("shape", _Word),
        )

    return Fields, buf


_Fields, _BUF = _view_layout()


def _pointed(counter: memoryview, address: int, size: int) -> memoryview:
    """A new view, lent by ``counter``, whose bytes are ``size`` bytes at ``address``."""
    maker = pickle.PickleBuffer(counter)
    view = memoryview(maker)
    maker.release()
    fields = _Fields.from_address(id(view) + _BUF)
    fields.buf = address
    fields.len = size
    fields.shape = size
    return view


_COUNTS_HOLDERS = not FREE_THREADED
"""Whether reference counts say exactly who holds a counter. numpy's ``ndarray(buffer=view)``
lets the view go and keeps only ``view.obj``: no export, just a reference. Under a GIL the
count is exact; free-threaded CPython's per-thread counts can read high from another thread
until the owner merges them, which would pin memory for as long (a known limit there)."""

_SENTINEL = memoryview(b"")
_SENTINELS = [_SENTINEL]
"""Never lent, held twice here as a counter is by its lease's list and the copy passed to
``_lent``: the baseline."""


def _lent(counters: list[memoryview]) -> list[memoryview]:
    """The counters whose view, or anything else that holds them, still exists.

    ``counters`` is a copy of the list that holds them. The others are released for good.
    Reference counts are compared with the sentinel's, read in the same loop, so nothing
    that holds every object it looks at (a tracer) skews them.
    """
    counts = [getrefcount(counter) for counter in [*counters, _SENTINEL]]
    alone = counts.pop()
    return [
        counter
        for counter, count in zip(counters, counts, strict=True)
        if (_COUNTS_HOLDERS and count > alone) or _exported(counter)
    ]


def _exported(counter: memoryview) -> bool:
    """Whether ``counter`` still lends its buffer; if not, it is released for good."""
    try:
        counter.release()
    except BufferError:
        return True
    return False


def _check_layout() -> None:
    """A view pointed at known bytes must read them, and count on its counter, exactly."""
    known = b"mmkit: a pointed view"
    buffer = ctypes.create_string_buffer(known, len(known))
    counter = memoryview(b"")
    view = _pointed(counter, ctypes.addressof(buffer), len(known))
    read = (view.nbytes, view.shape, view.readonly, view.obj is counter, bytes(view))
    part = bytes(view[6:12])
    holder = [counter]
    del counter
    lent = _lent(holder[:]) == holder
    view.release()
    given_back = _lent(holder[:]) == []
    spare = [memoryview(b"")]
    extra = spare[0]
    held = _lent(spare[:]) == spare or not _COUNTS_HOLDERS
    del extra
    alone = _lent(spare[:]) == []
    writer = _pointed(memoryview(bytearray()), ctypes.addressof(buffer), len(known))
    writer[:5] = b"MMKIT"
    writer.release()
    if (
        read != (len(known), (len(known),), True, True, known)
        or part != known[6:12]
        or not (lent and given_back and held and alone)
        or buffer.raw[:6] != b"MMKIT:"
    ):
        raise ImportError("mmkit cannot make views of its own memory on this interpreter")


_check_layout()


_OPEN, _CLOSING, _CLOSED = 0, 1, 2


class Lease(OwnsMemory):
    """One span of committed memory, and exactly the views of it that exist.

    ``view()`` makes a view (read-only unless the lease is ``writable``); ``close()`` ends
    the lease if no view exists. A closed lease's memory belongs to its owner again.

    Making a view takes no lock. It records the view's counter in ``_counters`` (one list,
    only ever changed in place, by single list operations), then reads ``_state``. A close
    marks the lease closing under ``_lock``, then copies the list. Either the copy holds
    the new counter (its view exists, so the close is refused), or the list operations
    ordered the view's append after the copy and the view sees the lease closing, waits
    for ``_lock`` and learns the outcome. The GIL gives that order on GIL builds; the
    list's own lock gives it on free-threaded ones.
    """

    __slots__ = (
        "_counters",
        "_lock",
        "_state",
        "_tidier",
        "_tidy_at",
        "address",
        "size",
        "writable",
    )

    def __init__(self, address: int, size: int, *, writable: bool = False) -> None:
        if address <= 0 or size <= 0:
            raise ValueError(f"a lease needs a real span, not {address:#x}+{size}")
        self.address = address
        self.size = size
        self.writable = writable
        self._counters: list[memoryview] = []
        self._tidy_at = 64
        self._tidier = 0
        self._state = _OPEN
        self._lock = ForkSafeLock()

    def __repr__(self) -> str:
        state = "open" if self.open else "closed"
        kind = "writable" if self.writable else "read-only"
        return f"<Lease {state} {kind} {self.address:#x}+{self.size:#x}>"

    @property
    def open(self) -> bool:
        return self._state != _CLOSED

    def view(self, start: int = 0, size: int | None = None) -> memoryview:
        """A new ``'B'`` view of ``size`` bytes from ``start`` (default: the whole span).

        ``InvalidState`` once the lease is closed. Each view is an export of its own, so
        threads that each make theirs share no CPython object on the way to the bytes.
        """
        size = self.size - start if size is None else size
        if start < 0 or size < 0 or start + size > self.size:
            raise ValueError(f"{start}+{size} is not inside a span of {self.size} bytes")
        # Until it is returned the view is ours alone: one dropped on any path (a closed
        # lease, a KeyboardInterrupt) just leaves an idle counter behind.
        counter = memoryview(bytearray()) if self.writable else memoryview(b"")
        view = _pointed(counter, self.address + start, size)
        counters = self._counters
        counters.append(counter)
        if self._state:  # a close is being decided, or was: wait for its answer
            with self._lock:
                if self._state == _CLOSED:
                    raise InvalidState(f"the memory at {self.address:#x} has been given back")
        if len(counters) >= self._tidy_at:
            self._tidy()
        return view

    def _tidy(self) -> bool:
        """Forget the counters of views that are gone, so the list follows the live ones.

        Only the part of the list that was looked at is replaced, so counters appended
        meanwhile stay. False, having done nothing, if another thread is at it or this one
        is further out (a signal handler or ``__del__`` that made a view of this lease while
        it tidied): two tidies of one list would undo each other.
        """
        with interrupts_deferred():  # a Ctrl-C between acquire and try would keep the lock
            if not self._lock.acquire(blocking=False):
                return False
            try:
                me = get_ident()
                if self._tidier == me:
                    return False
                self._tidier = me  # another thread's id here is a fork's leftover
                try:
                    counters = self._counters
                    seen = len(counters)
                    counters[:seen] = _lent(counters[:seen])
                    self._tidy_at = max(64, 2 * len(counters))
                finally:
                    self._tidier = 0
                return True
            finally:
                self._lock.release()

    def close(self) -> bool:
        """End the lease if no view of it exists: True, and the memory is the owner's again.

        False when a view still exists; then nothing changes and the owner may ask again.
        """
        with self._lock:
            if self._state == _CLOSED:
                return True
            if self._state == _CLOSING:  # this thread is deciding already, further out
                return False
            try:
                self._state = _CLOSING
                if not self._tidy() or self._counters:
                    return False
                self._state = _CLOSED
                return True
            finally:
                if self._state == _CLOSING:
                    self._state = _OPEN

    def close_when_idle(self, on_idle: Callable[[], None]) -> None:
        """Make no more views, and call ``on_idle`` once none is left (now, if none is).

        For memory whose owner is gone (a closed manager). The counters still lent stay held
        here, never left to the collector (which calls weak-reference callbacks before the
        finalizers that may still read a view, or bring it back); they are looked at again
        after every collection and every later ``close_when_idle``.
        """
        with self._lock:
            if self.close():
                on_idle()
                return
            self._state = _CLOSED
            lent = _lent(self._counters[:])
            self._counters.clear()
        with _UNCLAIMED_LOCK:
            _UNCLAIMED.append((lent, on_idle))
        claim_idle()


_UNCLAIMED: list[tuple[list[memoryview], Callable[[], None]]] = []
"""Memory of closed owners that views still held, with what gives it back."""
_UNCLAIMED_LOCK = ForkSafeLock()


_CLAIMING: list[bool] = [False]
"""Whether a pass is under way (on the thread that holds ``_UNCLAIMED_LOCK``)."""
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _CLAIMING.__setitem__(0, False))


def _checked_slice(view: memoryview) -> memoryview:
    copy = view[:]
    len(copy)  # a slice of a buffer already gone raises here, not in the caller's hands
    return copy


another_view: Callable[[memoryview], memoryview] = (
    operator.itemgetter(slice(None)) if sys.version_info >= (3, 12) else _checked_slice
)
"""A new view of a view's bytes for a caller, or ``ValueError`` if that view is released.

Also when it is released while the slice is being made: CPython 3.11 and before can run a
collection, and with it other threads, inside the allocation that slicing makes, and then
hand out a slice of a buffer already gone, which fails only when used; there the slice is
asked for its length at once. Once made, a slice holds the buffer, and releasing the view
it came from no longer takes it away. From 3.12 collections run only between bytecodes:
a plain slice, taken by a C call."""


def claim_idle() -> None:
    """Give back the memory of closed owners whose views are all gone.

    Skipped if another thread is at it, or this one further out (a collection that ran in
    the middle of a pass); with Ctrl-C held, so an entry is taken off the list only together
    with its giving back, and whatever is left waits for the next pass.
    """
    with interrupts_deferred():
        if not _UNCLAIMED_LOCK.acquire(blocking=False):
            return
        try:
            if _CLAIMING[0]:
                return
            _CLAIMING[0] = True
            try:
                for entry in list(_UNCLAIMED):
                    counters, on_idle = entry
                    counters[:] = _lent(counters[:])
                    if not counters:
                        _UNCLAIMED.remove(entry)
                        on_idle()
            finally:
                _CLAIMING[0] = False
        finally:
            _UNCLAIMED_LOCK.release()


def _after_collection(phase: str, info: dict[str, int]) -> None:
    if phase == "stop" and _UNCLAIMED:
        claim_idle()


gc.callbacks.append(_after_collection)
