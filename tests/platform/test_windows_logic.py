"""The Windows backend's pure logic, checked on any OS against the platform reference sheet."""

from __future__ import annotations

import ctypes
import errno
import sys

import pytest

from mmkit.platform import windows
from mmkit.platform.base import Advice, PlatformError, Protection

KiB = 1 << 10
MiB = 1 << 20
GRANULARITY = 64 * KiB
PAGE = 4 * KiB

SHEET_CONSTANTS = {
    "MEM_COMMIT": 0x00001000,
    "MEM_RESERVE": 0x00002000,
    "MEM_DECOMMIT": 0x00004000,
    "MEM_RELEASE": 0x00008000,
    "MEM_FREE": 0x00010000,
    "PAGE_NOACCESS": 0x01,
    "PAGE_READONLY": 0x02,
    "PAGE_READWRITE": 0x04,
    "ERROR_SUCCESS": 0,
    "ERROR_ACCESS_DENIED": 5,
    "ERROR_NOT_ENOUGH_MEMORY": 8,
    "ERROR_OUTOFMEMORY": 14,
    "ERROR_INVALID_PARAMETER": 87,
    "ERROR_NOT_LOCKED": 158,
    "ERROR_INVALID_ADDRESS": 487,
    "ERROR_NOACCESS": 998,
    "ERROR_NO_SYSTEM_RESOURCES": 1450,
    "ERROR_WORKING_SET_QUOTA": 1453,
    "ERROR_PAGEFILE_QUOTA": 1454,
    "ERROR_COMMITMENT_LIMIT": 1455,
}


@pytest.mark.parametrize(("name", "value"), sorted(SHEET_CONSTANTS.items()))
def test_constant_matches_sheet(name: str, value: int) -> None:
    assert getattr(windows, name) == value


@pytest.mark.parametrize(
    ("protection", "expected"),
    [
        (Protection.NONE, 0x01),
        (Protection.READ, 0x02),
        (Protection.READ_WRITE, 0x04),
    ],
)
def test_page_protection(protection: Protection, expected: int) -> None:
    assert windows.page_protection(protection) == expected


def test_every_protection_is_mapped() -> None:
    assert {windows.page_protection(p) for p in Protection} == {0x01, 0x02, 0x04}


@pytest.mark.parametrize(
    ("advice", "action"),
    [
        (Advice.WILLNEED, windows.AdviceAction.PREFETCH),
        (Advice.DONTNEED, windows.AdviceAction.DISCARD),
        (Advice.NORMAL, windows.AdviceAction.IGNORE),
        (Advice.SEQUENTIAL, windows.AdviceAction.IGNORE),
        (Advice.RANDOM, windows.AdviceAction.IGNORE),
        (Advice.HUGEPAGE, windows.AdviceAction.IGNORE),
    ],
)
def test_advice_action(advice: Advice, action: windows.AdviceAction) -> None:
    assert windows.advice_action(advice) is action


def test_every_advice_is_mapped() -> None:
    assert len({windows.advice_action(a) for a in Advice}) == 3


@pytest.mark.parametrize("alignment", [0, 1, PAGE, 32 * KiB, GRANULARITY])
def test_alignment_up_to_granularity_reserves_exact_size(alignment: int) -> None:
    assert windows.reservation_size(3 * PAGE, alignment, GRANULARITY) == 3 * PAGE


@pytest.mark.parametrize(
    ("size", "alignment", "expected"),
    [
        (PAGE, 128 * KiB, PAGE + 64 * KiB),
        (2 * MiB, 2 * MiB, 4 * MiB - GRANULARITY),
        (10 * MiB, 1 << 30, 10 * MiB + (1 << 30) - GRANULARITY),
    ],
)
def test_large_alignment_reserves_slack(size: int, alignment: int, expected: int) -> None:
    assert windows.reservation_size(size, alignment, GRANULARITY) == expected


