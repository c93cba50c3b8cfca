"""What data files may be: regular files only, with a bounded header, saved like ``open(, "wb")``.

FIFOs, devices and directories are refused at once on every path that reads or writes one;
a header cannot make a reader read more than the header; a save keeps the replaced file's
mode and owner and writes through a symlink; paths that cannot name a file are refused
before anything is created.
"""

from __future__ import annotations

import os
import stat
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from mmkit import (
    DataFileError,
    DimensionSpec,
    InvalidArgument,
    MemoryConfig,
    MmapManager,
    MmkitError,
    generate_dataset,
)
from mmkit.platform import PAGE_SIZE
from mmkit.storage import (
    MAGIC,
    PAYLOAD_ALIGNMENT,
    dimension_path,
    inspect_file,
    read_dimension,
    write_dimension,
    write_layers,
)
from tests import markers

ROOT = Path(__file__).resolve().parent.parent
LAYER = PAGE_SIZE
A = DimensionSpec(1, "A", 3 * LAYER)
CONFIG = MemoryConfig(limit=16 * LAYER, layer_size=LAYER, dimensions=(A,))
ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0


def problem_of(path: Path | str) -> str:
    """What ``read_dimension`` says is wrong with the file at ``path``."""
    with pytest.raises(DataFileError) as caught:
        read_dimension(path, A, LAYER, memoryview(bytearray(A.size)))
    assert caught.value.path == Path(path)
    return caught.value.problem


def save_problem(path: Path | str) -> str:
    """What ``write_dimension`` and ``write_layers`` say is wrong with saving to ``path``."""
    with pytest.raises(DataFileError) as caught:
        write_dimension(path, A, LAYER, bytes(A.size))
    with pytest.raises(DataFileError) as again:
        write_layers(path, A, LAYER, [bytes(LAYER)] * 3)
    assert caught.value.problem == again.value.problem
    return caught.value.problem


def load(path: Path) -> bytes:
    target = bytearray(A.size)
    read_dimension(path, A, LAYER, memoryview(target))
    return bytes(target)


# -- B7: only regular files are read ----------------------------------------------------


@markers.needs_fifo
@pytest.mark.timeout(10)
def test_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "d01-a.mmkd"
    os.mkfifo(fifo)
    assert problem_of(fifo) == "not a regular file (a FIFO)"
    report = inspect_file(fifo)
    assert not report.ok and report.header is None
    assert report.verdict == "not a regular file (a FIFO)"
    link = tmp_path / "link.mmkd"
    link.symlink_to(fifo.name)
    assert problem_of(link) == "not a regular file (a FIFO)"


@markers.needs_fifo
@pytest.mark.timeout(10)
def test_a_fifo_header_is_refused_at_once(tmp_path: Path) -> None:
    from mmkit.storage import read_header_file

    fifo = tmp_path / "d01-a.mmkd"
    os.mkfifo(fifo)
    with pytest.raises(DataFileError, match=r"not a regular file \(a FIFO\)"):
        read_header_file(fifo)


@markers.needs_fifo
@pytest.mark.timeout(10)
def test_a_fifo_in_the_data_directory_is_refused(tmp_path: Path) -> None:
    os.mkfifo(dimension_path(tmp_path, A))
    config = MemoryConfig(limit=16 * LAYER, layer_size=LAYER, dimensions=(A,), data_dir=tmp_path)
    with MmapManager(config) as manager:
        with pytest.raises(DataFileError, match=r"not a regular file \(a FIFO\)"):
            manager.load_dimension(1)
        assert not manager.is_loaded(1)


