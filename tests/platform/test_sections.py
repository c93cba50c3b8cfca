"""Windows' sharing backend (``mmkit.platform.sections``), on any OS: its pure logic, and its
calls made against a model of the rules Microsoft documents for them: placeholders (a view
replaces a placeholder of exactly its size; only placeholders split; granule bounds for
VirtualAlloc2), sections whose views are real memory, one handle table, and LockFileEx's
conflicts per file object. The calls themselves run on Windows, in the sharing suites."""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
from collections.abc import Iterator

import pytest

from mmkit import MemoryConfig
from mmkit.memory.arena import ArenaLayout
from mmkit.memory.region import plan_layout
from mmkit.memory.shared import shared_parts
from mmkit.platform import Protection, sections, windows
from mmkit.platform.sections import Kind, Pieces, SectionSharing, pack, sid_digest, unpack
from mmkit.values.share import ShareHandle
from tests.conftest import small_config

PAGE = 4096
GRANULE = 1 << 16
TOP = (1 << 32) - 1


@pytest.mark.parametrize("values", [(4, 8, 12), (TOP, TOP, TOP), (0x1A4, 0x3C, 0x7FFFFFFC)])
def test_three_handles_pack_into_one_number_and_back(values: tuple[int, int, int]) -> None:
    assert unpack(pack(*values)) == values
    token = str(ShareHandle(sid_digest(b"S-1-5-21"), 1234, pack(*values), "0" * 32))
    assert unpack(ShareHandle.parse(token).handle) == values


@pytest.mark.parametrize(
    "values", [(0, 8, 12), (4, 0, 12), (4, 8, 0), (1 << 32, 8, 12), (-4, 8, 12)]
)
def test_a_handle_that_does_not_fit_is_refused(values: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError, match="do not fit"):
        pack(*values)


@pytest.mark.parametrize("number", [0, -1, 3, 1 << 32, (1 << 64) + 5, 1 << 96, 7 << 96])
def test_a_number_no_three_handles_make_is_refused(number: int) -> None:
    with pytest.raises(ValueError, match="not a Windows share handle"):
        unpack(number)


@pytest.mark.parametrize("call", ["size", "read", "map", "lock", "unlock", "locked", "close"])
def test_a_closed_handle_is_a_bad_descriptor_as_on_posix(model: Model, call: str) -> None:
    sharing = backend(model)
    arguments = {
        "size": (-1,),
        "read": (-1, 0, 8),
        "map": (None, PAGE, -1, 0),
        "lock": (-1, 0),
        "unlock": (-1, 0),
        "locked": (-1, 0),
        "close": (-1,),
    }[call]
    keywords = {"map": {"writable": False}, "lock": {"exclusive": False}}.get(call, {})
    with pytest.raises(windows.PlatformError) as caught:
        getattr(sharing, call)(*arguments, **keywords)
    assert caught.value.errno == errno.EBADF
    assert "not an open share handle" in str(caught.value)


def test_a_users_id_is_a_stable_32_bit_digest_of_the_sid() -> None:
    sid = bytes([1, 5, 0, 0, 0, 0, 0, 5, 21, 0, 0, 0]) + bytes(range(12))
    assert sid_digest(sid) == sid_digest(bytes(sid))
    assert 0 <= sid_digest(sid) < 1 << 32
    assert sid_digest(sid) != sid_digest(sid[:-1] + b"\xff")


def test_a_span_in_the_middle_of_a_placeholder_takes_two_head_splits() -> None:
    pieces = Pieces(0x10000, 10 * PAGE)
    plan = pieces.splits(0x10000 + 2 * PAGE, 3 * PAGE)
    assert plan == [(0x10000, 2 * PAGE), (0x10000 + 2 * PAGE, 3 * PAGE)]
    for start, length in plan:
        pieces.split(start, length)
    assert list(pieces) == [
        (0x10000, 2 * PAGE, Kind.PLACEHOLDER),
        (0x10000 + 2 * PAGE, 3 * PAGE, Kind.PLACEHOLDER),
        (0x10000 + 5 * PAGE, 5 * PAGE, Kind.PLACEHOLDER),
    ]
    assert pieces.splits(0x10000 + 2 * PAGE, 3 * PAGE) == []  # already its own


