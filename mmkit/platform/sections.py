"""Windows shared memory: unnamed paging-file sections mapped into placeholders, and
``LockFileEx`` byte locks on a delete-on-close file.

An arena is three kernel objects, each with no name anywhere, so there is nothing to squat
and nothing to leak: the kernel frees each with its last handle and view, however the
processes die.

- the *data section* (``CreateFileMappingW`` on the paging file, ``SEC_COMMIT``: commit is
  charged once, at creation);
- the *control section*, the arena's first bytes kept apart: a closed reader must stop
  seeing the owner's table at once while its threads may still read the generation word,
  and Windows cannot replace a view in one step. So a reader maps the control area
  copy-on-write and zeroes it in place at close; until the reader object goes, that view
  holds a few pages of control section, never the data;
- the *lock file*, created in the temporary directory with ``FILE_FLAG_DELETE_ON_CLOSE``:
  pins are byte locks on it, each open its own file object (``ReOpenFile``), and they go
  with the handle or the process. Windows tells whether a byte is locked only by letting
  one take it, so ``locked`` holds it for an instant; callers that must not fail on such a
  probe poll (``wait_for_lock``).

A handle, here and in the token, is the three handle values packed into one int. A reader
opens the owner's process with ``PROCESS_DUP_HANDLE``, which Windows refuses to processes of
another user (unless the reader holds ``SeDebugPrivilege``, as an elevated administrator
may) and to an elevated owner from a reader that is not, and duplicates the sections with
``FILE_MAP_READ`` only: a writable view of them is refused by the kernel.

A view can be mapped at a chosen address only over a *placeholder* of exactly its size
(Windows 10 1803 and later): each reservation is one placeholder, cut up as views come and
go (``Pieces``); the owner's pool becomes an ordinary reservation up front, so it commits
there as everywhere else. Guard pages stay placeholders: inaccessible, as they should be.

Importable everywhere so its pure logic can be tested on any OS; only constructing
``SectionSharing`` needs Windows.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import enum
import errno
import os
import secrets
import struct
import sys
import tempfile
import threading
import zlib
from collections.abc import Iterator, Sequence
from ctypes import byref, c_int, c_size_t, c_uint32, c_uint64, c_void_p, c_wchar_p, sizeof
from typing import TYPE_CHECKING

from mmkit.platform.base import NotShared, PlatformError, Protection, check_span
from mmkit.platform.interrupts import interrupts_deferred
from mmkit.platform.windows import (
    ERROR_ACCESS_DENIED,
    ERROR_INVALID_ADDRESS,
    ERROR_INVALID_PARAMETER,
    ERROR_NOT_LOCKED,
    MEM_COMMIT,
    MEM_RELEASE,
    MEM_RESERVE,
    PAGE_NOACCESS,
    PAGE_READONLY,
    PAGE_READWRITE,
    Function,
    MemoryBasicInformation,
    WindowsMemory,
    address_text,
    aligned_placement,
    declare,
    failure,
    last_error,
    require,
    reservation_size,
    span_arguments,
)

if TYPE_CHECKING:
    from mmkit.platform.base import SharedMemory

MEM_MAPPED = 0x00040000
"""MEMORY_BASIC_INFORMATION.Type of a view of a section."""
MEM_RESERVE_PLACEHOLDER = 0x00040000
MEM_REPLACE_PLACEHOLDER = 0x00004000
MEM_PRESERVE_PLACEHOLDER = 0x2
PAGE_WRITECOPY = 0x08
SEC_COMMIT = 0x08000000
FILE_MAP_COPY = 0x0001
FILE_MAP_WRITE = 0x0002
FILE_MAP_READ = 0x0004
PROCESS_DUP_HANDLE = 0x0040
SYNCHRONIZE = 0x00100000
WAIT_OBJECT_0 = 0
DUPLICATE_SAME_ACCESS = 0x2
GENERIC_READ = 0x80000000
GENERIC_WRITE = 0x40000000
DELETE = 0x00010000
FILE_SHARE_ALL = 0x1 | 0x2 | 0x4
"""FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE: every open lets the others in."""
CREATE_NEW = 1
FILE_ATTRIBUTE_TEMPORARY = 0x100
FILE_FLAG_DELETE_ON_CLOSE = 0x04000000
FILE_TYPE_DISK = 1
LOCKFILE_FAIL_IMMEDIATELY = 0x1
LOCKFILE_EXCLUSIVE_LOCK = 0x2
TOKEN_QUERY = 0x0008
TOKEN_USER = 1
"""TOKEN_INFORMATION_CLASS TokenUser: a TOKEN_USER, whose first field is the user's SID."""
ERROR_INVALID_HANDLE = 6
ERROR_LOCK_VIOLATION = 33
INVALID_HANDLE_VALUE = (1 << 64) - 1
"""``(HANDLE)-1`` as ctypes returns a ``c_void_p``: what CreateFileW and ReOpenFile fail with."""

