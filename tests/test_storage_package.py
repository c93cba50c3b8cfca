"""``mmkit.storage`` is a package of small modules, one job each, behind one public face."""

from __future__ import annotations

from pathlib import Path

from mmkit import storage

PUBLIC = [
    # the names of the single-module days, which callers import from mmkit.storage
    "dimension_filename",
    "dimension_path",
    "read_header",
    "read_dimension",
    "write_layers",
    "write_dimension",
    "generate_dataset",
    "inspect_file",
    "FileHeader",
    "Inspection",
    "LayerCheck",
    "MAGIC",
    "FORMAT_VERSION",
    "PAYLOAD_ALIGNMENT",
    "SUFFIX",
    "NAME_BYTES",
    "MAX_LAYERS",
    "Progress",
    "encode_header",
    # and the ones the manager needs to check a save up front and a file before reuse
    "read_header_file",
    "check_savable",
    "open_regular",
]


def test_storage_is_a_package_of_small_modules() -> None:
    assert hasattr(storage, "__path__"), "mmkit.storage is a single module"
    modules = sorted(Path(storage.__path__[0]).glob("*.py"))
    assert {m.stem for m in modules} >= {"format", "files", "reader", "writer", "dataset"}
    for module in modules:
        lines = len(module.read_text(encoding="utf-8").splitlines())
        assert lines <= 400, f"{module.name} has {lines} lines"


def test_the_public_names_are_exported() -> None:
    missing = [name for name in PUBLIC if name not in getattr(storage, "__all__", ())]
    assert missing == []
    for name in storage.__all__:
        assert getattr(storage, name) is not None