def test_a_span_at_either_end_takes_one_split_or_none() -> None:
    pieces = Pieces(0, 10 * PAGE)
    assert pieces.splits(0, 4 * PAGE) == [(0, 4 * PAGE)]
    assert pieces.splits(6 * PAGE, 4 * PAGE) == [(0, 6 * PAGE)]
    assert pieces.splits(0, 10 * PAGE) == []


def test_a_span_across_pieces_or_in_a_view_is_refused() -> None:
    pieces = Pieces(0, 10 * PAGE)
    pieces.split(0, 4 * PAGE)
    with pytest.raises(ValueError, match="do not lie in one placeholder"):
        pieces.splits(2 * PAGE, 4 * PAGE)
    pieces.mark(0, 4 * PAGE, Kind.VIEW)
    with pytest.raises(ValueError, match="is a view"):
        pieces.splits(0, 4 * PAGE)
    with pytest.raises(ValueError, match="outside the reservation"):
        pieces.piece(10 * PAGE)
    assert pieces.overlapping(3 * PAGE, 2 * PAGE) == [
        (0, 4 * PAGE, Kind.VIEW),
        (4 * PAGE, 6 * PAGE, Kind.PLACEHOLDER),
    ]


def test_the_lock_offset_fills_overlapped_as_windows_reads_it() -> None:
    assert ctypes.sizeof(sections.Overlapped) == 32
    assert sections.Overlapped.Offset.offset == 16
    at = sections._at((7 << 32) + 5)
    assert (at.Offset, at.OffsetHigh) == (5, 7)


def test_the_constants_are_windows_own() -> None:
    assert (sections.MEM_RESERVE_PLACEHOLDER, sections.MEM_REPLACE_PLACEHOLDER) == (
        0x00040000,
        0x00004000,
    )
    assert sections.MEM_PRESERVE_PLACEHOLDER == 0x2
    assert (sections.FILE_MAP_COPY, sections.FILE_MAP_WRITE, sections.FILE_MAP_READ) == (1, 2, 4)
    assert sections.SEC_COMMIT == 0x08000000
    assert sections.PAGE_WRITECOPY == 0x08
    assert sections.PROCESS_DUP_HANDLE == 0x40
    assert sections.FILE_FLAG_DELETE_ON_CLOSE == 0x04000000
    assert (sections.LOCKFILE_FAIL_IMMEDIATELY, sections.LOCKFILE_EXCLUSIVE_LOCK) == (1, 2)
    assert (sections.ERROR_LOCK_VIOLATION, windows.ERROR_NOT_LOCKED) == (33, 158)


# -- the address-space calls, against a model of Windows' placeholder rules -----------------


class Broken(AssertionError):
    """A call Windows would refuse: the backend broke a documented rule."""


