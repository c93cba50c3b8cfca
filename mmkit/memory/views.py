"""Zero-copy views over raw memory, and the address behind any buffer.

A view is a ``memoryview`` over a ctypes array placed at the memory's address. The array
carries a reference to the memory's owner, so the memory cannot be released while any view,
or any slice of one, is alive: the release is deferred, never dangling.
"""

from __future__ import annotations

import ctypes

from mmkit.values.errors import NotABuffer

_PyBUF_FULL_RO = 0x11C


class _PyBuffer(ctypes.Structure):
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


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = (ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int)
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = (ctypes.POINTER(_PyBuffer),)
_release_buffer.restype = None


def address_of(buffer: object) -> int:
    """Address of the first byte of any object that supports the buffer protocol."""
    info = _PyBuffer()
    try:
        _get_buffer(buffer, ctypes.byref(info), _PyBUF_FULL_RO)
    except (TypeError, BufferError, ValueError) as exc:
        raise NotABuffer(f"address_of needs a buffer object, not {type(buffer).__name__}") from exc
    try:
        return int(info.buf or 0)
    finally:
        _release_buffer(ctypes.byref(info))


def span_view(address: int, size: int, owner: object, *, writable: bool = False) -> memoryview:
    """A ``'B'`` memoryview of ``size`` bytes at ``address`` that keeps ``owner`` alive."""
    array = (ctypes.c_ubyte * size).from_address(address)
    array._mmkit_owner = owner  # type: ignore[attr-defined]
    view = memoryview(array).cast("B")
    return view if writable else view.toreadonly()


def scratch_view(address: int, size: int) -> memoryview:
    """A writable view that pins nothing: for the manager's use under its lock, never exposed."""
    return memoryview((ctypes.c_ubyte * size).from_address(address)).cast("B")
