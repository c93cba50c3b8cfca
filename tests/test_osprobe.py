"""The OS probes the suite measures memory with: pure logic checked on any OS, against each
OS's documented layouts and codes; live readings checked on the OS running the suite."""

from __future__ import annotations

import ctypes
import subprocess
import sys
from typing import Any

import pytest

from mmkit import MiB
from mmkit.platform import BACKEND, PAGE_SIZE, Protection
from tests import osprobe
from tests.conftest import ROOT, run_python
from tests.osprobe import darwin, exits, windows
from tests.osprobe.spans import Region, access_at, covered, parse_maps_line, status_kib

POINTERS_64 = pytest.mark.skipif(
    ctypes.sizeof(ctypes.c_void_p) != 8, reason="the layouts checked are those of 64-bit builds"
)

# -- spans -----------------------------------------------------------------------------------


def test_covered_counts_only_the_overlap() -> None:
    regions = [Region(0x1000, 0x3000, "none"), Region(0x3000, 0x4000, "read-write")]
    assert covered(regions, 0x2000, 0x4000, accessible=False) == 0x2000
    assert covered(regions, 0x2000, 0x4000, accessible=True) == 0x1000
    assert covered(regions, 0x5000, 0x1000, accessible=False) == 0
    assert covered([], 0, 1 << 40, accessible=False) == 0


def test_access_at_names_the_region_holding_the_address() -> None:
    regions = [Region(0x1000, 0x2000, "read"), Region(0x2000, 0x3000, "none")]
    assert access_at(regions, 0x1FFF) == "read"
    assert access_at(regions, 0x2000) == "none"
    assert access_at(regions, 0x3000) == "unmapped"


@pytest.mark.parametrize(
    ("line", "access"),
    [
        ("7f0000000000-7f0000004000 ---p 00000000 00:00 0 ", "none"),
        ("7f0000000000-7f0000004000 rw-p 00000000 00:00 0   [heap]", "read-write"),
        ("7f0000000000-7f0000004000 r--p 00000000 08:01 42  /usr/lib/x.so", "read"),
        ("7f0000000000-7f0000004000 r-xp 00001000 08:01 42  /usr/lib/x.so", "other"),
    ],
)
def test_a_maps_line_is_a_region(line: str, access: str) -> None:
    assert parse_maps_line(line) == Region(0x7F00_0000_0000, 0x7F00_0000_4000, access)


def test_status_values_are_kib() -> None:
    text = "Name:\tpython\nVmSize:\t  123456 kB\nVmRSS:\t    2048 kB\n"
    assert status_kib(text, "VmSize") == 123456
    assert status_kib(text, "VmRSS") == 2048
    with pytest.raises(LookupError):
        status_kib(text, "VmLck")


# -- exits -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("platform", "returncode", "crash"),
    [
        ("linux", -11, True),  # SIGSEGV
        ("linux", -7, True),  # SIGBUS on Linux
        ("linux", -10, False),  # SIGUSR1 on Linux
        ("linux", -9, False),  # SIGKILL: killed, not crashed
        ("linux", 1, False),
        ("linux", 0, False),
        ("darwin", -11, True),
        ("darwin", -10, True),  # SIGBUS on macOS
        ("darwin", -7, False),  # SIGEMT on macOS
        ("win32", 0xC0000005, True),  # STATUS_ACCESS_VIOLATION, as subprocess reports it
        ("win32", -1073741819, True),  # the same, as a signed int
        ("win32", 0xC0000409, True),  # STATUS_STACK_BUFFER_OVERRUN (fail fast)
        ("win32", 0xC000013A, False),  # STATUS_CONTROL_C_EXIT
        ("win32", 1, False),  # TerminateProcess from Popen.kill
        ("win32", -11, False),
    ],
)
def test_crashed_reads_each_os_code(platform: str, returncode: int, crash: bool) -> None:
    assert exits.crashed(returncode, platform) is crash