class Model:
    """The address space as Windows keeps it for the calls ``SectionSharing`` makes: regions
    (start -> size, kind), with the rules of VirtualAlloc2, VirtualFree, MapViewOfFile3 and
    UnmapViewOfFile(2). It never refuses for lack of resources; it raises ``Broken`` where
    Windows would refuse the call itself."""

    def __init__(self) -> None:
        self.regions: dict[int, tuple[int, str]] = {}
        self.protection: dict[int, str] = {}
        self._next = 0x7F0000000000
        self.fail: str | None = None

    # what SectionSharing's memory (WindowsMemory) is asked for
    page_size = PAGE
    granularity = GRANULE

    def reserve(self, size: int, alignment: int = 0) -> int:
        return self._fresh(size, "reserved")

    def release(self, address: int, size: int) -> None:
        self._expect(address, size, "reserved")
        del self.regions[address]

    def protect(self, address: int, size: int, protection: Protection) -> None:
        start, length, kind = self._holding(address)
        if kind != "view" or address + size > start + length:
            raise Broken(f"VirtualProtect over {size} bytes at {address:#x}: not in one view")
        self.protection[address] = protection.value

    # the kernel calls
    def get_current_process(self) -> int:
        return (1 << 64) - 1

    def virtual_alloc2(
        self, process: int, address: int | None, size: int, kind: int, *rest: object
    ) -> int:
        if self.fail == "VirtualAlloc2":
            return 0
        if kind == windows.MEM_RESERVE | sections.MEM_RESERVE_PLACEHOLDER:
            if address is None:
                return self._fresh(size, "placeholder")
            if any(s < address + size and address < s + n for s, (n, _) in self.regions.items()):
                raise Broken(f"VirtualAlloc2 at {address:#x}: not free")
            self.regions[address] = (size, "placeholder")
            return address
        if kind == windows.MEM_RESERVE | sections.MEM_REPLACE_PLACEHOLDER:
            assert address is not None
            if address % GRANULE:
                raise Broken(f"VirtualAlloc2 at {address:#x}: not a multiple of the granularity")
            self._expect(address, size, "placeholder")
            self.regions[address] = (size, "reserved")
            return address
        raise Broken(f"VirtualAlloc2 with {kind:#x}")

    def virtual_free(self, address: int, size: int, kind: int) -> int:
        if kind == windows.MEM_RELEASE | sections.MEM_PRESERVE_PLACEHOLDER:
            whole, what = self.regions.get(address, (0, "nothing"))
            if what != "placeholder" or not 0 < size < whole:
                raise Broken(f"split of {size} at {address:#x}: a {what} of {whole} bytes")
            self.regions[address] = (size, what)
            self.regions[address + size] = (whole - size, what)
            return 1
        if kind == windows.MEM_RELEASE and size == 0:
            if self.regions.get(address, (0, "view"))[1] == "view":
                raise Broken(
                    f"VirtualFree(MEM_RELEASE) at {address:#x}: no allocation starts there"
                )
            del self.regions[address]
            return 1
        raise Broken(f"VirtualFree({address:#x}, {size}, {kind:#x})")

    def map_view_of_file3(self, *arguments: int) -> int:
        _section, _process, address, offset, size, kind, _protection = arguments[:7]
        if self.fail == "MapViewOfFile3":
            return 0
        if kind != sections.MEM_REPLACE_PLACEHOLDER or offset % PAGE:
            raise Broken(f"MapViewOfFile3 with {kind:#x} at offset {offset:#x}")
        self._expect(address, size, "placeholder")
        self.regions[address] = (size, "view")
        return address

    def unmap_view_of_file2(self, process: int, address: int, flags: int) -> int:
        self._expect(address, None, "view")
        if flags != sections.MEM_PRESERVE_PLACEHOLDER:
            raise Broken(f"UnmapViewOfFile2 with {flags:#x}")
        self.regions[address] = (self.regions[address][0], "placeholder")
        return 1

    def unmap_view_of_file(self, address: int) -> int:
        self._expect(address, None, "view")
        del self.regions[address]
        return 1

    # helpers
    def _fresh(self, size: int, kind: str) -> int:
        address = self._next
        self._next += (size + GRANULE - 1) // GRANULE * GRANULE + GRANULE
        self.regions[address] = (size, kind)
        return address

    def _expect(self, address: int, size: int | None, kind: str) -> None:
        length, what = self.regions.get(address, (0, "nothing"))
        if what != kind or (size is not None and size != length):
            raise Broken(f"{kind} of {size} bytes expected at {address:#x}: a {what} of {length}")

    def _holding(self, address: int) -> tuple[int, int, str]:
        for start, (length, kind) in self.regions.items():
            if start <= address < start + length:
                return start, length, kind
        raise Broken(f"{address:#x} is in no region")

    def in_range(self, base: int, size: int) -> list[tuple[int, int, str]]:
        return sorted((s, n, k) for s, (n, k) in self.regions.items() if base <= s < base + size)


