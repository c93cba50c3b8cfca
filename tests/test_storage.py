"""The data-file format: round trips, determinism, atomic writes and every kind of damage."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmkit import DataFileError, DimensionId, DimensionSpec, MemoryConfig, generate_dataset
from mmkit.platform import PAGE_SIZE
from mmkit.storage import (
    MAGIC,
    PAYLOAD_ALIGNMENT,
    dimension_filename,
    dimension_path,
    encode_header,
    inspect_file,
    read_dimension,
    write_dimension,
)

LAYER = PAGE_SIZE
CONFIG = MemoryConfig(
    limit=64 * LAYER,
    layer_size=LAYER,
    dimensions=(DimensionSpec(1, "Alpha One", 3 * LAYER), DimensionSpec(2, "B", 2 * LAYER)),
)
ALPHA, BETA = CONFIG.dimensions


def load(path: Path | str, spec: DimensionSpec = ALPHA) -> bytes:
    target = bytearray(spec.size)
    read_dimension(path, spec, LAYER, memoryview(target))
    return bytes(target)


@pytest.fixture
def files(tmp_path: Path) -> dict[DimensionId, Path]:
    return generate_dataset(tmp_path / "data", CONFIG, seed=3)


def test_names() -> None:
    assert dimension_filename(ALPHA) == "d01-alpha-one.mmkd"
    assert dimension_path("x", BETA) == Path("x/d02-b.mmkd")


def test_round_trip(tmp_path: Path) -> None:
    data = os.urandom(ALPHA.size)
    path = write_dimension(tmp_path / "a.mmkd", ALPHA, LAYER, data)
    assert load(path) == data
    raw = path.read_bytes()
    assert raw.startswith(MAGIC)
    assert len(raw) == PAYLOAD_ALIGNMENT + ALPHA.size
    assert raw[PAYLOAD_ALIGNMENT:] == data
    report = inspect_file(path)
    assert report.ok and report.verdict == "ok"
    assert report.header is not None and report.header.name == "Alpha One"
    assert [c.stored for c in report.layers] == [
        zlib.crc32(data[i * LAYER : (i + 1) * LAYER]) for i in range(3)
    ]
    assert "verdict         ok" in report.render()


def test_generation_is_deterministic_and_varied(tmp_path: Path) -> None:
    first = generate_dataset(tmp_path / "one", CONFIG, seed=1)
    second = generate_dataset(tmp_path / "two", CONFIG, seed=1)
    other = generate_dataset(tmp_path / "three", CONFIG, seed=2)
    for dimension, path in first.items():
        assert path.read_bytes() == second[dimension].read_bytes()
        assert path.read_bytes() != other[dimension].read_bytes()
        assert path.parent == tmp_path / "one"
    payload = load(first[DimensionId(1)])
    layers = {payload[i * LAYER : (i + 1) * LAYER] for i in range(3)}
    assert len(layers) == 3
    assert len(set(payload)) == 256
    assert max(payload.count(b) for b in range(256)) < 4 * len(payload) / 256
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == [
        "d01-alpha-one.mmkd",
        "d02-b.mmkd",
    ]


def test_progress_is_reported(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    generate_dataset(tmp_path, CONFIG, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (CONFIG.dimensions_size, CONFIG.dimensions_size)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_a_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    final = tmp_path / "a.mmkd"
    write_dimension(final, ALPHA, LAYER, bytes(ALPHA.size))
    before = final.read_bytes()

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(DataFileError, match="write failed"):
        write_dimension(final, ALPHA, LAYER, os.urandom(ALPHA.size))
    monkeypatch.undo()
    with pytest.raises(ValueError, match="bytes"):
        write_dimension(final, ALPHA, LAYER, bytes(10))
    assert final.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.mmkd"]


def damaged(path: Path, how: str) -> Path:
    raw = bytearray(path.read_bytes())
    if how == "truncated":
        del raw[-1]
    elif how == "extended":
        raw += b"\0"
    elif how == "header bit":
        raw[20] ^= 0x04
    elif how == "payload bit":
        raw[PAYLOAD_ALIGNMENT + LAYER + 7] ^= 0x80
    elif how == "padding":
        raw[PAYLOAD_ALIGNMENT - 1] = 1
    elif how == "garbage":
        raw = bytearray(os.urandom(len(raw)))
    elif how == "empty":
        raw = bytearray()
    elif how == "magic":
        raw[0:8] = b"NOTMMKIT"
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize(
    ("how", "problem"),
    [
        ("truncated", "truncated"),
        ("extended", "1 trailing bytes"),
        ("header bit", "header checksum mismatch"),
        ("payload bit", "layer 1 checksum mismatch"),
        ("padding", "between header and payload"),
        ("garbage", "not an mmkit data file"),
        ("empty", "truncated: 0 bytes"),
        ("magic", "not an mmkit data file"),
    ],
)
def test_damage_is_named(files: dict[DimensionId, Path], how: str, problem: str) -> None:
    path = damaged(files[DimensionId(1)], how)
    with pytest.raises(DataFileError) as caught:
        load(path)
    assert problem in str(caught.value)
    assert str(path) in str(caught.value)
    report = inspect_file(path)
    assert not report.ok and problem in report.verdict


def test_wrong_dimension_and_layer_size(files: dict[DimensionId, Path]) -> None:
    with pytest.raises(DataFileError, match="holds dimension D02, expected D01"):
        load(files[DimensionId(2)], ALPHA)
    target = memoryview(bytearray(ALPHA.size))
    with pytest.raises(DataFileError, match="layers of"):
        read_dimension(files[DimensionId(1)], ALPHA, 3 * LAYER, target)


def test_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="cannot open") as caught:
        load(tmp_path / "nope.mmkd")
    assert "nope.mmkd" in str(caught.value)
    with pytest.raises(DataFileError, match="cannot open"):
        load(tmp_path)
    assert not inspect_file(tmp_path / "nope.mmkd").ok


def test_header_rejects_a_long_name() -> None:
    with pytest.raises(ValueError, match="at most 64"):
        encode_header(DimensionId(1), "x" * 65, LAYER, LAYER, [0])


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_mutation_is_rejected_cleanly(tmp_path: Path, data: st.DataObject) -> None:
    path = tmp_path / "m.mmkd"
    if not path.exists():
        write_dimension(path, ALPHA, LAYER, bytes(range(256)) * (ALPHA.size // 256))
    original = path.read_bytes()
    kind = data.draw(st.sampled_from(["set", "truncate", "extend"]))
    raw = bytearray(original)
    if kind == "set":
        offset = data.draw(st.integers(0, len(raw) - 1))
        raw[offset] = data.draw(st.integers(0, 255).filter(lambda b: b != original[offset]))
    elif kind == "truncate":
        del raw[data.draw(st.integers(0, len(raw) - 1)) :]
    else:
        raw += data.draw(st.binary(min_size=1, max_size=64))
    mutated = tmp_path / "mutated.mmkd"
    mutated.write_bytes(bytes(raw))
    with pytest.raises(DataFileError):
        load(mutated)
    assert not inspect_file(mutated).ok
