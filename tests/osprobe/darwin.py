"""macOS: the task's memory as Mach reports it, through libSystem and ctypes.

``task_info(mach_task_self(), TASK_VM_INFO, …)`` fills ``struct task_vm_info``
(<mach/task_info.h>): ``region_count`` is the number of entries in the task's VM map,
``virtual_size`` its size and ``resident_size`` the pages in physical memory.
``mach_vm_region(…, VM_REGION_BASIC_INFO_64, …)`` (<mach/mach_vm.h>, <mach/vm_region.h>)
returns the map entry holding an address, or the next one above it, with its protection.
``mach_task_self()`` is a macro for the ``mach_task_self_`` variable (<mach/mach_init.h>).

Importable on any OS (the structures are plain ctypes); only calling a probe needs macOS.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Callable, Iterator
from ctypes import c_int, c_uint16, c_uint32, c_uint64, c_void_p

from tests.osprobe.spans import Region, posix_access

LIBSYSTEM = "/usr/lib/libSystem.B.dylib"
KERN_SUCCESS = 0
KERN_INVALID_ADDRESS = 1
TASK_VM_INFO = 22
VM_REGION_BASIC_INFO_64 = 9
VM_PROT_READ = 0x1
VM_PROT_WRITE = 0x2
VM_PROT_EXECUTE = 0x4


class TaskVmInfo(ctypes.Structure):
    """``struct task_vm_info`` up to its rev1 field ``phys_footprint`` (152 bytes).

    The header packs it to 4 bytes; every field here already falls on its natural
    alignment, so no ``_pack_`` is needed for the layout to match.
    """

    _fields_ = (
        ("virtual_size", c_uint64),  # mach_vm_size_t
        ("region_count", c_int),  # integer_t
        ("page_size", c_int),
        ("resident_size", c_uint64),
        ("resident_size_peak", c_uint64),
        ("device", c_uint64),
        ("device_peak", c_uint64),
        ("internal", c_uint64),
        ("internal_peak", c_uint64),
        ("external", c_uint64),
        ("external_peak", c_uint64),
        ("reusable", c_uint64),
        ("reusable_peak", c_uint64),
        ("purgeable_volatile_pmap", c_uint64),
        ("purgeable_volatile_resident", c_uint64),
        ("purgeable_volatile_virtual", c_uint64),
        ("compressed", c_uint64),
        ("compressed_peak", c_uint64),
        ("compressed_lifetime", c_uint64),
        ("phys_footprint", c_uint64),
    )


TASK_VM_INFO_REV1_COUNT = ctypes.sizeof(TaskVmInfo) // ctypes.sizeof(c_uint32)
"""``mach_msg_type_number_t`` count of natural_t words asked for: 38."""


class VmRegionBasicInfo64(ctypes.Structure):
    """``struct vm_region_basic_info_64`` (36 bytes under the header's ``pack(4)``).

    Its 64-bit ``offset`` sits at byte 20, off its natural alignment, so it is declared as
    two 32-bit halves: the layout then matches without ``_pack_``.
    """

    _fields_ = (
        ("protection", c_int),  # vm_prot_t
        ("max_protection", c_int),
        ("inheritance", c_uint32),  # vm_inherit_t
        ("shared", c_uint32),  # boolean_t
        ("reserved", c_uint32),
        ("offset_low", c_uint32),  # memory_object_offset_t, little-endian halves
        ("offset_high", c_uint32),
        ("behavior", c_int),  # vm_behavior_t
        ("user_wired_count", c_uint16),
    )


VM_REGION_BASIC_INFO_COUNT_64 = ctypes.sizeof(VmRegionBasicInfo64) // ctypes.sizeof(c_int)
"""9, as the header's ``sizeof(vm_region_basic_info_data_64_t) / sizeof(int)``."""


class _Api:
    """``task_info`` and ``mach_vm_region`` from libSystem, and this task's port."""

    def __init__(self) -> None:
        if sys.platform != "darwin":
            raise OSError("the macOS probes need macOS")
        libsystem = ctypes.CDLL(LIBSYSTEM)
        self.task = c_uint32.in_dll(libsystem, "mach_task_self_").value
        self.task_info: Callable[..., int] = libsystem.task_info
        self.task_info.argtypes = [c_uint32, c_uint32, c_void_p, ctypes.POINTER(c_uint32)]
        self.task_info.restype = c_int
        self.region: Callable[..., int] = libsystem.mach_vm_region
        self.region.argtypes = [
            c_uint32,  # vm_map_read_t target_task
            ctypes.POINTER(c_uint64),  # mach_vm_address_t *address (in: from; out: start)
            ctypes.POINTER(c_uint64),  # mach_vm_size_t *size
            c_int,  # vm_region_flavor_t
            c_void_p,  # vm_region_info_t
            ctypes.POINTER(c_uint32),  # mach_msg_type_number_t *infoCnt
            ctypes.POINTER(c_uint32),  # mach_port_t *object_name
        ]
        self.region.restype = c_int


@functools.cache
def _api() -> _Api:
    return _Api()


def vm_info() -> TaskVmInfo:
    """This task's ``TASK_VM_INFO``."""
    api = _api()
    info = TaskVmInfo()
    count = c_uint32(TASK_VM_INFO_REV1_COUNT)
    result = api.task_info(api.task, TASK_VM_INFO, ctypes.byref(info), ctypes.byref(count))
    if result != KERN_SUCCESS:
        raise OSError(f"task_info(TASK_VM_INFO) returned kern_return_t {result}")
    return info


def regions(start: int, end: int) -> Iterator[Region]:
    """The VM map entries that overlap ``[start, end)``, with their current protection."""
    api = _api()
    address = c_uint64(start)
    size = c_uint64(0)
    info = VmRegionBasicInfo64()
    count = c_uint32()
    object_name = c_uint32()
    while address.value < end:
        count.value = VM_REGION_BASIC_INFO_COUNT_64
        result = api.region(
            api.task,
            ctypes.byref(address),
            ctypes.byref(size),
            VM_REGION_BASIC_INFO_64,
            ctypes.byref(info),
            ctypes.byref(count),
            ctypes.byref(object_name),
        )
        if result == KERN_INVALID_ADDRESS:
            return  # no entry at or above the address
        if result != KERN_SUCCESS:
            raise OSError(f"mach_vm_region returned kern_return_t {result}")
        if address.value >= end or size.value == 0:
            return
        prot = info.protection
        access = posix_access(
            bool(prot & VM_PROT_READ), bool(prot & VM_PROT_WRITE), bool(prot & VM_PROT_EXECUTE)
        )
        yield Region(address.value, address.value + size.value, access)
        address.value += size.value


def mapping_count() -> int:
    """Entries in the task's VM map (``region_count``)."""
    return int(vm_info().region_count)


def address_space_bytes() -> int:
    """The task's virtual size, accessible or not."""
    return int(vm_info().virtual_size)


def open_handles() -> int:
    """Descriptors this process has open."""
    return len(os.listdir("/dev/fd"))


def resident_bytes() -> int:
    """Pages of the task in physical memory."""
    return int(vm_info().resident_size)