class Machine(Model):
    """The model, with the kernel objects too: sections backed by real memory (so views
    read and write), files, one handle table for this process (a reader in the owner's
    process, which mmkit allows) and LockFileEx's rules: an exclusive lock conflicts with any
    lock, a shared one with an exclusive one, each file object holding its own."""

    ERROR_INVALID_HANDLE = 6

    def __init__(self) -> None:
        super().__init__()
        self.error = windows.ERROR_NOT_ENOUGH_MEMORY
        self.objects: dict[int, object] = {}
        self._handles = itertools.count(0x100, 4)
        # real memory: two views of one offset share an address, so each is counted
        self.views: dict[int, list[int]] = {}
        self.locks: dict[tuple[int, int], list[tuple[object, bool]]] = {}
        self.asked_type: list[int] = []

    def _new(self, thing: object) -> int:
        handle = next(self._handles)
        self.objects[handle] = thing
        return handle

    def _refuse(self, code: int) -> int:
        self.error = code
        return 0

    def create_file_mapping(self, file: int, security: None, protection: int, *rest: object) -> int:
        high, low, name = rest
        assert file == sections.INVALID_HANDLE_VALUE and name is None
        assert protection == windows.PAGE_READWRITE | sections.SEC_COMMIT
        return self._new(ctypes.create_string_buffer((int(high) << 32) + int(low)))

    def map_view_of_file(self, handle: int, access: int, high: int, low: int, size: int) -> int:
        buffer = self.objects.get(handle)
        if not isinstance(buffer, ctypes.Array):
            return self._refuse(self.ERROR_INVALID_HANDLE)
        offset = (high << 32) + low
        assert offset % GRANULE == 0, "MapViewOfFile offsets are whole granules"
        length = size or len(buffer) - offset
        assert offset + length <= len(buffer)
        address = ctypes.addressof(buffer) + offset
        self.views.setdefault(address, []).append(length)
        return address

    def unmap_view_of_file(self, address: int) -> int:
        if self.views.get(address):
            self.views[address].pop()
            return 1
        return super().unmap_view_of_file(address)

    def virtual_query(self, address: int, info: object, size: int) -> int:
        record = info._obj  # type: ignore[attr-defined]  # byref()'s structure
        for start, lengths in self.views.items():
            length = max(lengths, default=0)
            if start <= address < start + length:
                record.BaseAddress, record.RegionSize = start, (length + PAGE - 1) // PAGE * PAGE
                record.State, record.Type = windows.MEM_COMMIT, sections.MEM_MAPPED
                return size
        raise Broken(f"VirtualQuery at {address:#x}: no view there")

    def virtual_protect(self, address: int, size: int, protection: int, old: object) -> int:
        views = [(start, max(lengths, default=0)) for start, lengths in self.views.items()]
        if not any(s <= address < address + size <= s + n for s, n in views):
            self.protect(address, size, Protection.NONE)  # placeholder views: one view only
        return 1

    def create_file(self, path: str, access: int, share: int, *rest: object) -> int:
        _security, disposition, flags, _template = rest
        assert disposition == sections.CREATE_NEW and flags & sections.FILE_FLAG_DELETE_ON_CLOSE
        return self._new(("file", path, object()))

    def get_file_type(self, handle: int) -> int:
        self.asked_type.append(handle)
        thing = self.objects[handle]
        return 1 if isinstance(thing, tuple) and thing[0] == "file" else 3

    def reopen_file(self, handle: int, access: int, share: int, flags: int) -> int:
        kind, path, _ = self.objects[handle]  # type: ignore[misc]
        assert share == sections.FILE_SHARE_ALL, "the delete-on-close file needs FILE_SHARE_DELETE"
        return self._new((kind, path, object()))

    def open_process(self, access: int, inherit: bool, pid: int) -> int:
        if pid != os.getpid():
            return self._refuse(windows.ERROR_INVALID_PARAMETER)
        return self._new(("process", pid))

    def duplicate_handle(self, process: int, value: int, *rest: object) -> int:
        _target, out, _access, _inherit, _options = rest
        if value not in self.objects:
            return self._refuse(self.ERROR_INVALID_HANDLE)
        out._obj.value = self._new(self.objects[value])  # type: ignore[attr-defined]
        return 1

    def wait_for_single_object(self, handle: int, milliseconds: int) -> int:
        return 0x102  # WAIT_TIMEOUT: the process lives

    def close_handle(self, handle: int) -> int:
        thing = self.objects.pop(handle, None)
        if thing is None:
            return self._refuse(self.ERROR_INVALID_HANDLE)
        if isinstance(thing, tuple) and thing[0] == "file" and thing not in self.objects.values():
            for held in self.locks.values():  # the file object's last handle: its locks go
                held[:] = [lock for lock in held if lock[0] is not thing[2]]
        return 1

    def lock_file_ex(self, handle: int, flags: int, *rest: object) -> int:
        _reserved, _low, _high, overlapped = rest
        _, path, owner = self.objects[handle]  # type: ignore[misc]
        held = self.locks.setdefault((path, overlapped._obj.Offset), [])  # type: ignore[attr-defined]
        exclusive = bool(flags & sections.LOCKFILE_EXCLUSIVE_LOCK)
        assert flags & sections.LOCKFILE_FAIL_IMMEDIATELY
        if held and (exclusive or any(other for _, other in held)):
            return self._refuse(sections.ERROR_LOCK_VIOLATION)
        held.append((owner, exclusive))
        return 1

    def unlock_file_ex(self, handle: int, *rest: object) -> int:
        _reserved, _low, _high, overlapped = rest
        _, path, owner = self.objects[handle]  # type: ignore[misc]
        held = self.locks.get((path, overlapped._obj.Offset), [])  # type: ignore[attr-defined]
        for lock in held:
            if lock[0] is owner:
                held.remove(lock)
                return 1
        return self._refuse(windows.ERROR_NOT_LOCKED)