HANDLE_BITS = 32
"""Kernel handle values fit in 32 bits on 64-bit Windows (kept so for 32-bit interop)."""

TRAILER = struct.Struct("=8sQQQ")
"""magic, owner pid, the lock file's handle value in the owner, closed: this backend's own
record, in a page after the control area, that ``reopen`` checks before it touches the lock
file (a number reused for a pipe could block the queries made on it)."""
TRAILER_MAGIC = b"MMKITWIN"

UNLOCK_ROUNDS = 1024
"""Most unlocks of one byte: Windows stacks a shared lock one open takes twice."""


def pack(section: int, control: int, locks: int) -> int:
    """One int for an arena's three handles (data section, control section, lock file)."""
    values = (section, control, locks)
    if not all(0 < value < 1 << HANDLE_BITS for value in values):
        raise ValueError(f"handle values {values} do not fit in {HANDLE_BITS} bits each")
    return section | control << HANDLE_BITS | locks << 2 * HANDLE_BITS


def unpack(handle: int) -> tuple[int, int, int]:
    """The three handles ``pack`` made one int; ``ValueError`` for an int it cannot have made."""
    mask = (1 << HANDLE_BITS) - 1
    values = (handle & mask, handle >> HANDLE_BITS & mask, handle >> 2 * HANDLE_BITS)
    if handle <= 0 or not all(0 < value <= mask for value in values):
        raise ValueError(f"{handle} is not a Windows share handle")
    return values


def _handles(handle: int, call: str) -> tuple[int, int, int]:
    """``unpack`` for a call on an open handle: a closed or foreign one is ``EBADF``, as a
    closed descriptor is on POSIX."""
    try:
        return unpack(handle)
    except ValueError:
        reason = f"{handle} is not an open share handle"
        raise PlatformError(call, str(handle), errno.EBADF, reason, exhausted=False) from None


def sid_digest(sid: bytes) -> int:
    """A user's id for the share token: a 32-bit digest of the SID (the token's early check;
    Windows itself refuses other users at ``OpenProcess``)."""
    return zlib.crc32(sid)


class Kind(enum.Enum):
    """What a piece of a reservation is."""

    PLACEHOLDER = "placeholder"
    VIEW = "view"
    RESERVED = "reserved"
    """An ordinary reservation: committed through ``VirtualMemory`` (the owner's pool)."""


class Pieces:
    """How one placeholder reservation is cut up, in address order. Pure bookkeeping: the
    calls it plans are made by ``SectionSharing``, which records each as it succeeds."""

    def __init__(self, base: int, size: int) -> None:
        self.base = base
        self.size = size
        self._starts = [base]
        self._pieces = {base: (size, Kind.PLACEHOLDER)}

    def __iter__(self) -> Iterator[tuple[int, int, Kind]]:
        for start in self._starts:
            length, kind = self._pieces[start]
            yield start, length, kind

    def piece(self, address: int) -> tuple[int, int, Kind]:
        """The piece holding ``address``."""
        if not self.base <= address < self.base + self.size:
            raise ValueError(f"{address:#x} is outside the reservation at {self.base:#x}")
        start = self._starts[bisect.bisect_right(self._starts, address) - 1]
        length, kind = self._pieces[start]
        return start, length, kind

    def splits(self, address: int, size: int) -> list[tuple[int, int]]:
        """The head splits, (placeholder start, length) each, that make [address, address +
        size) a placeholder of its own; ``ValueError`` unless it lies in one placeholder."""
        start, length, kind = self.piece(address)
        if kind is not Kind.PLACEHOLDER or address + size > start + length or size <= 0:
            raise ValueError(
                f"{size} bytes at {address:#x} do not lie in one placeholder (the piece there "
                f"is a {kind.value} of {length} bytes at {start:#x}): spans are mapped as the "
                "reservation was laid out"
            )
        plan = []
        if address > start:
            plan.append((start, address - start))
        if address + size < start + length:
            plan.append((address, size))
        return plan

    def split(self, start: int, length: int) -> None:
        """Record that the placeholder at ``start`` now ends after ``length`` bytes."""
        whole, kind = self._pieces[start]
        assert kind is Kind.PLACEHOLDER and 0 < length < whole
        self._pieces[start] = (length, kind)
        self._pieces[start + length] = (whole - length, kind)
        bisect.insort(self._starts, start + length)

    def mark(self, start: int, length: int, kind: Kind) -> None:
        """Record what the piece at ``start``, exactly ``length`` bytes, has become."""
        assert self._pieces[start][0] == length
        self._pieces[start] = (length, kind)

    def overlapping(self, address: int, size: int) -> list[tuple[int, int, Kind]]:
        """The pieces [address, address + size) touches."""
        end = address + size
        return [piece for piece in self if piece[0] < end and address < piece[0] + piece[1]]


