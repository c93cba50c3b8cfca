"""The address behind any buffer, and the manager's private scratch views.

Views handed to callers come from leases (``mmkit.memory.lease``); a scratch view is for the
manager's own writes under its lock, into memory nobody else can see yet.
"""

from __future__ import annotations

import ctypes

from mmkit.values.errors import NotABuffer

_PyBUF_FULL_RO = 0x11C


class PyBuffer(ctypes.Structure):
    """``Py_buffer``, as Include/pybuffer.h lays it out."""

    _fields_ = (
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    )


# Our own function objects (``pythonapi[name]``, not the shared ``pythonapi.name``), so no
# other code that sets argtypes on the shared ones can change ours.
get_buffer = ctypes.pythonapi["PyObject_GetBuffer"]
get_buffer.argtypes = (ctypes.py_object, ctypes.c_void_p, ctypes.c_int)
get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi["PyBuffer_Release"]
_release_buffer.argtypes = (ctypes.c_void_p,)
_release_buffer.restype = None


def address_of(buffer: object) -> int:
    """Address of the first byte of any object that supports the buffer protocol."""
    info = PyBuffer()
    try:
        get_buffer(buffer, ctypes.addressof(info), _PyBUF_FULL_RO)
    except (TypeError, BufferError, ValueError) as exc:
        raise NotABuffer(f"address_of needs a buffer object, not {type(buffer).__name__}") from exc
    try:
        return int(info.buf or 0)
    finally:
        _release_buffer(ctypes.addressof(info))


def scratch_view(address: int, size: int) -> memoryview:
    """A writable view that pins nothing: for the manager's use under its lock, never exposed."""
    return memoryview((ctypes.c_ubyte * size).from_address(address)).cast("B")