@pytest.fixture
def model(monkeypatch: pytest.MonkeyPatch) -> Iterator[Machine]:
    machine = Machine()
    monkeypatch.setattr(windows, "last_error", lambda: machine.error)
    monkeypatch.setattr(sections, "last_error", lambda: machine.error)
    yield machine


def backend(model: Model) -> SectionSharing:
    return SectionSharing(model, model)  # type: ignore[arg-type]


def layout_of(
    config: MemoryConfig, alignment: int
) -> tuple[int, list[tuple[int, int]], list[tuple[int, int, int]]]:
    """The reservation's size, the owner's private span (the pool) and the shared parts."""
    layout = plan_layout(config, PAGE, alignment)
    pool = [(layout.pool_offset, layout.size - layout.pool_offset)] if layout.pool_size else []
    return layout.size, pool, shared_parts(layout, ArenaLayout.plan(config, PAGE))


CONFIGS = {
    "four spare layers": small_config(shared=True, spare_layers=4),
    "one spare layer": small_config(shared=True, spare_layers=1),
}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("alignment", [GRANULE, 1 << 21], ids=["granule", "2MiB"])
def test_the_owners_life_keeps_to_the_placeholder_rules(
    model: Model, name: str, alignment: int
) -> None:
    sharing = backend(model)
    size, pool, parts = layout_of(CONFIGS[name], alignment)
    base = sharing.reserve(size, alignment, pool)
    assert base % alignment == 0
    reserved = [(s - base, n) for s, n, kind in model.in_range(base, size) if kind == "reserved"]
    assert reserved == pool  # the pool commits as ordinary memory; the rest are placeholders
    handle = pack(4, 8, 12)
    *regions, (spares, spares_size, spares_offset) = parts
    layer = CONFIGS[name].layer_size
    for _ in range(2):  # load, evict, load again: the same regions, whole
        for start, length, offset in regions:
            sharing.map(base + start, length, handle, offset, writable=True)
        for start, length, _ in regions:
            sharing.vacate(base + start, length)
    for start, length, offset in regions:
        sharing.map(base + start, length, handle, offset, writable=True)
    layers = range(0, spares_size, layer)
    for at in [*layers, *reversed(layers)]:  # updates take and give back spare layers
        address = base + spares + at
        if model.regions.get(address, (0, ""))[1] == "view":
            sharing.vacate(address, layer)
        else:
            sharing.map(address, layer, handle, spares_offset + at, writable=True)
    assert all(kind == "placeholder" for _, _, kind in model.in_range(base + spares, spares_size))
    start, length, _ = parts[0]
    sharing.vacate(base + start + PAGE, length - PAGE)  # closing keeps a viewed page
    assert model.protection[base + start + PAGE] == "none"
    sharing.release(base, size)
    assert model.in_range(base, size) == []


def test_a_reader_maps_each_part_once_and_lets_go_of_everything(model: Model) -> None:
    sharing = backend(model)
    size, _, parts = layout_of(CONFIGS["four spare layers"], 1 << 21)
    base = sharing.reserve(size, 1 << 21, [])
    for start, length, offset in parts:
        sharing.map(base + start, length, pack(4, 8, 12), offset, writable=False)
    views = [(s - base, n) for s, n, kind in model.in_range(base, size) if kind == "view"]
    assert views == [(start, length) for start, length, _ in parts]
    sharing.release(base, size)
    assert model.in_range(base, size) == []


