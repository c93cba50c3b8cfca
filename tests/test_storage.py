"""The data-file format: round trips, determinism, atomic writes and every kind of damage."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmkit import (
    DataFileError,
    DimensionId,
    DimensionSpec,
    MemoryConfig,
    MiB,
    generate_dataset,
)
from mmkit.platform import PAGE_SIZE
from mmkit.storage import (
    FORMAT_VERSION,
    MAGIC,
    PAYLOAD_ALIGNMENT,
    SUFFIX,
    FileHeader,
    dimension_filename,
    dimension_path,
    encode_header,
    inspect_file,
    read_dimension,
    read_header,
    write_dimension,
    write_layers,
)

LAYER = PAGE_SIZE
CONFIG = MemoryConfig(
    limit=1 * MiB,
    layer_size=LAYER,
    dimensions=(DimensionSpec(1, "A", 3 * LAYER), DimensionSpec(2, "B", 2 * LAYER)),
)
A, B = CONFIG.dimensions
# The file length of A, and where its payload and its header checksum start.
FILE_SIZE = PAYLOAD_ALIGNMENT + A.size
HEADER_END = 112 + 4 * 3 + 4


def load(path: Path | str, spec: DimensionSpec = A, layer_size: int = LAYER) -> bytes:
    target = bytearray(spec.size)
    read_dimension(path, spec, layer_size, memoryview(target))
    return bytes(target)


def problem_of(path: Path, spec: DimensionSpec = A, layer_size: int = LAYER) -> str:
    with pytest.raises(DataFileError) as caught:
        load(path, spec, layer_size)
    assert caught.value.path == Path(path)
    assert str(caught.value) == f"{path}: {caught.value.problem}"
    return caught.value.problem


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def files(tmp_path: Path) -> dict[DimensionId, Path]:
    return generate_dataset(tmp_path / "data", CONFIG, seed=3)


@pytest.fixture
def a_file(files: dict[DimensionId, Path]) -> Path:
    return files[DimensionId(1)]


# -- names and layout -------------------------------------------------------------------


def test_file_names() -> None:
    assert SUFFIX == ".mmkd"
    assert dimension_filename(DimensionSpec(1, "Emotion", LAYER)) == "d01-emotion.mmkd"
    assert dimension_filename(DimensionSpec(12, "Alpha  One!", LAYER)) == "d12-alpha-one.mmkd"
    assert dimension_filename(DimensionSpec(7, "Ünïcode/..", LAYER)) == "d07-n-code.mmkd"
    assert dimension_filename(DimensionSpec(3, "???", LAYER)) == "d03-dimension.mmkd"
    assert dimension_filename(DimensionSpec(123, "x", LAYER)) == "d123-x.mmkd"
    assert dimension_path("some/dir", B) == Path("some/dir/d02-b.mmkd")


def test_header_bytes_follow_the_spec() -> None:
    checksums = [0x11111111, 0x22222222, 0xFFFFFFFF]
    raw = encode_header(DimensionId(5), "Héllo", 3 * LAYER, LAYER, checksums)
    assert len(raw) == HEADER_END
    fields = struct.unpack_from("<8sHHII64sQQIQ", raw)
    assert fields == (
        MAGIC,
        FORMAT_VERSION,
        0,
        124,
        5,
        "Héllo".encode().ljust(64, b"\0"),
        3 * LAYER,
        LAYER,
        3,
        PAYLOAD_ALIGNMENT,
    )
    assert struct.unpack_from("<3I", raw, 112) == tuple(checksums)
    assert struct.unpack_from("<I", raw, 124)[0] == zlib.crc32(raw[:124])


def test_long_names_are_cut_at_a_character_boundary(tmp_path: Path) -> None:
    spec = DimensionSpec(1, "é" * 40, LAYER)
    path = tmp_path / "n.mmkd"
    written = write_dimension(path, spec, LAYER, bytes(LAYER))
    with open(path, "rb") as file:
        assert read_header(file, path).name == "é" * 32 == written.name


def test_encode_header_refuses_impossible_fields() -> None:
    with pytest.raises(ValueError, match="layers"):
        encode_header(DimensionId(1), "x", LAYER, LAYER, [])
    with pytest.raises(ValueError, match="do not make"):
        encode_header(DimensionId(1), "x", 3 * LAYER, LAYER, [0, 0])
    with pytest.raises(ValueError, match="out of range"):
        encode_header(DimensionId(1), "x", LAYER, LAYER, [1 << 32])


# -- round trips ------------------------------------------------------------------------


def test_round_trip(tmp_path: Path) -> None:
    data = os.urandom(A.size)
    path = tmp_path / "a.mmkd"
    written = write_dimension(path, A, LAYER, data)
    assert load(path) == data
    raw = path.read_bytes()
    assert len(raw) == FILE_SIZE
    assert raw[PAYLOAD_ALIGNMENT:] == data
    assert raw[HEADER_END:PAYLOAD_ALIGNMENT] == bytes(PAYLOAD_ALIGNMENT - HEADER_END)
    expected = tuple(zlib.crc32(data[i * LAYER : (i + 1) * LAYER]) for i in range(3))
    target = bytearray(A.size)
    header = read_dimension(path, A, LAYER, memoryview(target))
    assert header == FileHeader(DimensionId(1), "A", A.size, LAYER, expected, PAYLOAD_ALIGNMENT)
    assert written == header
    assert header.layer_count == 3
    assert header.file_size == FILE_SIZE
    report = inspect_file(path)
    assert report.ok and report.verdict == "ok"
    assert report.header == header and report.file_size == FILE_SIZE
    assert [(c.index, c.stored, c.computed, c.ok) for c in report.layers] == [
        (i, crc, crc, True) for i, crc in enumerate(expected)
    ]
    assert "verdict         ok" in report.render()


def test_write_layers_streams_any_buffers(tmp_path: Path) -> None:
    layers: list[bytes | bytearray | memoryview] = [
        os.urandom(LAYER),
        bytearray(os.urandom(LAYER)),
        memoryview(os.urandom(LAYER)),
    ]
    path = tmp_path / "a.mmkd"
    header = write_layers(path, A, LAYER, iter(layers))
    assert load(path) == b"".join(bytes(layer) for layer in layers)
    assert header.layer_checksums == tuple(zlib.crc32(layer) for layer in layers)


def test_write_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "a.mmkd"
    write_dimension(path, A, LAYER, bytes(A.size))
    write_dimension(path, A, LAYER, b"\x01" * A.size)
    assert load(path) == b"\x01" * A.size
    assert os.listdir(tmp_path) == ["a.mmkd"]


def test_written_files_follow_the_umask(tmp_path: Path) -> None:
    if os.name != "posix":
        pytest.skip("permission bits are POSIX")
    umask = os.umask(0o022)
    path = tmp_path / "a.mmkd"
    try:
        write_dimension(path, A, LAYER, bytes(A.size))
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


@st.composite
def layouts(draw: st.DrawFn) -> tuple[DimensionSpec, int, bytes]:
    """Any dimension id and name, a small layer size and layer count, and a payload."""
    layer_size, count = draw(st.integers(1, 300)), draw(st.integers(1, 9))
    name = draw(st.text(min_size=1, max_size=80))
    spec = DimensionSpec(draw(st.integers(1, 2**32 - 1)), name, layer_size * count)
    return spec, layer_size, draw(st.binary(min_size=spec.size, max_size=spec.size))


@given(layout=layouts())
def test_any_fields_round_trip(
    tmp_path_factory: pytest.TempPathFactory, layout: tuple[DimensionSpec, int, bytes]
) -> None:
    spec, layer_size, payload = layout
    path = tmp_path_factory.mktemp("rt") / "f.mmkd"
    written = write_dimension(path, spec, layer_size, payload)
    target = bytearray(spec.size)
    header = read_dimension(path, spec, layer_size, memoryview(target))
    assert header == written
    assert bytes(target) == payload
    assert header.dimension == spec.id and header.layer_count == spec.size // layer_size
    assert spec.name.startswith(header.name) and len(header.name.encode()) <= 64
    assert inspect_file(path).ok


# -- generated data ---------------------------------------------------------------------


def test_generation_is_deterministic(tmp_path: Path) -> None:
    first = generate_dataset(tmp_path / "one", CONFIG, seed=7)
    second = generate_dataset(tmp_path / "two", CONFIG, seed=7)
    other = generate_dataset(tmp_path / "three", CONFIG, seed=8)
    assert set(first) == {DimensionId(1), DimensionId(2)}
    for dimension, path in first.items():
        assert path.read_bytes() == second[dimension].read_bytes()
        assert (
            path.read_bytes()[PAYLOAD_ALIGNMENT:]
            != other[dimension].read_bytes()[PAYLOAD_ALIGNMENT:]
        )
    digest = hashlib.sha256(b"".join(first[d].read_bytes() for d in sorted(first)))
    # Pinned: the same bytes on every run, platform and Python version.
    assert digest.hexdigest() == "c24ae0a578187d293f251e0ea0046b96ede831812e9b6d98f3a1843931040301"


def test_a_layer_depends_only_on_its_own_coordinates(tmp_path: Path) -> None:
    alone = MemoryConfig(limit=1 * MiB, layer_size=LAYER, dimensions=(B,))
    together = generate_dataset(tmp_path / "both", CONFIG, seed=1)[DimensionId(2)]
    assert generate_dataset(tmp_path / "alone", alone, seed=1)[DimensionId(2)].read_bytes() == (
        together.read_bytes()
    )


def test_generated_data_is_varied(files: dict[DimensionId, Path]) -> None:
    payloads = [load(files[spec.id], spec) for spec in CONFIG.dimensions]
    layers = [p[i : i + LAYER] for p in payloads for i in range(0, len(p), LAYER)]
    assert len(set(layers)) == len(layers) == 5
    everything = b"".join(payloads)
    counts = [everything.count(bytes([value])) for value in range(256)]
    mean = len(everything) / 256
    assert min(counts) > mean / 2 and max(counts) < mean * 2
    for layer in layers:
        assert len(set(layer)) > 200


def test_generation_creates_the_directory_and_only_the_files(tmp_path: Path) -> None:
    paths = generate_dataset(tmp_path / "a" / "b", CONFIG)
    assert paths == {
        spec.id: dimension_path(tmp_path / "a" / "b", spec) for spec in CONFIG.dimensions
    }
    assert sorted(os.listdir(tmp_path / "a" / "b")) == ["d01-a.mmkd", "d02-b.mmkd"]
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(DataFileError, match="cannot create the directory") as caught:
        generate_dataset(tmp_path / "file", CONFIG)
    assert caught.value.path == tmp_path / "file"


def test_progress_is_reported(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    generate_dataset(tmp_path, CONFIG, progress=lambda done, total: seen.append((done, total)))
    total = CONFIG.dimensions_size
    assert seen == [(LAYER * n, total) for n in range(1, 6)]


def test_the_default_dataset(tmp_path: Path) -> None:
    paths = generate_dataset(tmp_path)
    config = MemoryConfig()
    assert [p.name for _, p in sorted(paths.items())] == [
        dimension_filename(spec) for spec in config.dimensions
    ]
    digest = hashlib.sha256()
    for spec in config.dimensions:
        load(paths[spec.id], spec, config.layer_size)
        digest.update(paths[spec.id].read_bytes())
    assert sum(p.stat().st_size for p in paths.values()) == 148 * MiB + 14 * PAYLOAD_ALIGNMENT
    assert digest.hexdigest() == "1d326577f298a71e94346111fb36f522bb13276cc5fd7c511bdcd9dcaecaba46"


# -- atomic writes ----------------------------------------------------------------------


def test_a_failed_fsync_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    final = tmp_path / "a.mmkd"
    write_dimension(final, A, LAYER, bytes(A.size))
    before = final.read_bytes()

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(DataFileError, match="write failed: Input/output error") as caught:
        write_dimension(final, A, LAYER, os.urandom(A.size))
    assert caught.value.path == final
    assert final.read_bytes() == before
    assert os.listdir(tmp_path) == ["a.mmkd"]


def test_a_failed_rename_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(source: object, target: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(DataFileError, match="Permission denied"):
        write_dimension(tmp_path / "a.mmkd", A, LAYER, bytes(A.size))
    assert os.listdir(tmp_path) == []


def test_bad_data_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="10 bytes"):
        write_dimension(tmp_path / "a.mmkd", A, LAYER, bytes(10))
    with pytest.raises(ValueError, match="2 layers given"):
        write_layers(tmp_path / "a.mmkd", A, LAYER, [bytes(LAYER)] * 2)
    with pytest.raises(ValueError, match="more than"):
        write_layers(tmp_path / "a.mmkd", A, LAYER, [bytes(LAYER)] * 4)
    with pytest.raises(ValueError, match="expected"):
        write_layers(tmp_path / "a.mmkd", A, LAYER, [bytes(LAYER), bytes(5)])
    with pytest.raises(ValueError, match="layers of"):
        write_dimension(tmp_path / "a.mmkd", A, 5000, bytes(A.size))
    assert os.listdir(tmp_path) == []


def test_writing_into_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="cannot create a temporary file"):
        write_dimension(tmp_path / "no" / "a.mmkd", A, LAYER, bytes(A.size))


def test_an_interrupted_generation_leaves_only_whole_files(tmp_path: Path) -> None:
    def interrupt(done: int, total: int) -> None:
        if done == 4 * LAYER:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_dataset(tmp_path, CONFIG, progress=interrupt)
    assert os.listdir(tmp_path) == ["d01-a.mmkd"]
    assert inspect_file(tmp_path / "d01-a.mmkd").ok


def test_a_failing_disk_stops_generation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(DataFileError, match="No space left on device") as caught:
        generate_dataset(tmp_path, CONFIG)
    assert caught.value.path == tmp_path / "d01-a.mmkd"
    assert os.listdir(tmp_path) == []


# -- damage -----------------------------------------------------------------------------


def damage(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    if how == "truncated":
        del raw[-1]
    elif how == "truncated into the header":
        del raw[100:]
    elif how == "truncated into the table":
        del raw[118:]
    elif how == "truncated into the padding":
        del raw[4096:]
    elif how == "extended":
        raw += b"\0\0\0"
    elif how == "bit in the name":
        raw[20] ^= 0x04
    elif how == "bit in the table":
        raw[113] ^= 0x01
    elif how == "bit in the header checksum":
        raw[HEADER_END - 1] ^= 0x80
    elif how == "bit in the payload":
        raw[PAYLOAD_ALIGNMENT + LAYER + 7] ^= 0x80
    elif how == "padding":
        raw[PAYLOAD_ALIGNMENT - 1] = 1
    elif how == "garbage":
        raw = bytearray(b"\x89PNG\r\n\x1a\n" + os.urandom(len(raw) - 8))
    elif how == "empty":
        raw = bytearray()
    elif how == "short garbage":
        raw = bytearray(b"hello")
    elif how == "newer version":
        raw[8:10] = struct.pack("<H", FORMAT_VERSION + 1)
    elif how == "absurd layer count":
        raw[100:104] = struct.pack("<I", 1 << 31)
    else:  # pragma: no cover
        raise AssertionError(how)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("how", "problem"),
    [
        ("truncated", f"truncated: {FILE_SIZE - 1} bytes, expected {FILE_SIZE}"),
        ("truncated into the header", "truncated: 100 bytes, too short for a header"),
        ("truncated into the table", f"truncated: 118 bytes, shorter than its {HEADER_END}-byte"),
        ("truncated into the padding", f"truncated: 4096 bytes, expected {FILE_SIZE}"),
        ("extended", "3 trailing bytes after the payload"),
        ("bit in the name", "header checksum mismatch: stored 0x"),
        ("bit in the table", "header checksum mismatch"),
        ("bit in the header checksum", "header checksum mismatch"),
        ("bit in the payload", "layer 1 checksum mismatch: stored 0x"),
        ("padding", f"non-zero byte at offset {PAYLOAD_ALIGNMENT - 1}"),
        ("garbage", r"not an mmkit data file (starts with b'\x89PNG\r\n\x1a\n')"),
        ("empty", "truncated: 0 bytes, too short for a header"),
        ("short garbage", "not an mmkit data file (starts with b'hello')"),
        ("newer version", f"format version {FORMAT_VERSION + 1}; this mmkit reads 1"),
        ("absurd layer count", "corrupt header: 2147483648 layers"),
    ],
)
def test_damage_is_named(a_file: Path, how: str, problem: str) -> None:
    damage(a_file, how)
    assert problem in problem_of(a_file)
    report = inspect_file(a_file)
    assert not report.ok and problem in report.verdict
    assert report.verdict == problem_of(a_file)


def test_inspection_of_a_damaged_payload_shows_every_layer(a_file: Path) -> None:
    raw = bytearray(a_file.read_bytes())
    raw[PAYLOAD_ALIGNMENT + 5] ^= 1
    raw[PAYLOAD_ALIGNMENT + 2 * LAYER] ^= 1
    a_file.write_bytes(bytes(raw))
    report = inspect_file(a_file)
    assert [c.ok for c in report.layers] == [False, True, False]
    assert report.verdict.startswith("layer 0 checksum mismatch")
    assert report.render().count("MISMATCH") == 2


def test_inspection_of_a_truncated_file_shows_the_header(a_file: Path) -> None:
    with open(a_file, "r+b") as file:
        file.truncate(PAYLOAD_ALIGNMENT + LAYER + 10)
    report = inspect_file(a_file)
    assert report.header is not None and report.header.dimension == 1
    assert [c.computed is not None for c in report.layers] == [True, False, False]
    assert [c.ok for c in report.layers] == [True, False, False]
    assert report.verdict.startswith("truncated: ")
    assert "missing" in report.render()


def test_a_huge_claimed_layer_is_not_allocated(tmp_path: Path) -> None:
    layer = 1 << 50
    path = tmp_path / "huge.mmkd"
    header = encode_header(DimensionId(1), "A", 2 * layer, layer, [0, 0])
    path.write_bytes(header.ljust(PAYLOAD_ALIGNMENT, b"\0") + b"x" * 100)
    report = inspect_file(path)
    assert (
        report.verdict
        == f"truncated: {PAYLOAD_ALIGNMENT + 100} bytes, expected {PAYLOAD_ALIGNMENT + 2 * layer}"
    )
    assert [c.computed for c in report.layers] == [None, None]
    assert "truncated" in problem_of(path)


def test_a_checksummed_header_with_bad_fields(tmp_path: Path) -> None:
    def forged(**changes: int) -> Path:
        fields = dict(
            version=1, flags=0, length=124, dimension=1, size=A.size, layer_size=LAYER, count=3,
            offset=PAYLOAD_ALIGNMENT,
        )  # fmt: skip
        fields.update(changes)
        body = struct.pack(
            "<8sHHII64sQQIQ3I",
            MAGIC, fields["version"], fields["flags"], fields["length"], fields["dimension"],
            b"A", fields["size"], fields["layer_size"], fields["count"], fields["offset"], 0, 0, 0,
        )  # fmt: skip
        raw = body + struct.pack("<I", zlib.crc32(body))
        path = tmp_path / "forged.mmkd"
        path.write_bytes(raw.ljust(PAYLOAD_ALIGNMENT + A.size, b"\0"))
        return path

    assert "unknown flags 0x0002" in problem_of(forged(flags=2))
    assert "dimension id 0" in problem_of(forged(dimension=0))
    assert "3 layers of 4096 bytes are not" in problem_of(forged(size=5))
    assert "payload offset 4096, expected 65536" in problem_of(forged(offset=4096))
    assert "payload offset 131072, expected 65536" in problem_of(forged(offset=131072))
    assert "header length 128, expected 124" in problem_of(forged(length=128))
    assert "corrupt header: 0 layers" in problem_of(forged(count=0))
    assert "layer 0 checksum mismatch" in problem_of(forged())


def test_wrong_dimension_size_and_layer_size(files: dict[DimensionId, Path]) -> None:
    assert problem_of(files[DimensionId(2)], A) == "holds dimension D02, expected D01"
    same_id = DimensionSpec(2, "B", 3 * LAYER)
    assert problem_of(files[DimensionId(2)], same_id) == (
        f"holds {B.size} bytes for D02, expected {same_id.size}"
    )
    assert problem_of(files[DimensionId(1)], A, 3 * LAYER) == (
        f"has layers of {LAYER} bytes, expected {3 * LAYER}"
    )


def test_missing_file_and_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mmkd"
    assert problem_of(missing).startswith("cannot open: ")
    assert "No such file" in problem_of(missing) or "cannot find" in problem_of(missing)
    assert problem_of(tmp_path) == "is a directory"
    report = inspect_file(missing)
    assert not report.ok and report.header is None and report.verdict == problem_of(missing)
    assert inspect_file(tmp_path).verdict == "is a directory"


def test_bad_targets_are_programming_errors(a_file: Path) -> None:
    with pytest.raises(ValueError, match="expected"):
        read_dimension(a_file, A, LAYER, memoryview(bytearray(A.size - 1)))
    with pytest.raises(ValueError, match="writable"):
        read_dimension(a_file, A, LAYER, memoryview(bytes(A.size)))
    with pytest.raises(ValueError, match="contiguous"):
        read_dimension(a_file, A, LAYER, memoryview(bytearray(2 * A.size))[::2])


def test_a_failed_load_lets_go_of_the_target(a_file: Path) -> None:
    damage(a_file, "bit in the payload")
    target = bytearray(A.size)
    view = memoryview(target)
    with pytest.raises(DataFileError) as caught:
        read_dimension(a_file, A, LAYER, view)
    view.release()
    target.extend(b"x")  # BufferError if the live traceback still held a view of it
    assert caught.value.problem.startswith("layer 1 checksum mismatch")


def test_a_file_shrinking_during_the_load(a_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Shrinking(io.FileIO):
        def readinto(self, buffer: object) -> int | None:
            if self.tell() == PAYLOAD_ALIGNMENT + LAYER:
                os.truncate(a_file, self.tell() + 10)
            return super().readinto(buffer)  # type: ignore[arg-type]

    monkeypatch.setattr(io, "FileIO", Shrinking)
    assert problem_of(a_file) == "truncated while reading layer 1"


def test_truncating_a_loaded_file_cannot_hurt(a_file: Path) -> None:
    loaded = load(a_file)
    target = bytearray(loaded)
    os.truncate(a_file, 0)
    assert bytes(target) == loaded


# -- properties -------------------------------------------------------------------------

ORIGINAL = bytes(range(256)) * (A.size // 256)


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    directory = tmp_path_factory.mktemp("mutations")
    write_dimension(directory / "valid.mmkd", A, LAYER, ORIGINAL)
    return directory / "mutated.mmkd", (directory / "valid.mmkd").read_bytes()


def offsets(size: int) -> st.SearchStrategy[int]:
    """Any offset, with the header's few bytes as likely as the padding's and the payload's."""
    return st.one_of(
        st.integers(0, HEADER_END - 1),
        st.integers(HEADER_END, PAYLOAD_ALIGNMENT - 1),
        st.integers(PAYLOAD_ALIGNMENT, size - 1),
    )


@st.composite
def mutations(draw: st.DrawFn, raw: bytes) -> bytes:
    kind = draw(st.sampled_from(["set", "truncate", "extend"]))
    if kind == "set":
        offset = draw(offsets(len(raw)))
        value = draw(st.integers(0, 255).filter(lambda b: b != raw[offset]))
        return raw[:offset] + bytes([value]) + raw[offset + 1 :]
    if kind == "truncate":
        return raw[: draw(st.one_of(st.integers(0, len(raw) - 1), offsets(len(raw))))]
    return raw + draw(st.binary(min_size=1, max_size=100))


@given(data=st.data())
def test_any_mutation_is_rejected_cleanly(valid: tuple[Path, bytes], data: st.DataObject) -> None:
    path, raw = valid
    path.write_bytes(data.draw(mutations(raw)))
    try:
        load(path)
    except DataFileError as exc:
        problem = exc.problem
    else:
        raise AssertionError("a mutated file was accepted")
    report = inspect_file(path)
    assert not report.ok
    assert report.verdict == problem


def test_the_unmutated_file_is_accepted(valid: tuple[Path, bytes]) -> None:
    path, raw = valid
    path.write_bytes(raw)
    assert load(path) == ORIGINAL
    assert inspect_file(path).ok