def test_describe_names_the_kind_of_exit() -> None:
    assert exits.describe(-11, "linux") == "signal 11"
    assert exits.describe(3, "linux") == "exit 3"
    assert exits.describe(3221225477, "win32") == "NTSTATUS 0xc0000005"
    assert exits.describe(-1073741819, "win32") == "NTSTATUS 0xc0000005"


def test_a_killed_child_is_not_a_crash() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], cwd=ROOT)
    child.kill()
    assert not osprobe.crashed(child.wait(timeout=30))


def test_a_child_touching_reserved_memory_crashed() -> None:
    result = run_python(
        """
        import ctypes
        from mmkit.platform import BACKEND
        address = BACKEND.reserve(BACKEND.page_size)
        (ctypes.c_ubyte * 1).from_address(address)[0]
        """
    )
    assert osprobe.crashed(result.returncode), osprobe.describe(result.returncode)
    assert not osprobe.crashed(run_python("raise SystemExit(1)").returncode)


# -- Windows layouts and walk, checked off Windows too ----------------------------------------


@POINTERS_64
def test_windows_structures_have_the_x64_layouts() -> None:
    info = windows.MemoryBasicInformation
    assert ctypes.sizeof(info) == 48
    offsets = [getattr(info, name).offset for name, _ in info._fields_]
    assert offsets == [0, 8, 16, 20, 24, 32, 36, 40]
    counters = windows.ProcessMemoryCountersEx
    assert ctypes.sizeof(counters) == 80
    assert counters.WorkingSetSize.offset == 16
    assert counters.PrivateUsage.offset == 72


def info(base: int, size: int, state: int, protect: int = 0) -> windows.MemoryBasicInformation:
    answer = windows.MemoryBasicInformation()
    answer.BaseAddress, answer.RegionSize, answer.State, answer.Protect = base, size, state, protect
    return answer


def test_windows_states_are_regions() -> None:
    assert windows.to_region(info(0x10000, 0x1000, windows.MEM_FREE)) is None
    reserved = info(0x20000, 0x3000, windows.MEM_RESERVE, windows.PAGE_READWRITE)
    assert windows.to_region(reserved) == Region(0x20000, 0x23000, "none")
    committed = info(0x30000, 0x1000, windows.MEM_COMMIT, windows.PAGE_READONLY)
    assert windows.to_region(committed) == Region(0x30000, 0x31000, "read")
    guard = info(0x30000, 0x1000, windows.MEM_COMMIT, windows.PAGE_READWRITE | 0x100)
    assert windows.to_region(guard) == Region(0x30000, 0x31000, "other")


class FakeKernel32:
    """VirtualQuery over a made-up address space of 64 KiB granules."""

    def __init__(self, layout: list[tuple[int, int, int, int]]) -> None:
        self.layout = layout
        self.asked: list[int] = []

    def virtual_query(self, address: int, buffer: object, length: int) -> int:
        self.asked.append(address)
        answer = buffer._obj  # type: ignore[attr-defined]
        assert length == ctypes.sizeof(answer)
        for base, size, state, protect in self.layout:
            if base <= address < base + size:
                answer.BaseAddress, answer.RegionSize = base, size
                answer.State, answer.Protect = state, protect
                return length
        return 0


def test_the_windows_walk_visits_each_region_once(monkeypatch: pytest.MonkeyPatch) -> None:
    layout = [
        (0x0, 0x10000, windows.MEM_FREE, 0),
        (0x10000, 0x20000, windows.MEM_RESERVE, 0),
        (0x30000, 0x1000, windows.MEM_COMMIT, windows.PAGE_READWRITE),
        (0x31000, 0xF000, windows.MEM_RESERVE, 0),
        (0x40000, 0x7FFF_FFFF_0000 - 0x40000, windows.MEM_FREE, 0),
    ]
    fake = FakeKernel32(layout)
    monkeypatch.setattr(windows, "_api", lambda: fake)
    assert windows.mapping_count() == 3
    assert fake.asked == [0x0, 0x10000, 0x30000, 0x31000, 0x40000, 0x7FFF_FFFF_0000]
    assert windows.address_space_bytes() == 0x20000 + 0x1000 + 0xF000
    regions = list(windows.regions(0x30800, 0x32000))
    assert regions == [Region(0x30000, 0x31000, "read-write"), Region(0x31000, 0x40000, "none")]
    assert covered(regions, 0x30800, 0x1800, accessible=True) == 0x800


