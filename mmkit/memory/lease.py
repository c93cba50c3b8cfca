"""Leases: the one way mmkit owns committed memory that callers can reach.

A lease stands for one span: a dimension's region, a layer copy, a pool block. Every view of
the span is an export of the lease, counted by the buffer protocol itself as it fills and
releases buffers, so "can anyone still reach this memory?" has an exact answer at any
instant: ``close()`` ends the lease if, and only if, no view of it exists, and afterwards no
view of it can be made.

The counting is done by CPython, in C. Each lease has a *counter*: an empty read-only
``memoryview``. A view of the span is made by a private exporter object whose ``getbuffer``
asks the counter for a buffer (CPython counts it as one of the counter's exports) and then
points that buffer at the span. The buffer names the counter as its owner, so releasing it
is CPython's own ``releasebuffer`` of a memoryview: no Python code runs when a view goes,
however and whenever that happens (in a thread, in the collector, while an exception
unwinds). ``counter.release()`` refuses while any export is alive: that is ``close()``.

So ``view.obj`` is the counter: an empty read-only memoryview. Nothing reachable from a view
offers a writable buffer, and views made from the counter see zero bytes and do not count.
"""

from __future__ import annotations

import ctypes
import os
import threading
import weakref
from collections.abc import Callable

from mmkit.memory.views import PyBuffer, get_buffer
from mmkit.platform.interrupts import interrupts_deferred
from mmkit.values.errors import InvalidState, OwnsMemory


class _TypeSlot(ctypes.Structure):
    _fields_ = (("slot", ctypes.c_int), ("pfunc", ctypes.c_void_p))


class _TypeSpec(ctypes.Structure):
    _fields_ = (
        ("name", ctypes.c_char_p),
        ("basicsize", ctypes.c_int),
        ("itemsize", ctypes.c_int),
        ("flags", ctypes.c_uint),
        ("slots", ctypes.POINTER(_TypeSlot)),
    )


# Include/typeslots.h and Include/object.h; stable since 3.10.
_BF_GETBUFFER = 1
_TPFLAGS_IMMUTABLETYPE = 1 << 8
_TPFLAGS_DEFAULT = 1 << 18  # Py_TPFLAGS_HAVE_VERSION_TAG
_LEN = PyBuffer.len.offset
_ITEMSIZE = PyBuffer.itemsize.offset

_GetBuffer = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)

_type_from_spec = ctypes.pythonapi["PyType_FromSpec"]
_type_from_spec.argtypes = (ctypes.POINTER(_TypeSpec),)
_type_from_spec.restype = ctypes.py_object
_incref = ctypes.pythonapi["Py_IncRef"]
_incref.argtypes = (ctypes.py_object,)
_incref.restype = None

_LEASES: dict[int, Lease] = {}
"""Open leases, by the id of their exporter (which they keep alive while registered)."""


def _export(exporter: int | None, view: int | None, flags: int) -> int:
    """The exporter's ``getbuffer``: a buffer counted by the lease's counter, over its span.

    Called only from ``Lease.view``, with Ctrl-C held, so nothing can interrupt it half-done;
    it never raises, and answers -1 for a closed lease.
    """
    try:
        lease = _LEASES.get(exporter or 0)
        if lease is None or view is None:
            return -1
        get_buffer(lease._counter, view, flags)  # the counter's own C getbuffer counts it
        buffer = PyBuffer.from_address(view)
        buffer.buf = lease.address
        buffer.len = lease.size
        buffer.readonly = 0 if lease.writable else 1
        buffer.shape = view + _LEN
        buffer.strides = view + _ITEMSIZE
        return 0
    except BaseException:  # the counter was released (the lease closed) between the checks
        return -1


def _exporter_type() -> type:
    """A heap type with only a ``getbuffer`` slot; its callback and tables are never freed."""
    callback = _GetBuffer(_export)
    address = ctypes.cast(callback, ctypes.c_void_p).value
    table = (_TypeSlot * 2)(_TypeSlot(_BF_GETBUFFER, address), _TypeSlot(0, None))
    name = b"mmkit._Exporter"
    spec = _TypeSpec(name, 0, 0, _TPFLAGS_DEFAULT | _TPFLAGS_IMMUTABLETYPE, table)
    for thing in (name, table, spec, callback):
        _incref(thing)
    made: type = _type_from_spec(ctypes.byref(spec))
    return made


_Exporter = _exporter_type()


class Lease(OwnsMemory):
    """One span of committed memory, and exactly the views of it that exist.

    ``view()`` makes a view (read-only unless the lease is ``writable``); ``close()`` ends
    the lease if no view exists. A closed lease's memory belongs to its owner again.
    """

    __slots__ = ("_counter", "_exporter", "_lock", "_open", "address", "size", "writable")

    def __init__(self, address: int, size: int, *, writable: bool = False) -> None:
        if address <= 0 or size <= 0:
            raise ValueError(f"a lease needs a real span, not {address:#x}+{size}")
        self.address = address
        self.size = size
        self.writable = writable
        self._counter = memoryview(b"")
        self._exporter = _Exporter()
        self._open = True
        self._lock = threading.RLock()
        _LEASES[id(self._exporter)] = self

    def __repr__(self) -> str:
        state = "open" if self._open else "closed"
        kind = "writable" if self.writable else "read-only"
        return f"<Lease {state} {kind} {self.address:#x}+{self.size:#x}>"

    @property
    def open(self) -> bool:
        return self._open

    def view(self) -> memoryview:
        """A new ``'B'`` view of the whole span; ``InvalidState`` once the lease is closed."""
        with self._lock:
            if not self._open:
                raise InvalidState(f"the memory at {self.address:#x} has been given back")
            with interrupts_deferred():
                try:
                    return memoryview(self._exporter)
                except SystemError:
                    pass
            # The counter was released behind our back (it is reachable as ``view.obj``)
            # while no view existed: the lease is still open, so it gets a fresh counter.
            self._counter = memoryview(b"")
            with interrupts_deferred():
                return memoryview(self._exporter)

    def close(self) -> bool:
        """End the lease if no view of it exists: True, and the memory is the owner's again.

        False when a view still exists; then nothing changes and the owner may ask again.
        """
        with self._lock:
            if not self._open:
                return True
            try:
                self._counter.release()
            except BufferError:
                return False
            self._open = False
            _LEASES.pop(id(self._exporter), None)
            return True

    def close_when_idle(self, on_idle: Callable[[], None]) -> None:
        """Make no more views, and call ``on_idle`` once none is left (now, if none is).

        For memory whose owner is gone (a closed manager): CPython frees the counter when the
        last view of the span goes, and that calls ``on_idle``.
        """
        with self._lock:
            if self.close():
                on_idle()
                return
            self._open = False
            _LEASES.pop(id(self._exporter), None)
            counter, self._counter = self._counter, memoryview(b"")
        finalizer = weakref.finalize(counter, on_idle)
        finalizer.atexit = False  # at exit the OS takes the memory back anyway


def _after_fork_in_child() -> None:
    """A lease lock held by a thread the fork did not copy would never be released."""
    for lease in list(_LEASES.values()):
        lease._lock._at_fork_reinit()  # type: ignore[attr-defined]  # as threading does


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