def test_a_failed_map_leaves_the_span_mappable_and_the_release_whole(model: Model) -> None:
    sharing = backend(model)
    size, pool, parts = layout_of(CONFIGS["four spare layers"], GRANULE)
    base = sharing.reserve(size, GRANULE, pool)
    start, length, offset = parts[0]
    model.fail = "MapViewOfFile3"
    with pytest.raises(windows.PlatformError, match="MapViewOfFile3") as caught:
        sharing.map(base + start, length, pack(4, 8, 12), offset, writable=True)
    assert caught.value.exhausted
    model.fail = None
    sharing.map(base + start, length, pack(4, 8, 12), offset, writable=True)
    sharing.release(base, size)
    assert model.in_range(base, size) == []


def test_a_failed_reservation_leaves_nothing(model: Model) -> None:
    sharing = backend(model)
    size, pool, _ = layout_of(CONFIGS["four spare layers"], GRANULE)
    calls = 0
    real = model.virtual_alloc2

    def second_fails(*arguments: object) -> int:
        nonlocal calls
        calls += 1
        return 0 if calls == 2 else real(*arguments)  # type: ignore[arg-type]

    model.virtual_alloc2 = second_fails  # type: ignore[method-assign]
    with pytest.raises(windows.PlatformError, match="VirtualAlloc2"):
        sharing.reserve(size, GRANULE, pool)
    assert model.regions == {}


def test_spans_mapped_otherwise_than_laid_out_are_refused(model: Model) -> None:
    sharing = backend(model)
    size, pool, parts = layout_of(CONFIGS["four spare layers"], GRANULE)
    base = sharing.reserve(size, GRANULE, pool)
    start, length, offset = parts[0]
    sharing.map(base + start, length, pack(4, 8, 12), offset, writable=True)
    with pytest.raises(ValueError, match="do not lie in one placeholder"):  # inside a view
        sharing.map(base + start + PAGE, PAGE, pack(4, 8, 12), offset + PAGE, writable=True)
    with pytest.raises(ValueError, match="do not lie in one placeholder"):  # across pieces
        sharing.map(base + start - PAGE, 2 * PAGE, pack(4, 8, 12), offset, writable=True)
    with pytest.raises(ValueError, match="lies in no shared reservation"):
        sharing.map(base + size, PAGE, pack(4, 8, 12), 0, writable=True)
    with pytest.raises(ValueError, match="no shared reservation of"):
        sharing.release(base, size + PAGE)
    with pytest.raises(ValueError, match="vacate it"):
        sharing.unmap(base, PAGE)
    with pytest.raises(ValueError, match="not whole granules"):
        sharing.reserve(size, GRANULE, [(PAGE, GRANULE)])
    sharing.release(base, size)


def test_committing_a_mapped_span_again_is_no_error(model: Model) -> None:
    """A prefaulted shared manager commits each region at reservation and again at load."""
    sharing = backend(model)
    size, pool, parts = layout_of(CONFIGS["four spare layers"], GRANULE)
    base = sharing.reserve(size, GRANULE, pool)
    start, length, offset = parts[0]
    for _ in range(2):
        sharing.map(base + start, length, pack(4, 8, 12), offset, writable=True)
    sharing.vacate(base + start, length)
    sharing.release(base, size)
    assert model.in_range(base, size) == []


# -- sections, handles and byte locks, against the machine ----------------------------------

CONTROL = 2 * PAGE
ARENA = 4 * GRANULE


def test_a_reader_reads_what_the_owner_wrote_through_handles_of_its_own(model: Machine) -> None:
    sharing = backend(model)
    owner = sharing.create(ARENA, CONTROL)
    control = sharing.map(None, CONTROL, owner, 0, writable=True)
    ctypes.memmove(control, b"header!", 7)
    reader = sharing.reopen(os.getpid(), owner)
    assert set(unpack(reader)).isdisjoint(unpack(owner))  # copies, not the owner's numbers
    assert sharing.size(reader) == ARENA
    assert sharing.read(reader, 0, 7) == b"header!"
    assert sharing.read(reader, CONTROL - 2, 8) == b"\0\0"  # the control area ends there
    assert sharing.read(reader, CONTROL, 8) == b"\0" * 8  # then the data, never the record
    sharing.unmap(control, CONTROL)
    for handle in (reader, owner):
        sharing.close(handle)
    assert model.objects == {}  # every handle made was closed