class Overlapped(ctypes.Structure):
    """OVERLAPPED, x64 layout (32 bytes): only the offset is set, for byte locks."""

    _fields_ = (
        ("Internal", c_size_t),
        ("InternalHigh", c_size_t),
        ("Offset", c_uint32),
        ("OffsetHigh", c_uint32),
        ("hEvent", c_void_p),
    )


def _at(byte: int) -> Overlapped:
    overlapped = Overlapped()
    overlapped.Offset = byte & 0xFFFFFFFF
    overlapped.OffsetHigh = byte >> 32
    return overlapped


class _Api:
    """Private bindings of the calls sharing makes (kernel32, kernelbase, advapi32)."""

    virtual_alloc2: Function
    map_view_of_file3: Function
    unmap_view_of_file2: Function
    create_file_mapping: Function
    map_view_of_file: Function
    unmap_view_of_file: Function
    virtual_free: Function
    virtual_protect: Function
    virtual_query: Function
    open_process: Function
    duplicate_handle: Function
    close_handle: Function
    get_current_process: Function
    create_file: Function
    reopen_file: Function
    get_file_type: Function
    lock_file_ex: Function
    unlock_file_ex: Function
    open_process_token: Function
    get_token_information: Function
    get_length_sid: Function
    wait_for_single_object: Function

    def __init__(self) -> None:
        if sys.platform != "win32":
            raise OSError("SectionSharing needs Windows")
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        kernelbase = ctypes.WinDLL("kernelbase", use_last_error=True)
        advapi32 = ctypes.WinDLL("advapi32", use_last_error=True)
        handle, dword, boolean = c_void_p, c_uint32, c_int
        alloc2 = declare(
            kernelbase,
            "VirtualAlloc2",
            [handle, c_void_p, c_size_t, dword, dword, c_void_p, dword],
            c_void_p,
        )
        map3 = declare(
            kernelbase,
            "MapViewOfFile3",
            [handle, handle, c_void_p, c_uint64, c_size_t, dword, dword, c_void_p, dword],
            c_void_p,
        )
        unmap2 = declare(kernelbase, "UnmapViewOfFile2", [handle, c_void_p, dword], boolean)
        if alloc2 is None or map3 is None or unmap2 is None:
            raise OSError(
                "sharing memory between processes needs Windows 10 version 1803 or later "
                "(VirtualAlloc2, MapViewOfFile3, UnmapViewOfFile2)"
            )
        self.virtual_alloc2, self.map_view_of_file3, self.unmap_view_of_file2 = (
            alloc2,
            map3,
            unmap2,
        )
        self.create_file_mapping = require(
            kernel32,
            "CreateFileMappingW",
            [handle, c_void_p, dword, dword, dword, c_wchar_p],
            handle,
        )
        self.map_view_of_file = require(
            kernel32, "MapViewOfFile", [handle, dword, dword, dword, c_size_t], c_void_p
        )
        self.unmap_view_of_file = require(kernel32, "UnmapViewOfFile", [c_void_p], boolean)
        self.virtual_free = require(kernel32, "VirtualFree", [c_void_p, c_size_t, dword], boolean)
        self.virtual_protect = require(
            kernel32,
            "VirtualProtect",
            [c_void_p, c_size_t, dword, ctypes.POINTER(dword)],
            boolean,
        )
        self.virtual_query = require(
            kernel32,
            "VirtualQuery",
            [c_void_p, ctypes.POINTER(MemoryBasicInformation), c_size_t],
            c_size_t,
        )
        self.open_process = require(kernel32, "OpenProcess", [dword, boolean, dword], handle)
        self.duplicate_handle = require(
            kernel32,
            "DuplicateHandle",
            [handle, handle, handle, ctypes.POINTER(handle), dword, boolean, dword],
            boolean,
        )
        self.close_handle = require(kernel32, "CloseHandle", [handle], boolean)
        self.get_current_process = require(kernel32, "GetCurrentProcess", [], handle)
        self.create_file = require(
            kernel32,
            "CreateFileW",
            [c_wchar_p, dword, dword, c_void_p, dword, dword, handle],
            handle,
        )
        self.reopen_file = require(kernel32, "ReOpenFile", [handle, dword, dword, dword], handle)
        self.get_file_type = require(kernel32, "GetFileType", [handle], dword)
        self.lock_file_ex = require(
            kernel32,
            "LockFileEx",
            [handle, dword, dword, dword, dword, ctypes.POINTER(Overlapped)],
            boolean,
        )
        self.unlock_file_ex = require(
            kernel32,
            "UnlockFileEx",
            [handle, dword, dword, dword, ctypes.POINTER(Overlapped)],
            boolean,
        )
        self.open_process_token = require(
            advapi32, "OpenProcessToken", [handle, dword, ctypes.POINTER(handle)], boolean
        )
        self.get_token_information = require(
            advapi32,
            "GetTokenInformation",
            [handle, dword, c_void_p, dword, ctypes.POINTER(dword)],
            boolean,
        )
        self.get_length_sid = require(advapi32, "GetLengthSid", [c_void_p], dword)
        self.wait_for_single_object = require(
            kernel32, "WaitForSingleObject", [handle, dword], dword
        )