@markers.needs_fifo
def test_mmkit_inspect_refuses_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result = subprocess.run(
        [sys.executable, "-m", "mmkit", "inspect", str(fifo)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "verdict         not a regular file (a FIFO)" in result.stdout


def test_a_directory_is_refused(tmp_path: Path) -> None:
    assert problem_of(tmp_path) == "is a directory"
    assert inspect_file(tmp_path).verdict == "is a directory"


@markers.posix_devices
@pytest.mark.timeout(10)
def test_a_device_is_refused(tmp_path: Path) -> None:
    assert problem_of("/dev/zero") == "not a regular file (a character device)"
    assert inspect_file("/dev/zero").verdict == "not a regular file (a character device)"


# -- B8: a header cannot make the reader read more than the header -----------------------


def forged(path: Path, offset: int, payload_size: int) -> None:
    """A file for A with a valid header checksum whose payload (all zero) starts at ``offset``."""
    zeros = zlib.crc32(bytes(LAYER))
    body = struct.pack(
        "<8sHHII64sQQIQ3I", MAGIC, 1, 0, 124, 1, b"A", A.size, LAYER, 3, offset, *[zeros] * 3
    )
    path.write_bytes(body + struct.pack("<I", zlib.crc32(body)))
    os.truncate(path, offset + payload_size)


@markers.posix_modes
@pytest.mark.timeout(10)
def test_sparse_padding_is_refused_at_once(tmp_path: Path) -> None:
    path = tmp_path / "sparse.mmkd"
    offset = 64 << 30
    forged(path, offset, A.size)
    if os.stat(path).st_blocks * 512 > 1 << 20:
        pytest.skip("this file system does not make sparse files")
    started = time.monotonic()
    problem = f"corrupt header: payload offset {offset}, expected {PAYLOAD_ALIGNMENT}"
    assert problem_of(path) == problem
    assert inspect_file(path).verdict == problem
    assert time.monotonic() - started < 5


def test_only_the_canonical_payload_offset_is_read(tmp_path: Path) -> None:
    path = tmp_path / "far.mmkd"
    forged(path, 2 * PAYLOAD_ALIGNMENT, A.size)  # zero padding and a payload that matches
    problem = f"corrupt header: payload offset {2 * PAYLOAD_ALIGNMENT}, expected 65536"
    assert problem_of(path) == problem
    assert inspect_file(path).verdict == problem


def test_the_length_is_checked_before_the_padding(tmp_path: Path) -> None:
    from mmkit.storage import read_header_file

    path = tmp_path / "a.mmkd"
    write_dimension(path, A, LAYER, bytes(A.size))
    with open(path, "r+b") as file:
        file.seek(PAYLOAD_ALIGNMENT - 1)
        file.write(b"\1")
        file.truncate(PAYLOAD_ALIGNMENT + 10)
    expected = f"truncated: {PAYLOAD_ALIGNMENT + 10} bytes, expected {PAYLOAD_ALIGNMENT + A.size}"
    assert problem_of(path) == expected
    with pytest.raises(DataFileError) as caught:
        read_header_file(path)
    assert caught.value.problem == expected
    os.truncate(path, PAYLOAD_ALIGNMENT + A.size)
    with pytest.raises(DataFileError, match="corrupt padding: non-zero byte at offset 65535"):
        read_header_file(path)


# -- C11: saving replaces a regular file only, as open(path, "wb") would -----------------


@markers.needs_fifo
@pytest.mark.timeout(10)
def test_saving_over_a_fifo_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "a.mmkd"
    os.mkfifo(fifo)
    assert save_problem(fifo) == "not a regular file (a FIFO)"
    with MmapManager(CONFIG) as manager:
        manager.load_dimension(1, bytes(A.size))
        with pytest.raises(DataFileError, match=r"not a regular file \(a FIFO\)"):
            manager.save_dimension(1, fifo)
    assert os.listdir(tmp_path) == ["a.mmkd"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.skipif(not ROOT_USER or not hasattr(os, "mknod"), reason="mknod needs root")
def test_saving_over_a_device_is_refused(tmp_path: Path) -> None:
    # A node of our own for /dev/null's device: the real one stays out of reach of a bug.
    null = tmp_path / "null"
    try:
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except OSError as exc:
        pytest.skip(f"cannot make a device node here: {exc}")
    assert save_problem(null) == "not a regular file (a character device)"
    assert os.listdir(tmp_path) == ["null"]
    assert stat.S_ISCHR(os.lstat(null).st_mode)


def test_saving_over_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.mmkd").mkdir()
    assert save_problem(tmp_path / "a.mmkd") == "is a directory"
    assert os.listdir(tmp_path) == ["a.mmkd"]


@markers.posix_modes
@pytest.mark.parametrize("mode", [0o600, 0o640, 0o666, 0o400])
def test_replacing_a_file_keeps_its_mode(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "a.mmkd"
    write_dimension(path, A, LAYER, bytes(A.size))
    os.chmod(path, mode)
    umask = os.umask(0o022)
    try:
        write_dimension(path, A, LAYER, b"\1" * A.size)
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == mode
    assert load(path) == b"\1" * A.size
    assert os.listdir(tmp_path) == ["a.mmkd"]


@pytest.mark.skipif(not ROOT_USER, reason="only root can give a file away")
def test_replacing_a_file_keeps_its_owner(tmp_path: Path) -> None:
    path = tmp_path / "a.mmkd"
    write_dimension(path, A, LAYER, bytes(A.size))
    os.chown(path, 12345, 23456)
    write_dimension(path, A, LAYER, b"\1" * A.size)
    status = os.stat(path)
    assert (status.st_uid, status.st_gid) == (12345, 23456)


def test_a_symlink_is_written_through(tmp_path: Path) -> None:
    real, link, dangling = tmp_path / "real.mmkd", tmp_path / "link.mmkd", tmp_path / "new"
    write_dimension(real, A, LAYER, bytes(A.size))
    try:
        link.symlink_to("real.mmkd")
        dangling.symlink_to("made.mmkd")
    except OSError as exc:  # Windows without the privilege
        pytest.skip(f"cannot make a symlink here: {exc}")
    write_dimension(link, A, LAYER, b"\1" * A.size)
    assert link.is_symlink() and os.readlink(link) == "real.mmkd"
    assert load(real) == b"\1" * A.size
    write_layers(dangling, A, LAYER, [b"\2" * LAYER] * 3)
    assert dangling.is_symlink() and load(tmp_path / "made.mmkd") == b"\2" * A.size
    assert sorted(os.listdir(tmp_path)) == ["link.mmkd", "made.mmkd", "new", "real.mmkd"]


# -- D12: paths that cannot name a file --------------------------------------------------


@pytest.mark.parametrize("path", ["", "a\0b.mmkd", "dir\0/a.mmkd"])
def test_unusable_save_paths_are_invalid_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidArgument):
        write_dimension(path, A, LAYER, bytes(A.size))
    with pytest.raises(InvalidArgument):
        write_layers(path, A, LAYER, [bytes(LAYER)] * 3)
    with pytest.raises(InvalidArgument):
        generate_dataset(path, CONFIG)
    with MmapManager(CONFIG) as manager:
        manager.load_dimension(1, bytes(A.size))
        with pytest.raises(MmkitError):
            manager.save_dimension(1, path)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("path", ["", "a\0b.mmkd"])
def test_unusable_load_paths_are_invalid_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidArgument):
        read_dimension(path, A, LAYER, memoryview(bytearray(A.size)))
    with pytest.raises(InvalidArgument):
        inspect_file(path)
    if "\0" in path:
        with MmapManager(CONFIG) as manager, pytest.raises(InvalidArgument):
            manager.load_dimension(1, path)


def test_saving_to_the_root_directory_is_refused(tmp_path: Path) -> None:
    before = sorted(os.listdir(os.sep))
    assert save_problem(os.sep) == "is a directory"
    assert save_problem(tmp_path) == "is a directory"
    assert sorted(os.listdir(os.sep)) == before
    assert os.listdir(tmp_path) == []
