"""Leases: the one way mmkit owns committed memory that callers can reach.

A lease stands for one span: a dimension's region, a layer copy, a pool block. Every view of
the span is an export of the lease, counted by the buffer protocol itself as it fills and
releases buffers, so "can anyone still reach this memory?" has an exact answer at any
instant (``exports``), whenever the interpreter gets round to freeing the view objects. The
owner gives the memory back only after ``close()`` found no export; after that the lease
makes no view again.

Two tiny C-level types, built once with ``PyType_FromSpec``, carry this:

- the private *exporter*, whose ``getbuffer`` fills a buffer for its lease and counts it;
- the public ``Span``, named as the buffer's owner: it is what ``view.obj`` shows. It has no
  attributes, no methods and no buffer of its own, so nothing reachable from a view offers a
  writable buffer or a handle on the memory's lifetime. Releasing a buffer lands on its
  ``releasebuffer``, which uncounts it.

``memoryview(exporter)`` costs a callback into Python (a few microseconds), so owners make a
view once per publication and readers slice it: slices share its managed buffer, and the
export ends when the last of them is gone.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable

from mmkit.memory.locks import ForkSafeLock
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
_BF_RELEASEBUFFER = 2
_TPFLAGS_IMMUTABLETYPE = 1 << 8
_TPFLAGS_DEFAULT = 1 << 18  # Py_TPFLAGS_HAVE_VERSION_TAG

_GetBuffer = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)
_ReleaseBuffer = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)

_fill_info = ctypes.pythonapi.PyBuffer_FillInfo
_fill_info.argtypes = (
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_ssize_t,
    ctypes.c_int,
    ctypes.c_int,
)
_fill_info.restype = ctypes.c_int
_type_from_spec = ctypes.pythonapi.PyType_FromSpec
_type_from_spec.argtypes = (ctypes.POINTER(_TypeSpec),)
_type_from_spec.restype = ctypes.py_object

_LEASES: dict[int, Lease] = {}
"""Open leases and leases with exports left, by the id of their exporter and of their span."""

_incref = ctypes.pythonapi.Py_IncRef
_incref.argtypes = (ctypes.py_object,)
_incref.restype = None


def _keep_forever(*objects: object) -> None:
    """Never free these (names, slot tables, callbacks the two types point into): a buffer
    released while the interpreter clears its modules at exit must still find its callback."""
    for thing in objects:
        _incref(thing)


def _make_type(name: bytes, slot: int, function: ctypes._CFunctionType) -> type:
    """A heap type with one buffer slot, no attributes and no methods of its own."""
    address = ctypes.cast(function, ctypes.c_void_p).value
    table = (_TypeSlot * 2)(_TypeSlot(slot, address), _TypeSlot(0, None))
    spec = _TypeSpec(name, 0, 0, _TPFLAGS_DEFAULT | _TPFLAGS_IMMUTABLETYPE, table)
    _keep_forever(name, table, spec, function)
    made: type = _type_from_spec(ctypes.byref(spec))
    return made


def _buffer_slots() -> tuple[ctypes._CFunctionType, ctypes._CFunctionType]:
    """The two C slots, as callbacks that need nothing a shutting-down interpreter clears."""
    leases = _LEASES

    def get_buffer(exporter: int | None, view: int | None, flags: int) -> int:
        lease = leases.get(exporter or 0)
        if lease is None or view is None:
            return -1  # only mmkit holds exporters, and it asks open leases only
        return lease._export(view, flags)

    def release_buffer(span: int | None, view: int | None) -> None:
        lease = leases.get(span or 0)
        if lease is not None:
            lease._unexport()

    return _GetBuffer(get_buffer), _ReleaseBuffer(release_buffer)


_get_buffer_slot, _release_buffer_slot = _buffer_slots()
_Exporter = _make_type(b"mmkit._Exporter", _BF_GETBUFFER, _get_buffer_slot)
Span = _make_type(b"mmkit.Span", _BF_RELEASEBUFFER, _release_buffer_slot)
"""The type of ``view.obj`` for every view mmkit hands out: an inert token."""


class Lease(OwnsMemory):
    """One span of committed memory and the count of its live views.

    ``view()`` makes a view (read-only unless the lease is ``writable``); ``exports`` is how
    many exist now; ``close()`` ends the lease if none does. A closed lease's memory belongs
    to its owner again: no view of it exists and none can be made.
    """

    __slots__ = (
        "__weakref__",
        "_exporter",
        "_exports",
        "_lock",
        "_on_idle",
        "_open",
        "_span",
        "address",
        "size",
        "writable",
    )

    # Class attributes, not module globals: buffers can be released while the interpreter
    # is clearing modules at exit, and these must still be there.
    _registry = _LEASES
    _fill = _fill_info
    _finalizing = staticmethod(sys.is_finalizing)

    def __init__(self, address: int, size: int, *, writable: bool = False) -> None:
        if address <= 0 or size <= 0:
            raise ValueError(f"a lease needs a real span, not {address:#x}+{size}")
        self.address = address
        self.size = size
        self.writable = writable
        self._exporter = _Exporter()
        self._span = Span()
        self._exports = 0
        self._open = True
        self._on_idle: Callable[[], None] | None = None
        self._lock = ForkSafeLock()
        _LEASES[id(self._exporter)] = self
        _LEASES[id(self._span)] = self

    def __repr__(self) -> str:
        state = "open" if self._open else "closed"
        kind = "writable" if self.writable else "read-only"
        return f"<Lease {state} {kind} {self.address:#x}+{self.size:#x} exports={self._exports}>"

    @property
    def exports(self) -> int:
        """Views (managed buffers) of this span alive now. Slices of a view share its count."""
        return self._exports

    @property
    def open(self) -> bool:
        return self._open

    def view(self) -> memoryview:
        """A new ``'B'`` view of the whole span; ``InvalidState`` once the lease is closed."""
        if not self._open:
            raise InvalidState(f"the memory at {self.address:#x} has been given back")
        try:
            return memoryview(self._exporter)
        except SystemError:  # closed between the check and the export
            raise InvalidState(f"the memory at {self.address:#x} has been given back") from None

    def close(self) -> bool:
        """End the lease if no view of it exists: True, and the memory is the owner's again.

        False when a view still exists; then nothing changes and the owner may ask again.
        """
        with self._lock:
            if self._exports:
                return False
            self._open = False
        self._forget()
        return True

    def close_when_idle(self, on_idle: Callable[[], None]) -> None:
        """Make no more views, and call ``on_idle`` once none is left (now, if none is)."""
        with self._lock:
            self._open = False
            if self._exports:
                self._on_idle = on_idle
                return
        self._forget()
        on_idle()

    # -- the buffer protocol's side (called from the two C slots) -------------------------

    def _export(self, view: int, flags: int) -> int:
        with self._lock:
            if not self._open:
                return -1
            self._exports += 1
        try:
            readonly = not self.writable
            return int(self._fill(view, id(self._span), self.address, self.size, readonly, flags))
        except BaseException:
            self._unexport()
            return -1

    def _unexport(self) -> None:
        with self._lock:
            self._exports -= 1
            if self._exports or self._on_idle is None:
                return
            on_idle, self._on_idle = self._on_idle, None
        self._forget()
        if not self._finalizing():
            on_idle()

    def _forget(self) -> None:
        self._registry.pop(id(self._exporter), None)
        self._registry.pop(id(self._span), None)