def test_pins_are_per_open_and_a_probe_leaves_no_lock(model: Machine) -> None:
    sharing = backend(model)
    owner = sharing.create(ARENA, CONTROL)
    assert sharing.lock(owner, 1, exclusive=True)
    reader = sharing.reopen(os.getpid(), owner)
    other = sharing.reopen(os.getpid(), owner)
    assert sharing.locked(reader, 1)  # the owner's byte, seen from a reader in its process
    assert not sharing.locked(owner, 7)
    assert sharing.lock(reader, 7, exclusive=False)
    assert sharing.lock(reader, 7, exclusive=False)  # Windows stacks it
    assert sharing.lock(other, 7, exclusive=False)
    assert sharing.locked(owner, 7)
    sharing.unlock(reader, 7)  # all of this open's locks on the byte
    assert sharing.locked(owner, 7)  # the other reader's pin stays
    sharing.close(other)  # and goes with its open
    assert not sharing.locked(owner, 7)
    assert not sharing.lock(reader, 1, exclusive=False)
    sharing.unlock(reader, 9)  # nothing held: no error
    for handle in (reader, owner):
        sharing.close(handle)
    assert all(not held for held in model.locks.values())


def test_a_closed_owners_record_stops_a_reopen_before_the_lock_file(model: Machine) -> None:
    sharing = backend(model)
    owner = sharing.create(ARENA, CONTROL)
    _section, control, locks = unpack(owner)
    record = sections.TRAILER.pack(sections.TRAILER_MAGIC, os.getpid(), locks, 1)
    sharing._write_trailer(control, CONTROL, record)  # as close() marks it, before closing
    with pytest.raises(FileNotFoundError, match="closed"):
        sharing.reopen(os.getpid(), owner)
    assert model.asked_type == []
    sharing.close(owner)
    with pytest.raises(FileNotFoundError, match="no handle"):  # and once closed, gone
        sharing.reopen(os.getpid(), owner)


def test_numbers_that_name_other_things_are_refused_untouched(model: Machine) -> None:
    sharing = backend(model)
    owner = sharing.create(ARENA, CONTROL)
    section, control, locks = unpack(owner)
    pipe = model._new(("pipe", "\\\\.\\pipe\\x", object()))
    other = sharing.create(ARENA, CONTROL)
    forged = [
        pack(section, control, pipe),  # a pipe where the lock file was: never queried
        pack(section, locks, locks),  # a file where a section was
        pack(section, unpack(other)[1], locks),  # another arena's control area
    ]
    for number in forged:
        with pytest.raises(sections.NotShared):
            sharing.reopen(os.getpid(), number)
    assert pipe not in model.asked_type
    with pytest.raises(ProcessLookupError):
        sharing.reopen(os.getpid() + 1, owner)
    with pytest.raises(sections.NotShared):
        sharing.reopen(os.getpid(), 12345)
    held = dict(model.objects)
    for handle in (owner, other):
        sharing.close(handle)
    assert set(model.objects) == set(held) - set(unpack(owner)) - set(unpack(other))


def test_a_control_area_of_part_pages_is_refused(model: Machine) -> None:
    with pytest.raises(ValueError, match="not whole pages"):
        backend(model).create(ARENA, CONTROL + 1)
    assert model.objects == {}


def test_an_owner_that_cannot_mark_its_record_closed_keeps_those_numbers(
    model: Machine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Freed numbers could be reused under a reader that trusts the unmarked record."""
    sharing = backend(model)
    owner = sharing.create(ARENA, CONTROL)
    section, control, locks = unpack(owner)

    def refused(*arguments: object) -> None:
        raise windows.PlatformError("MapViewOfFile", "", errno.ENOMEM, "refused", exhausted=True)

    monkeypatch.setattr(sharing, "_write_trailer", refused)
    sharing.close(owner)
    assert section not in model.objects
    assert control in model.objects and locks in model.objects
