"""The POSIX backend: pure logic for both kernels, and real calls through this OS's backend.

The calls that only reserve, commit, decommit and touch run on every OS (on Windows through
its own backend, measured by ``tests.osprobe``); what is particular to mmap and friends, or
to Linux, is guarded.
"""

from __future__ import annotations

import errno
import mmap
from typing import Any

import pytest

from mmkit.platform import BACKEND, PlatformError, Protection
from mmkit.platform.base import Advice, align_down, align_up, check_span, is_power_of_two
from mmkit.platform.posix import (
    DARWIN,
    LINUX,
    PosixConstants,
    PosixMemory,
    advice_value,
    aligned_trim,
    check_against_stdlib,
    count_resident,
    near_map_limit,
    protection_flags,
    reserve_flags,
)
from tests import markers
from tests.conftest import run_python
from tests.osprobe import address_space_bytes, crashed, describe, mapped_bytes_in

PAGE = BACKEND.page_size


@markers.linux_backend
def test_linux_table_matches_the_stdlib() -> None:
    check_against_stdlib(LINUX)
    assert LINUX.map_anonymous == mmap.MAP_ANONYMOUS
    assert LINUX.advice[Advice.HUGEPAGE] == mmap.MADV_HUGEPAGE


@markers.linux_backend
def test_a_wrong_table_is_refused() -> None:
    wrong = PosixConstants(**{**LINUX.__dict__, "map_anonymous": DARWIN.map_anonymous})
    with pytest.raises(ImportError, match="MAP_ANONYMOUS"):
        check_against_stdlib(wrong)


def test_darwin_values_are_the_xnu_headers() -> None:
    assert DARWIN.map_anonymous == 0x1000
    assert DARWIN.map_noreserve == 0x40
    assert DARWIN.map_fixed == 0x10
    assert DARWIN.map_private == 0x2
    assert DARWIN.madv_populate_write is None
    assert reserve_flags(DARWIN) == 0x1042
    assert reserve_flags(LINUX) == 0x4022
    for advice, value in {
        Advice.NORMAL: 0, Advice.RANDOM: 1, Advice.SEQUENTIAL: 2,
        Advice.WILLNEED: 3, Advice.DONTNEED: 4,
    }.items():  # fmt: skip
        assert advice_value(advice, DARWIN) == value
    assert advice_value(Advice.HUGEPAGE, DARWIN) is None
    assert advice_value(Advice.HUGEPAGE, LINUX) == 14


@pytest.mark.parametrize("constants", [LINUX, DARWIN])
def test_protection_flags(constants: PosixConstants) -> None:
    assert protection_flags(Protection.NONE, constants) == 0
    assert protection_flags(Protection.READ, constants) == 1
    assert protection_flags(Protection.READ_WRITE, constants) == 3


def test_alignment_arithmetic() -> None:
    assert align_up(1, 4096) == 4096 and align_up(4096, 4096) == 4096
    assert align_down(8191, 4096) == 4096
    assert is_power_of_two(4096) and not is_power_of_two(0) and not is_power_of_two(12)
    start, head, tail = aligned_trim(0x1000, 0x10000, 0x200000)
    assert start == 0x200000 and head == 0x1FF000 and tail == 0x1000
    assert head + 0x10000 + tail == 0x10000 + 0x200000
    assert aligned_trim(0x400000, 0x10000, 0x200000) == (0x400000, 0, 0x200000)


def test_count_resident_reads_bit_zero_only() -> None:
    assert count_resident(bytes([0, 1, 3, 0x81, 0x80, 0xFE])) == 3


def test_check_span() -> None:
    check_span("x", PAGE, PAGE, PAGE)
    for address, size in ((1, PAGE), (PAGE, 0), (PAGE, PAGE + 1), (PAGE, -PAGE)):
        with pytest.raises(ValueError, match="whole pages"):
            check_span("x", address, size, PAGE)


@pytest.fixture
def span() -> Any:
    size = 64 * PAGE
    address = BACKEND.reserve(size)
    yield address, size
    BACKEND.release(address, size)


def test_reserve_commits_nothing(span: tuple[int, int]) -> None:
    address, size = span
    assert mapped_bytes_in(address, size) == size
    assert BACKEND.resident(address, size) == 0


def test_aligned_reservation_trims_the_excess() -> None:
    alignment = 2 << 20
    before = address_space_bytes()
    address = BACKEND.reserve(16 * PAGE, alignment)
    try:
        assert address % alignment == 0
        assert address_space_bytes() - before == 16 * PAGE
        assert mapped_bytes_in(address, 16 * PAGE) == 16 * PAGE
    finally:
        BACKEND.release(address, 16 * PAGE)
    assert mapped_bytes_in(address, 16 * PAGE) == 0


def test_commit_write_decommit_recommit_reads_zero(span: tuple[int, int]) -> None:
    import ctypes

    address, size = span
    BACKEND.commit(address, 4 * PAGE)
    ctypes.memset(address, 0xAB, 4 * PAGE)
    assert BACKEND.resident(address, size) == 4 * PAGE
    BACKEND.decommit(address, 4 * PAGE)
    assert BACKEND.resident(address, size) == 0
    BACKEND.commit(address, 4 * PAGE)
    assert ctypes.string_at(address, 4 * PAGE) == bytes(4 * PAGE)