class SectionSharing:
    """``SharedMemory`` for Windows: sections, placeholders, ``LockFileEx`` byte locks."""

    name = "section"
    gives_back = False
    """A section cannot give back part of itself: evicted pages stay until it goes."""

    def __init__(self, memory: WindowsMemory, api: _Api | None = None) -> None:
        """``api``: the calls to make; tests on other systems pass a model of Windows' rules."""
        self.memory = memory
        self._api = _Api() if api is None else api
        self._process = int(self._api.get_current_process())
        self._lock = threading.Lock()
        self._reservations: dict[int, Pieces] = {}
        self._created: dict[int, int] = {}  # handles this process made: their control size
        self._user: int | None = None

    # -- objects ------------------------------------------------------------------------

    def create(self, size: int, control: int) -> int:
        """Two new sections (the data, and its first ``control`` bytes apart, with this
        backend's trailer after them) and a lock file."""
        if control <= 0 or control % self.memory.page_size:
            raise ValueError(f"create: the control area ({control} bytes) is not whole pages")
        made: list[int] = []
        with interrupts_deferred():  # a handle made is a handle recorded
            try:
                made.append(self._section(size))
                made.append(self._section(control + self.memory.page_size))
                made.append(self._lock_file())
                self._write_trailer(
                    made[1], control, TRAILER.pack(TRAILER_MAGIC, os.getpid(), made[2], 0)
                )
                handle = pack(*made)
            except BaseException:
                with contextlib.suppress(PlatformError):
                    self._close_all(made)
                raise
            self._created[handle] = control
        return handle

    def reopen(self, pid: int, handle: int) -> int:
        """Our own read-only copies of another process's three handles.

        All three are duplicated first; then the sections are checked to be sections (by
        mapping them) and the trailer to name this process and this lock file, not closed.
        Only then is the lock file looked at (a disk file?) and opened again as a file object
        of our own. An owner marks its trailer closed before it closes its handles, so a
        number reused meanwhile for something else cannot pass.
        """
        try:
            section, control, locks = unpack(handle)
        except ValueError as exc:
            raise NotShared(errno.EINVAL, str(exc)) from None
        with interrupts_deferred():  # the process handle too is closed on every way out
            return self._reopen(pid, section, control, locks)

    def _reopen(self, pid: int, section: int, control: int, locks: int) -> int:
        api = self._api
        process = api.open_process(PROCESS_DUP_HANDLE | SYNCHRONIZE, False, pid)
        if not process:
            code = last_error()
            if code == ERROR_INVALID_PARAMETER:
                raise ProcessLookupError(errno.ESRCH, f"no process {pid}")
            if code == ERROR_ACCESS_DENIED:
                raise PermissionError(
                    errno.EACCES,
                    "Windows refused to open the owner's process for handle duplication "
                    "(another user's process, or an elevated one)",
                )
            raise failure("OpenProcess", f"PROCESS_DUP_HANDLE|SYNCHRONIZE, FALSE, {pid}", code)
        made: list[int] = []
        try:
            made.append(self._duplicate(process, section, FILE_MAP_READ))
            made.append(self._duplicate(process, control, FILE_MAP_READ | FILE_MAP_COPY))
            raw = self._duplicate(process, locks, 0)
            try:
                self._check_trailer(made[0], made[1], pid, locks)
                made.append(self._reopen_lock_file(raw, locks))
            finally:
                api.close_handle(raw)
            return pack(*made)
        except BaseException:
            with contextlib.suppress(PlatformError):
                self._close_all(made)
            raise
        finally:
            api.close_handle(process)

    def size(self, handle: int) -> int:
        return self._view_size(_handles(handle, "size")[0])

    def read(self, handle: int, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``offset``: in the control area, or in the data past it."""
        section, control, _ = _handles(handle, "read")
        source, whole = control, self._view_size(control) - self.memory.page_size
        if offset >= whole:
            source, whole = section, self._view_size(section)
        return self._read(source, offset, max(0, min(size, whole - offset)))

    def user(self) -> int:
        """A digest of this process's user SID (computed once)."""
        if self._user is None:
            self._user = sid_digest(self._sid())
        return self._user

    def close(self, handle: int) -> None:
        """Close the three handles; an owner first marks its trailer closed (see ``reopen``)."""
        values = list(_handles(handle, "close"))
        control = self._created.pop(handle, None)
        if control is not None:
            closed = TRAILER.pack(TRAILER_MAGIC, os.getpid(), values[2], 1)
            try:
                self._write_trailer(values[1], control, closed)
            except PlatformError:  # unmarked, the numbers must stay ours: left open for good
                values = values[:1]
        self._close_all(values)

    # -- address space ------------------------------------------------------------------

    def reserve(self, size: int, alignment: int, private: Sequence[tuple[int, int]]) -> int:
        """One placeholder, aligned; the ``private`` spans become ordinary reservations (their
        bounds must be granules: ``VirtualAlloc2`` asks it). The rest stays placeholders,
        inaccessible until ``map`` maps a view over a span of it."""
        check_span("reserve", 0, size, self.memory.page_size)
        granule = self.memory.granularity
        for start, length in private:
            if start % granule or length % granule or not 0 <= start < start + length <= size:
                raise ValueError(f"reserve: private span ({start}, {length}) is not whole granules")
        with interrupts_deferred():
            base = self._placeholder(size, alignment)
            pieces = Pieces(base, size)
            try:
                for start, length in private:
                    address = base + start
                    self._cut(pieces, address, length)
                    kind = MEM_RESERVE | MEM_REPLACE_PLACEHOLDER
                    if not self._api.virtual_alloc2(
                        self._process, address, length, kind, PAGE_NOACCESS, None, 0
                    ):
                        arguments = span_arguments(address, length, "MEM_REPLACE_PLACEHOLDER")
                        raise failure("VirtualAlloc2", arguments)
                    pieces.mark(address, length, Kind.RESERVED)
            except BaseException:
                self._free_pieces(pieces)
                raise
            with self._lock:
                self._reservations[base] = pieces
        return base

    def release(self, address: int, size: int) -> None:
        with self._lock:
            pieces = self._reservations.get(address)
            if pieces is None or pieces.size != size:
                raise ValueError(f"release: no shared reservation of {size} bytes at {address:#x}")
            del self._reservations[address]
        self._free_pieces(pieces)

    def map(
        self, address: int | None, size: int, handle: int, offset: int, *, writable: bool
    ) -> int:
        section, control, _ = _handles(handle, "map")
        if address is None:
            return self._map_control(control, size, offset, writable=writable)
        with interrupts_deferred(), self._lock:
            pieces = self._pieces(address)
            if pieces.piece(address) == (address, size, Kind.VIEW):
                # committed already (a prefaulted region being loaded): as mapped afresh
                self._protect(address, size, PAGE_READWRITE if writable else PAGE_READONLY)
                return address
            self._cut(pieces, address, size)
            protection = PAGE_READWRITE if writable else PAGE_READONLY
            view = self._api.map_view_of_file3(
                section,
                self._process,
                address,
                offset,
                size,
                MEM_REPLACE_PLACEHOLDER,
                protection,
                None,
                0,
            )
            if not view:
                arguments = f"{section}, {address:#x}, {offset:#x}, {size}, MEM_REPLACE_PLACEHOLDER"
                raise failure("MapViewOfFile3", arguments)
            pieces.mark(address, size, Kind.VIEW)
        return address

    def vacate(self, address: int, size: int) -> None:
        """Views wholly inside the span go back to placeholders; a view it covers only part
        of stays, that part made inaccessible (Windows unmaps whole views only)."""
        with interrupts_deferred(), self._lock:
            pieces = self._pieces(address)
            for start, length, kind in pieces.overlapping(address, size):
                if kind is not Kind.VIEW:
                    continue
                if address <= start and start + length <= address + size:
                    if not self._api.unmap_view_of_file2(
                        self._process, start, MEM_PRESERVE_PLACEHOLDER
                    ):
                        arguments = f"GetCurrentProcess(), {start:#x}, MEM_PRESERVE_PLACEHOLDER"
                        raise failure("UnmapViewOfFile2", arguments)
                    pieces.mark(start, length, Kind.PLACEHOLDER)
                else:
                    low, high = max(start, address), min(start + length, address + size)
                    self.memory.protect(low, high - low, Protection.NONE)

    def unmap(self, address: int, size: int) -> None:
        with self._lock:
            if self._holding(address) is not None:
                raise ValueError(f"unmap: {address:#x} lies in a shared reservation (vacate it)")
        if not self._api.unmap_view_of_file(address):
            raise failure("UnmapViewOfFile", address_text(address))

    def blank(self, address: int, size: int) -> None:
        """Zero a reader's copy-on-write control view in place: each aligned word goes from
        its value to zero in one store, and the view holds no more than control pages."""
        self._protect(address, size, PAGE_WRITECOPY)
        ctypes.memset(address, 0, size)
        self._protect(address, size, PAGE_READONLY)

    def punch(self, handle: int, offset: int, size: int) -> None:
        """Nothing: a section cannot give back part of itself (``gives_back`` is False)."""

    # -- byte locks ---------------------------------------------------------------------

    def lock(self, handle: int, byte: int, *, exclusive: bool) -> bool:
        locks = _handles(handle, "lock")[2]
        flags = LOCKFILE_FAIL_IMMEDIATELY | (LOCKFILE_EXCLUSIVE_LOCK if exclusive else 0)
        if self._api.lock_file_ex(locks, flags, 0, 1, 0, byref(_at(byte))):
            return True
        code = last_error()
        if code != ERROR_LOCK_VIOLATION:
            raise failure("LockFileEx", f"{locks}, {flags:#x}, byte {byte}", code)
        return False

    def unlock(self, handle: int, byte: int) -> None:
        """Let go of every lock this open holds on ``byte`` (none is no error)."""
        locks = _handles(handle, "unlock")[2]
        for _ in range(UNLOCK_ROUNDS):
            if not self._api.unlock_file_ex(locks, 0, 1, 0, byref(_at(byte))):
                code = last_error()
                if code == ERROR_NOT_LOCKED:
                    return
                raise failure("UnlockFileEx", f"{locks}, byte {byte}", code)

    def locked(self, handle: int, byte: int) -> bool:
        """Whether another open holds ``byte``: Windows answers only by letting us take it."""
        if self.lock(handle, byte, exclusive=True):
            self.unlock(handle, byte)
            return False
        return True

    # -- helpers ------------------------------------------------------------------------

    def _section(self, size: int) -> int:
        protection = PAGE_READWRITE | SEC_COMMIT
        section = self._api.create_file_mapping(
            INVALID_HANDLE_VALUE, None, protection, size >> 32, size & 0xFFFFFFFF, None
        )
        if not section:
            arguments = f"INVALID_HANDLE_VALUE, NULL, PAGE_READWRITE|SEC_COMMIT, {size}, NULL"
            raise failure("CreateFileMappingW", arguments)
        return int(section)

    def _lock_file(self) -> int:
        path = os.path.join(tempfile.gettempdir(), f"mmkit-{os.getpid()}-{secrets.token_hex(8)}")
        flags = FILE_ATTRIBUTE_TEMPORARY | FILE_FLAG_DELETE_ON_CLOSE
        access = GENERIC_READ | GENERIC_WRITE | DELETE
        made = self._api.create_file(path, access, FILE_SHARE_ALL, None, CREATE_NEW, flags, None)
        if not made or made == INVALID_HANDLE_VALUE:
            raise failure("CreateFileW", f"{path!r}, CREATE_NEW, DELETE_ON_CLOSE")
        return int(made)

    def _duplicate(self, process: int, value: int, access: int) -> int:
        """Our copy of another process's handle (``access`` 0: the same access)."""
        copy = c_void_p()
        options = 0 if access else DUPLICATE_SAME_ACCESS
        if not self._api.duplicate_handle(
            process, value, self._process, byref(copy), access, False, options
        ):
            code = last_error()
            if self._api.wait_for_single_object(process, 0) == WAIT_OBJECT_0:
                raise ProcessLookupError(errno.ESRCH, "the process has exited")
            if code == ERROR_INVALID_HANDLE:
                raise FileNotFoundError(errno.ENOENT, f"no handle {value} in that process")
            raise failure("DuplicateHandle", f"owner, {value}, {access:#x}", code)
        return int(copy.value or 0)

    def _check_trailer(self, section: int, control: int, pid: int, locks: int) -> None:
        """Both are sections, and the control one carries a trailer naming ``pid`` and its
        lock file ``locks``, not closed; else ``NotShared``."""
        for value in (section, control):
            try:
                whole = self._view_size(value)
            except PlatformError:
                raise NotShared(errno.EINVAL, "the handle is not a section") from None
        page = self.memory.page_size
        if whole < 2 * page:
            raise NotShared(errno.EINVAL, "the section is not an mmkit control area")
        raw = self._read(control, whole - page, TRAILER.size)
        magic, owner, lock_file, closed = TRAILER.unpack(raw)
        if magic != TRAILER_MAGIC or owner != pid or lock_file != locks:
            raise NotShared(errno.EINVAL, "the section is not this owner's control area")
        if closed:
            raise FileNotFoundError(errno.ENOENT, "the owner has closed its shared memory")

    def _reopen_lock_file(self, raw: int, value: int) -> int:
        """A file object of our own for the owner's lock file (``raw``: our copy of its
        handle), which must be a disk file."""
        if self._api.get_file_type(raw) != FILE_TYPE_DISK:
            raise NotShared(errno.EINVAL, f"handle {value} is not mmkit's lock file")
        made = self._api.reopen_file(raw, GENERIC_READ, FILE_SHARE_ALL, 0)
        if not made or made == INVALID_HANDLE_VALUE:
            raise failure("ReOpenFile", f"{raw}, GENERIC_READ")
        return int(made)

    def _write_trailer(self, control: int, offset: int, record: bytes) -> None:
        view = self._api.map_view_of_file(control, FILE_MAP_WRITE, 0, 0, 0)
        if not view:
            raise failure("MapViewOfFile", f"{control}, FILE_MAP_WRITE, 0, 0, 0")
        try:
            ctypes.memmove(view + offset, record, len(record))
        finally:
            self._api.unmap_view_of_file(view)

    def _close_all(self, handles: list[int]) -> None:
        error: PlatformError | None = None
        for value in handles:
            if not self._api.close_handle(value) and error is None:
                error = failure("CloseHandle", str(value))
        if error is not None:
            raise error

    def _view_size(self, section: int) -> int:
        """A section's size: that of a whole read-only view of it, mapped for a moment."""
        view = self._api.map_view_of_file(section, FILE_MAP_READ, 0, 0, 0)
        if not view:
            raise failure("MapViewOfFile", f"{section}, FILE_MAP_READ, 0, 0, 0")
        try:
            return self._query(view).RegionSize or 0
        finally:
            self._api.unmap_view_of_file(view)

    def _read(self, section: int, offset: int, size: int) -> bytes:
        if size == 0:
            return b""
        start = offset - offset % self.memory.granularity
        length = offset - start + size
        view = self._api.map_view_of_file(
            section, FILE_MAP_READ, start >> 32, start & 0xFFFFFFFF, length
        )
        if not view:
            raise failure("MapViewOfFile", f"{section}, FILE_MAP_READ, {start:#x}, {length}")
        try:
            at = view + offset - start
            info = self._query(at)  # a section made with SEC_RESERVE has holes: never touch one
            reached = (info.BaseAddress or 0) + (info.RegionSize or 0)
            if info.State != MEM_COMMIT or info.Type != MEM_MAPPED or reached < at + size:
                raise NotShared(errno.EINVAL, "the section's pages are not all committed")
            return ctypes.string_at(at, size)
        finally:
            self._api.unmap_view_of_file(view)

    def _map_control(self, control: int, size: int, offset: int, *, writable: bool) -> int:
        """The control area, anywhere: read-write for the owner, copy-on-write (then read-only
        until ``blank``) for a reader."""
        if offset:
            raise ValueError("only the control area, at offset 0, is mapped anywhere")
        access = FILE_MAP_WRITE if writable else FILE_MAP_COPY
        view = self._api.map_view_of_file(control, access, 0, 0, size)
        if not view:
            raise failure("MapViewOfFile", f"{control}, {access:#x}, 0, 0, {size}")
        if not writable:
            try:
                self._protect(view, size, PAGE_READONLY)
            except BaseException:
                self._api.unmap_view_of_file(view)
                raise
        return int(view)

    def _placeholder(self, size: int, alignment: int) -> int:
        """A placeholder of ``size`` bytes at a multiple of ``alignment``: one larger than
        granules is found by reserving more, letting go, and taking the aligned part."""
        span = reservation_size(size, alignment, self.memory.granularity)
        error: PlatformError | None = None
        for _ in range(5 if span != size else 1):
            address = 0
            if span != size:
                probe = self.memory.reserve(span)
                self.memory.release(probe, span)
                address = aligned_placement(probe, span, size, alignment)
            kind = MEM_RESERVE | MEM_RESERVE_PLACEHOLDER
            base = self._api.virtual_alloc2(
                self._process, address or None, size, kind, PAGE_NOACCESS, None, 0
            )
            if base:
                return int(base)
            error = failure(
                "VirtualAlloc2", span_arguments(address, size, "MEM_RESERVE_PLACEHOLDER")
            )
            if error.os_code != ERROR_INVALID_ADDRESS:
                break
        assert error is not None
        raise error

    def _cut(self, pieces: Pieces, address: int, size: int) -> None:
        """Split placeholders until [address, address + size) is one of its own."""
        for start, length in pieces.splits(address, size):
            if not self._api.virtual_free(start, length, MEM_RELEASE | MEM_PRESERVE_PLACEHOLDER):
                arguments = span_arguments(start, length, "MEM_RELEASE|MEM_PRESERVE_PLACEHOLDER")
                raise failure("VirtualFree", arguments)
            pieces.split(start, length)

    def _free_pieces(self, pieces: Pieces) -> None:
        """Unmap every view and release every placeholder and reservation; the first error
        is raised once all were tried."""
        error: PlatformError | None = None
        for start, length, kind in list(pieces):
            if kind is Kind.VIEW:
                done = self._api.unmap_view_of_file(start)
                call = "UnmapViewOfFile"
            else:
                done = self._api.virtual_free(start, 0, MEM_RELEASE)
                call = "VirtualFree"
            if not done and error is None:
                error = failure(call, span_arguments(start, length))
        if error is not None:
            raise error

    def _pieces(self, address: int) -> Pieces:
        pieces = self._holding(address)
        if pieces is None:
            raise ValueError(f"{address:#x} lies in no shared reservation")
        return pieces

    def _holding(self, address: int) -> Pieces | None:
        for base, pieces in self._reservations.items():
            if base <= address < base + pieces.size:
                return pieces
        return None

    def _protect(self, address: int, size: int, protection: int) -> None:
        old = c_uint32()
        if not self._api.virtual_protect(address, size, protection, byref(old)):
            raise failure("VirtualProtect", span_arguments(address, size, f"{protection:#x}"))

    def _query(self, address: int) -> MemoryBasicInformation:
        info = MemoryBasicInformation()
        if not self._api.virtual_query(address, byref(info), sizeof(info)):
            raise failure("VirtualQuery", address_text(address))
        return info

    def _sid(self) -> bytes:
        """This process's user SID, as bytes."""
        api = self._api
        token = c_void_p()
        if not api.open_process_token(self._process, TOKEN_QUERY, byref(token)):
            raise failure("OpenProcessToken", "GetCurrentProcess(), TOKEN_QUERY")
        try:
            needed = c_uint32()
            api.get_token_information(token, TOKEN_USER, None, 0, byref(needed))
            buffer = ctypes.create_string_buffer(max(needed.value, sizeof(c_void_p)))
            if not api.get_token_information(token, TOKEN_USER, buffer, len(buffer), byref(needed)):
                raise failure("GetTokenInformation", "token, TokenUser")
            sid = c_void_p.from_buffer(buffer).value
            return ctypes.string_at(sid or 0, int(api.get_length_sid(sid)))
        finally:
            api.close_handle(token)


if TYPE_CHECKING:

    def _conforms(sharing: SectionSharing) -> SharedMemory:
        return sharing
