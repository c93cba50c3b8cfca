"""Values the configuration accepts but a data file cannot hold, and text shown from a file.

Each is refused with an ``MmkitError`` before anything is created on disk; an inspection
report shows a crafted name or path escaped, never as terminal control sequences.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mmkit import (
    DimensionId,
    DimensionSpec,
    InvalidArgument,
    MemoryConfig,
    MmapManager,
    MmkitError,
    NotABuffer,
    generate_dataset,
)
from mmkit.platform import PAGE_SIZE
from mmkit.storage import (
    MAX_LAYERS,
    encode_header,
    inspect_file,
    read_dimension,
    write_dimension,
    write_layers,
)

LAYER = PAGE_SIZE
A = DimensionSpec(1, "A", 2 * LAYER)
CONFIG = MemoryConfig(limit=16 * LAYER, layer_size=LAYER, dimensions=(A,))


def untouched(layers: int) -> object:
    """Layers that fail the test if anyone asks for them."""
    for _ in range(layers):
        raise AssertionError("a layer was read before the arguments were checked")
        yield b""  # pragma: no cover


# -- F24: what the format cannot hold ----------------------------------------------------


def test_a_dimension_id_past_u32_is_refused_up_front(tmp_path: Path) -> None:
    spec = DimensionSpec(2**32, "X", LAYER)
    with pytest.raises(InvalidArgument, match="u32"):
        write_dimension(tmp_path / "x.mmkd", spec, LAYER, bytes(LAYER))
    with pytest.raises(InvalidArgument, match="u32"):
        write_layers(tmp_path / "x.mmkd", spec, LAYER, untouched(1))  # type: ignore[arg-type]
    config = MemoryConfig(limit=16 * LAYER, layer_size=LAYER, dimensions=(A, spec))
    with pytest.raises(InvalidArgument, match="u32"):
        generate_dataset(tmp_path / "data", config)
    assert os.listdir(tmp_path) == []
    with MmapManager(config) as manager:
        manager.load_dimension(2**32, bytes(LAYER))
        with pytest.raises(InvalidArgument, match="u32"):
            manager.save_dimension(2**32, tmp_path / "x.mmkd")
    assert os.listdir(tmp_path) == []


def test_the_largest_dimension_id_round_trips(tmp_path: Path) -> None:
    spec = DimensionSpec(2**32 - 1, "X", LAYER)
    header = write_dimension(tmp_path / "x.mmkd", spec, LAYER, b"\7" * LAYER)
    target = bytearray(LAYER)
    assert read_dimension(tmp_path / "x.mmkd", spec, LAYER, memoryview(target)) == header
    assert target == b"\7" * LAYER


def test_more_layers_than_a_file_holds_are_refused_up_front(tmp_path: Path) -> None:
    tiny = DimensionSpec(1, "Tiny", MAX_LAYERS + 1)
    with pytest.raises(InvalidArgument, match=f"at most {MAX_LAYERS}"):
        write_dimension(tmp_path / "t.mmkd", tiny, 1, bytes(MAX_LAYERS + 1))
    big = DimensionSpec(1, "Big", (MAX_LAYERS + 1) * LAYER)
    with pytest.raises(InvalidArgument, match=f"at most {MAX_LAYERS}"):
        write_layers(tmp_path / "b.mmkd", big, LAYER, untouched(MAX_LAYERS + 1))  # type: ignore[arg-type]
    config = MemoryConfig(limit=big.size, layer_size=LAYER, dimensions=(big,))
    with pytest.raises(InvalidArgument, match=f"at most {MAX_LAYERS}"):
        generate_dataset(tmp_path / "data", config)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "seed",
    [1.5, "7", None, 10**5000, -1, 2**64, True],
    ids=["float", "str", "None", "10**5000", "-1", "2**64", "True"],
)
def test_seeds_must_be_ints_in_u64(tmp_path: Path, seed: object) -> None:
    with pytest.raises(InvalidArgument, match="seed must be"):
        generate_dataset(tmp_path / "data", CONFIG, seed=seed)  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


def test_the_largest_seed_is_fine(tmp_path: Path) -> None:
    paths = generate_dataset(tmp_path / "data", CONFIG, seed=2**64 - 1)
    assert inspect_file(paths[DimensionId(1)]).ok


@pytest.mark.parametrize("config", [{}, "config", 0, MemoryConfig])
def test_generation_needs_a_memory_config(tmp_path: Path, config: object) -> None:
    with pytest.raises(InvalidArgument, match="MemoryConfig"):
        generate_dataset(tmp_path / "data", config)  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


def test_check_savable() -> None:
    from mmkit.storage import check_savable

    check_savable(A, LAYER)
    check_savable(DimensionSpec(2**32 - 1, "X", MAX_LAYERS), 1)
    for spec, layer_size in [
        (DimensionSpec(2**32, "X", LAYER), LAYER),
        (DimensionSpec(1, "X", MAX_LAYERS + 1), 1),
        (A, 3 * LAYER),
        (A, 0),
        (A, True),
        (DimensionSpec(1, "X", 0), LAYER),
        (DimensionSpec(1, "X", 2**64), 2**63),
    ]:
        with pytest.raises(InvalidArgument):
            check_savable(spec, layer_size)


def test_writing_wrong_things_raises_mmkit_errors(tmp_path: Path) -> None:
    with pytest.raises(NotABuffer):
        write_dimension(tmp_path / "a.mmkd", A, LAYER, 12)  # type: ignore[arg-type]
    with pytest.raises(NotABuffer):
        write_layers(tmp_path / "a.mmkd", A, LAYER, [bytes(LAYER), 5])  # type: ignore[list-item]
    with pytest.raises(InvalidArgument):
        write_dimension(tmp_path / "a.mmkd", A, LAYER, bytes(3))
    with pytest.raises(MmkitError):
        encode_header(DimensionId(2**32), "x", LAYER, LAYER, [0])
    assert os.listdir(tmp_path) == []


def test_a_name_with_a_lone_surrogate_is_stored_with_a_stand_in(tmp_path: Path) -> None:
    spec = DimensionSpec(1, "bad\udcffname", LAYER)
    header = write_dimension(tmp_path / "a.mmkd", spec, LAYER, bytes(LAYER))
    assert header.name == "bad?name"
    report = inspect_file(tmp_path / "a.mmkd")
    assert report.ok and report.header == header


# -- E15: inspect shows what a file says, escaped ----------------------------------------


def test_inspection_escapes_the_name_and_the_path(tmp_path: Path) -> None:
    spec = DimensionSpec(1, "A\x1b[2J\x1b]0;owned\x07\u202e", LAYER)
    path = tmp_path / "evil\x1b[31m\n.mmkd"
    write_dimension(path, spec, LAYER, bytes(LAYER))
    text = inspect_file(path).render()
    assert not any(char in text for char in "\x1b\x07\u202e")
    assert "(A\\x1b[2J\\x1b]0;owned\\x07\\u202e)" in text
    assert "evil\\x1b[31m\\n.mmkd" in text
    assert len(text.splitlines()) == 8
    path.write_bytes(b"\x1b[2J")
    report = inspect_file(path)
    assert report.header is None and "\x1b" not in report.render()
