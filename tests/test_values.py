"""Config, ids, units and the error tree."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given
from hypothesis import strategies as st

import mmkit
from mmkit import (
    DEFAULT_DIMENSIONS,
    ConfigError,
    DimensionId,
    DimensionSpec,
    InvalidId,
    LayerId,
    MemoryConfig,
    MiB,
    UnknownDimension,
)
from mmkit.platform import PAGE_SIZE, PlatformError
from mmkit.values.errors import OutOfMemory, SystemCallFailed, from_os_error
from mmkit.values.units import format_size

SPEC_TABLE = [
    ("Emotion", 16), ("Cognition", 16), ("Intention", 16), ("Social", 8), ("Temporal", 8),
    ("Philosophy", 16), ("Technical", 12), ("Creative", 8), ("Ethical", 12), ("Meta", 8),
    ("Ecological", 8), ("Positivity", 8), ("Balance", 8), ("Security", 4),
]  # fmt: skip


def test_defaults_are_the_spec() -> None:
    cfg = MemoryConfig()
    assert mmkit.MiB == 1 << 20
    assert cfg.limit == 280 * MiB
    assert cfg.layer_size == 1 * MiB
    assert cfg.data_dir is None
    assert cfg.resident_limit is None
    assert [(d.name, d.size // MiB) for d in cfg.dimensions] == SPEC_TABLE
    assert [int(d.id) for d in cfg.dimensions] == list(range(1, 15))
    assert cfg.dimensions_size == 148 * MiB
    assert cfg.pool_size == 132 * MiB
    assert cfg.user_quota == 32 * MiB
    assert cfg.layer_count(1) == 16
    assert cfg.layer_count(14) == 4
    assert cfg.dimensions == DEFAULT_DIMENSIONS


def test_config_is_frozen_and_hashable() -> None:
    cfg = MemoryConfig()
    with pytest.raises(AttributeError):
        cfg.limit = 1  # type: ignore[misc]
    assert hash(cfg) == hash(MemoryConfig())
    assert cfg == MemoryConfig()


def test_data_dir_becomes_a_path(tmp_path: object) -> None:
    cfg = MemoryConfig(data_dir=str(tmp_path))
    assert cfg.data_dir is not None
    assert str(cfg.data_dir) == str(tmp_path)


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"limit": 100 * MiB}, ["fit in the limit", str(148 * MiB), str(100 * MiB)]),
        ({"limit": 280 * MiB + 1}, ["limit", "page size", str(PAGE_SIZE)]),
        ({"limit": 0}, ["limit", "positive"]),
        ({"limit": "big"}, ["limit", "'big'"]),
        ({"limit": True}, ["limit"]),
        ({"layer_size": 3 * MiB}, ["layer_size must divide", "D01", "Emotion"]),
        ({"layer_size": 1000}, ["layer_size", "page size"]),
        ({"dimensions": ()}, ["non-empty"]),
        (
            {"dimensions": (DimensionSpec(1, "A", MiB), DimensionSpec(1, "B", MiB))},
            ["unique", "D01"],
        ),
        (
            {"dimensions": (DimensionSpec(1, "A", MiB), DimensionSpec(2, "a", MiB))},
            ["names", "'a'"],
        ),
        ({"dimensions": (DimensionSpec(1, "", MiB),)}, ["name"]),
        ({"dimensions": (DimensionSpec(1, "A", 0),)}, ["size of dimension D01", "positive"]),
        ({"dimensions": ("D01",)}, ["DimensionSpec"]),
        ({"resident_limit": -5}, ["resident_limit", "positive"]),
        ({"user_quota": -1}, ["user_quota"]),
        ({"data_dir": 42}, ["data_dir"]),
        ({"prefault": "yes"}, ["prefault"]),
    ],
)
def test_impossible_configs_name_the_rule_and_values(
    overrides: dict[str, object], words: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        MemoryConfig(**overrides)  # type: ignore[arg-type]
    for word in words:
        assert word in str(caught.value)
    assert isinstance(caught.value, ValueError)


@given(
    sizes=st.lists(st.integers(1, 8), min_size=1, max_size=6),
    layer_pages=st.integers(1, 3),
    spare_pages=st.integers(-4, 8),
)
def test_config_accepts_exactly_the_possible(
    sizes: list[int], layer_pages: int, spare_pages: int
) -> None:
    layer = layer_pages * PAGE_SIZE
    dims = tuple(DimensionSpec(i + 1, f"d{i}", n * PAGE_SIZE) for i, n in enumerate(sizes))
    total = sum(d.size for d in dims)
    limit = total + spare_pages * PAGE_SIZE
    possible = limit > 0 and limit >= total and all(d.size % layer == 0 for d in dims)
    if possible:
        cfg = MemoryConfig(limit=limit, layer_size=layer, dimensions=dims)
        assert cfg.pool_size == limit - total
        assert sum(cfg.layer_count(d.id) for d in dims) * layer == total
    else:
        with pytest.raises(ConfigError):
            MemoryConfig(limit=limit, layer_size=layer, dimensions=dims)


def test_dimensions_are_kept_in_id_order() -> None:
    dims = (DimensionSpec(2, "B", MiB), DimensionSpec(1, "A", MiB))
    cfg = MemoryConfig(limit=4 * MiB, dimensions=dims)
    assert [int(d.id) for d in cfg.dimensions] == [1, 2]


def test_unknown_dimension_lists_the_known() -> None:
    with pytest.raises(UnknownDimension, match=r"D15.*D01"):
        MemoryConfig().dimension(15)


def test_dimension_id() -> None:
    d = DimensionId(3)
    assert d == 3 and hash(d) == hash(3)
    assert str(d) == "D03" and repr(d) == "DimensionId(3)"
    assert DimensionId(d) is d
    for bad in (0, -1, True, "1", 1.5, None):
        with pytest.raises(InvalidId):
            DimensionId(bad)


def test_layer_id() -> None:
    layer = LayerId(1, 2)
    assert isinstance(layer.dimension, DimensionId)
    assert layer == LayerId(DimensionId(1), 2)
    assert hash(layer) == hash(LayerId(1, 2))
    assert str(layer) == "D01/L02"
    with pytest.raises(AttributeError):
        layer.index = 3  # type: ignore[misc]
    for bad in ((0, 0), (1, -1), (1, "0"), ("x", 0)):
        with pytest.raises(InvalidId):
            LayerId(*bad)


def test_error_tree() -> None:
    for name in ("LimitExceeded", "AlreadyLoaded", "NotLoaded", "InvalidState", "ConfigError"):
        assert issubclass(getattr(mmkit, name), mmkit.MmkitError)
    assert issubclass(mmkit.LimitExceeded, MemoryError)
    assert issubclass(mmkit.OutOfMemory, MemoryError)


def test_os_errors_become_mmkit_errors() -> None:
    exhausted = PlatformError("mmap", "0x0, 4096", errno.ENOMEM, "no", exhausted=True)
    error = from_os_error(exhausted, "reserving")
    assert isinstance(error, OutOfMemory)
    assert "reserving" in str(error) and "mmap(0x0, 4096)" in str(error)
    assert error.__cause__ is exhausted
    misuse = PlatformError("mprotect", "0x1000", errno.EINVAL, "bad", exhausted=False)
    assert isinstance(from_os_error(misuse, "x"), SystemCallFailed)
    assert isinstance(from_os_error(OSError(errno.EAGAIN, "again"), "x"), OutOfMemory)


def test_format_size() -> None:
    assert format_size(3 * MiB) == "3.0 MiB"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(12) == "12 B"
    assert format_size(5 << 30) == "5.0 GiB"