@pytest.mark.parametrize("alignment", [-PAGE, 3, 3 * GRANULARITY, 100 * KiB])
def test_alignment_must_be_power_of_two(alignment: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        windows.reservation_size(PAGE, alignment, GRANULARITY)


def test_placement_keeps_an_already_aligned_base() -> None:
    base = 0x7FF6_A000_0000
    reserved = windows.reservation_size(PAGE, 2 * MiB, GRANULARITY)
    assert windows.aligned_placement(base, reserved, PAGE, 2 * MiB) == base


def test_placement_rounds_up_to_the_next_boundary() -> None:
    alignment = 2 * MiB
    base = 0x7FF6_A000_0000 + GRANULARITY
    reserved = windows.reservation_size(PAGE, alignment, GRANULARITY)
    assert windows.aligned_placement(base, reserved, PAGE, alignment) == 0x7FF6_A020_0000


@pytest.mark.parametrize("alignment", [128 * KiB, 2 * MiB, 16 * MiB])
@pytest.mark.parametrize("size", [PAGE, GRANULARITY, 3 * MiB + PAGE])
def test_placement_fits_for_every_granular_base(size: int, alignment: int) -> None:
    reserved = windows.reservation_size(size, alignment, GRANULARITY)
    origin = 0x0000_0200_0000_0000
    for base in range(origin, origin + 2 * alignment, GRANULARITY):
        address = windows.aligned_placement(base, reserved, size, alignment)
        assert address % alignment == 0
        assert base <= address
        assert address + size <= base + reserved
        assert address - base < alignment


def test_worst_case_base_uses_all_the_slack() -> None:
    alignment = 2 * MiB
    base = 0x0000_0200_0000_0000 + GRANULARITY
    reserved = windows.reservation_size(PAGE, alignment, GRANULARITY)
    address = windows.aligned_placement(base, reserved, PAGE, alignment)
    assert address + PAGE == base + reserved


def test_placement_refuses_a_reservation_too_small() -> None:
    base = 0x0000_0200_0000_0000 + GRANULARITY
    with pytest.raises(ValueError, match="aligned span"):
        windows.aligned_placement(base, 2 * MiB - GRANULARITY, PAGE, 2 * MiB)


EXHAUSTING = [8, 14, 1450, 1453, 1454, 1455]


@pytest.mark.parametrize("winerror", EXHAUSTING)
def test_resource_errors_are_exhaustion(winerror: int) -> None:
    assert windows.errno_for(winerror) == (errno.ENOMEM, True)


@pytest.mark.parametrize(
    ("winerror", "expected"),
    [
        (487, errno.EINVAL),
        (87, errno.EINVAL),
        (5, errno.EACCES),
        (998, errno.EACCES),
        (158, errno.EINVAL),
        (50, errno.EINVAL),
        (1314, errno.EINVAL),
    ],
)
def test_misuse_errors_are_not_exhaustion(winerror: int, expected: int) -> None:
    assert windows.errno_for(winerror) == (expected, False)


def test_windows_error_names_call_and_arguments() -> None:
    arguments = windows.span_arguments(0x7FF6A0000000, 4096, "MEM_COMMIT", "PAGE_READWRITE")
    error = windows.windows_error("VirtualAlloc", arguments, 1455, "The paging file is too small")
    assert isinstance(error, PlatformError)
    assert isinstance(error, OSError)
    assert error.call == "VirtualAlloc"
    assert error.arguments == "0x7ff6a0000000, 4096, MEM_COMMIT, PAGE_READWRITE"
    assert error.errno == errno.ENOMEM
    assert error.exhausted is True
    assert error.os_code == 1455
    assert "VirtualAlloc(0x7ff6a0000000, 4096, MEM_COMMIT, PAGE_READWRITE)" in str(error)
    assert "The paging file is too small" in str(error)


def test_windows_error_without_message_shows_the_code() -> None:
    error = windows.windows_error("VirtualUnlock", "0x10000, 4096", 158)
    assert error.errno == errno.EINVAL
    assert error.exhausted is False
    assert error.os_code == 158
    assert "VirtualUnlock(0x10000, 4096)" in str(error)
    assert "158" in str(error)


def test_argument_formatting() -> None:
    assert windows.address_text(None) == "NULL"
    assert windows.address_text(0) == "NULL"
    assert windows.address_text(0x10000) == "0x10000"
    assert windows.span_arguments(None, 8192, "MEM_RESERVE") == "NULL, 8192, MEM_RESERVE"
    assert windows.mem_name(0x00008000) == "MEM_RELEASE"
    assert windows.mem_name(0x00004000) == "MEM_DECOMMIT"
    assert windows.mem_name(0x3000) == "0x3000"
    assert windows.page_name(0x01) == "PAGE_NOACCESS"
    assert windows.page_name(0x40) == "0x40"


def test_valid_bit_is_bit_zero_only() -> None:
    shared_invalid = 1 << 15
    locked_invalid = 1 << 22
    bad_invalid = 1 << 31
    valid_locked_large = 1 | (1 << 22) | (1 << 23)
    valid_high_bits = 1 | (1 << 63)
    attributes = [0, 1, shared_invalid, locked_invalid, bad_invalid, valid_locked_large]
    assert windows.valid_pages([*attributes, valid_high_bits, 0b1110]) == 3
    assert windows.valid_pages([]) == 0


def test_working_set_request_fills_one_address_per_page() -> None:
    start = 0x7FF6_A000_0000
    entries = windows.working_set_request(start, 5, PAGE)
    assert len(entries) == 8
    assert [entries[i].VirtualAddress for i in range(5)] == [start + i * PAGE for i in range(5)]
    assert [entries[i].VirtualAttributes for i in range(8)] == [0] * 8
    assert all(not entries[i].VirtualAddress for i in range(5, 8))


@pytest.mark.parametrize(("count", "length"), [(1, 1), (2, 2), (3, 4), (65536, 65536)])
def test_working_set_request_length_is_a_power_of_two(count: int, length: int) -> None:
    assert len(windows.working_set_request(0x10000, count, PAGE)) == length


def test_working_set_attributes_reads_what_the_os_wrote() -> None:
    entries = windows.working_set_request(0x10000, 3, PAGE)
    entries[0].VirtualAttributes = 1
    entries[2].VirtualAttributes = (1 << 63) | 0x8001
    entries[3].VirtualAttributes = 1
    assert windows.working_set_attributes(entries, 3) == [1, 0, (1 << 63) | 0x8001]
    assert windows.valid_pages(windows.working_set_attributes(entries, 3)) == 2


def test_touch_pages_preserves_content() -> None:
    size = 3 * PAGE
    buffer = (ctypes.c_ubyte * size)(*(i % 251 for i in range(size)))
    windows.touch_pages(ctypes.addressof(buffer), size, PAGE)
    assert bytes(buffer) == bytes(i % 251 for i in range(size))


def test_touch_pages_stays_inside_the_span() -> None:
    size = 2 * PAGE
    buffer = (ctypes.c_ubyte * (size + PAGE))(*([7] * (size + PAGE)))
    windows.touch_pages(ctypes.addressof(buffer), size, PAGE)
    assert bytes(buffer) == bytes([7]) * (size + PAGE)


@pytest.mark.parametrize(
    ("struct", "size"),
    [
        (windows.SystemInfo, 48),
        (windows.MemoryBasicInformation, 48),
        (windows.MemoryRangeEntry, 16),
        (windows.WorkingSetExInformation, 16),
    ],
)
def test_struct_size_matches_x64(struct: type[ctypes.Structure], size: int) -> None:
    assert ctypes.sizeof(struct) == size


@pytest.mark.parametrize(
    ("struct", "field", "offset"),
    [
        (windows.SystemInfo, "dwPageSize", 4),
        (windows.SystemInfo, "lpMinimumApplicationAddress", 8),
        (windows.SystemInfo, "dwActiveProcessorMask", 24),
        (windows.SystemInfo, "dwNumberOfProcessors", 32),
        (windows.SystemInfo, "dwAllocationGranularity", 40),
        (windows.SystemInfo, "wProcessorRevision", 46),
        (windows.MemoryBasicInformation, "AllocationBase", 8),
        (windows.MemoryBasicInformation, "AllocationProtect", 16),
        (windows.MemoryBasicInformation, "PartitionId", 20),
        (windows.MemoryBasicInformation, "RegionSize", 24),
        (windows.MemoryBasicInformation, "State", 32),
        (windows.MemoryBasicInformation, "Type", 40),
        (windows.MemoryRangeEntry, "NumberOfBytes", 8),
        (windows.WorkingSetExInformation, "VirtualAttributes", 8),
    ],
)
def test_struct_offset_matches_x64(struct: type[ctypes.Structure], field: str, offset: int) -> None:
    assert getattr(struct, field).offset == offset


@pytest.mark.skipif(sys.platform == "win32", reason="checks the off-Windows refusal")
def test_constructing_off_windows_raises_oserror() -> None:
    with pytest.raises(OSError, match="WindowsMemory needs Windows"):
        windows.WindowsMemory()


def test_a_32_bit_interpreter_is_refused() -> None:
    with pytest.raises(ImportError, match="64-bit Python"):
        windows.require_64_bit(4)
    windows.require_64_bit(8)