@markers.linux_backend
@pytest.mark.parametrize("populate", [True, False])
def test_prefault_makes_pages_resident(span: tuple[int, int], populate: bool) -> None:
    import ctypes

    address, size = span
    vm = PosixMemory(LINUX)
    vm._populate_works = populate
    vm.commit(address, 8 * PAGE)
    ctypes.memset(address, 7, 1)
    vm.prefault(address, 8 * PAGE)
    assert vm.resident(address, size) == 8 * PAGE
    assert ctypes.string_at(address, 2) == b"\x07\x00"


@markers.posix_backend
def test_advise_and_lock(span: tuple[int, int]) -> None:
    address, size = span
    BACKEND.commit(address, size)
    for advice in (Advice.SEQUENTIAL, Advice.RANDOM, Advice.WILLNEED, Advice.NORMAL):
        assert BACKEND.advise(address, size, advice) is True
    BACKEND.advise(address, size, Advice.HUGEPAGE)
    BACKEND.lock(address, PAGE)
    assert BACKEND.resident(address, PAGE) == PAGE
    BACKEND.unlock(address, PAGE)


@markers.posix_backend
def test_errors_name_the_call_and_arguments() -> None:
    address = BACKEND.reserve(PAGE)
    BACKEND.release(address, PAGE)
    with pytest.raises(PlatformError) as caught:
        BACKEND.protect(address, PAGE, Protection.READ)
    assert caught.value.errno == errno.ENOMEM
    assert caught.value.call == "mprotect"
    assert f"mprotect({address:#x}, {PAGE}, READ)" in str(caught.value)
    assert isinstance(caught.value, OSError)


@markers.posix_backend
def test_oversized_reservation_is_a_clean_error() -> None:
    with pytest.raises(PlatformError) as caught:
        BACKEND.reserve(1 << 62)
    assert caught.value.exhausted
    assert "mmap" in str(caught.value)


def test_touching_a_reservation_kills_only_a_child() -> None:
    result = run_python(
        """
        import ctypes
        from mmkit.platform import BACKEND
        address = BACKEND.reserve(BACKEND.page_size)
        # A plain read, not a foreign call: ctypes on Windows turns a fault inside one of its
        # calls (string_at, memmove) into OSError, and the child would just exit 1.
        (ctypes.c_ubyte * 1).from_address(address)[0]
        """
    )
    assert crashed(result.returncode), describe(result.returncode)


@markers.procfs
def test_decommit_of_locked_pages_is_one_step(span: tuple[int, int]) -> None:
    """madvise(MADV_DONTNEED) refuses locked pages; decommit gives them back, unlocked."""
    import ctypes

    from tests.osprobe.linux import locked_bytes

    address, size = span
    BACKEND.commit(address, 4 * PAGE)
    ctypes.memset(address, 0xCD, 4 * PAGE)
    before = locked_bytes()
    BACKEND.lock(address, 4 * PAGE)
    assert locked_bytes() == before + 4 * PAGE
    BACKEND.decommit(address, 4 * PAGE)
    assert locked_bytes() == before
    assert BACKEND.resident(address, size) == 0
    assert mapped_bytes_in(address, size) == size
    BACKEND.commit(address, 4 * PAGE)
    assert ctypes.string_at(address, 4 * PAGE) == bytes(4 * PAGE)


@markers.needs_mlockall
def test_decommit_under_mlockall_future() -> None:
    """With every future page locked (mlockall(MCL_FUTURE)), decommit still returns memory."""
    result = run_python(
        """
        import ctypes, ctypes.util
        from mmkit.platform import BACKEND
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.mlockall(2) == 0, ctypes.get_errno()  # MCL_FUTURE
        page = BACKEND.page_size
        address = BACKEND.reserve(16 * page)
        BACKEND.commit(address, 8 * page)
        ctypes.memset(address, 0x5A, 8 * page)
        BACKEND.decommit(address, 8 * page)
        assert BACKEND.resident(address, 16 * page) == 0
        BACKEND.commit(address, 8 * page)
        assert ctypes.string_at(address, 8 * page) == bytes(8 * page)
        """
    )
    assert result.returncode == 0, result.stderr


def test_near_map_limit() -> None:
    assert near_map_limit(65530, 65530)
    assert near_map_limit(65528, 65530)
    assert not near_map_limit(65527, 65530)
    assert not near_map_limit(300, 65530)


@markers.map_count_limit
def test_running_out_of_mappings_is_named() -> None:
    """ENOMEM at the map count limit says so, and becomes OutOfMappings, not plain OutOfMemory."""
    result = run_python(
        """
        from mmkit.platform import BACKEND, PlatformError, Protection
        from mmkit.values.errors import OutOfMappings, from_os_error
        from tests.osprobe.linux import exhaust_mappings
        page = BACKEND.page_size
        address = BACKEND.reserve(8 * page)
        BACKEND.commit(address, 8 * page)
        maps = exhaust_mappings(page)
        try:
            BACKEND.protect(address + page, page, Protection.READ)
        except PlatformError as exc:
            assert exc.mappings, exc
            error = from_os_error(exc, "publishing a layer")
            assert isinstance(error, OutOfMappings), type(error)
            assert isinstance(error, MemoryError)
            assert "vm.max_map_count" in str(error), error
        else:
            raise AssertionError("protect succeeded at the map count limit")
        del maps
        BACKEND.protect(address + page, page, Protection.READ)
        """,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