# -- macOS layouts and walk, checked off macOS too ------------------------------------------


@POINTERS_64
def test_mach_structures_have_the_header_layouts() -> None:
    vm = darwin.TaskVmInfo
    assert ctypes.sizeof(vm) == 152 and darwin.TASK_VM_INFO_REV1_COUNT == 38
    assert (vm.region_count.offset, vm.resident_size.offset, vm.phys_footprint.offset) == (
        8,
        16,
        144,
    )
    basic = darwin.VmRegionBasicInfo64
    assert ctypes.sizeof(basic) == 36 and darwin.VM_REGION_BASIC_INFO_COUNT_64 == 9
    assert (basic.offset_low.offset, basic.behavior.offset, basic.user_wired_count.offset) == (
        20,
        28,
        32,
    )


class FakeMach:
    """mach_vm_region over made-up map entries: the entry at or above the address asked."""

    task = 0x103

    def __init__(self, entries: list[tuple[int, int, int]]) -> None:
        self.entries = entries

    def region(self, *arguments: Any) -> int:
        task, address, size, flavor, info, count, _ = arguments
        assert task == self.task and flavor == darwin.VM_REGION_BASIC_INFO_64
        assert count._obj.value == darwin.VM_REGION_BASIC_INFO_COUNT_64
        for start, length, protection in self.entries:
            if address._obj.value < start + length:
                address._obj.value, size._obj.value = start, length
                info._obj.protection = protection
                return darwin.KERN_SUCCESS
        return darwin.KERN_INVALID_ADDRESS


def test_the_mach_walk_follows_the_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeMach([(0x100000, 0x4000, 0), (0x104000, 0x4000, 3), (0x200000, 0x4000, 1)])
    monkeypatch.setattr(darwin, "_api", lambda: fake)
    assert list(darwin.regions(0x102000, 0x201000)) == [
        Region(0x100000, 0x104000, "none"),
        Region(0x104000, 0x108000, "read-write"),
        Region(0x200000, 0x204000, "read"),
    ]
    assert list(darwin.regions(0x108000, 0x200000)) == []
    assert list(darwin.regions(0x300000, 0x400000)) == []


# -- live, on the OS running the suite --------------------------------------------------------


def test_the_probes_see_a_reservation_come_and_go() -> None:
    size = 16 * PAGE_SIZE
    before = osprobe.address_space_bytes()
    address = BACKEND.reserve(size)
    try:
        assert abs(osprobe.address_space_bytes() - before - size) <= MiB
        assert osprobe.mapped_bytes_in(address, size) == size
        assert osprobe.accessible_bytes_in(address, size) == 0
        assert osprobe.protection_at(address) == "none"
        BACKEND.commit(address + PAGE_SIZE, PAGE_SIZE)
        assert osprobe.accessible_bytes_in(address, size) == PAGE_SIZE
        assert osprobe.protection_at(address + PAGE_SIZE) == "read-write"
        BACKEND.protect(address + PAGE_SIZE, PAGE_SIZE, Protection.READ)
        assert osprobe.protection_at(address + PAGE_SIZE) == "read"
        assert osprobe.mapping_count() > 0
    finally:
        BACKEND.release(address, size)
    assert osprobe.mapped_bytes_in(address, size) == 0
    assert osprobe.protection_at(address) == "unmapped"


def test_touched_pages_are_resident() -> None:
    size = 32 * MiB
    address = BACKEND.reserve(size)
    try:
        BACKEND.commit(address, size)
        before = osprobe.resident_bytes()
        ctypes.memset(address, 1, size)
        assert osprobe.resident_bytes() - before >= size // 2
        BACKEND.decommit(address, size)
        assert osprobe.resident_bytes() - before < size // 2
    finally:
        BACKEND.release(address, size)
