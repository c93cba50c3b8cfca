"""The folder layout is the architecture: each module imports only from layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mmkit"

LAYERS = {
    "mmkit.platform": 0,
    "mmkit.values": 1,
    "mmkit.memory": 2,
    "mmkit.storage": 2,
    "mmkit.manager": 3,
    "mmkit.system": 4,
    "mmkit.bench": 5,
    "mmkit.cli": 6,
    "mmkit.__main__": 7,
    "mmkit": 7,
}


def layer_of(module: str) -> int:
    best = max(
        (name for name in LAYERS if module == name or module.startswith(name + ".")), key=len
    )
    return LAYERS[best]


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found.append((name, path))
    return found


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "mmkit":
            names.update(f"mmkit.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mmkit"):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("mmkit"))
    return names


@pytest.mark.parametrize(("name", "path"), modules(), ids=[m for m, _ in modules()])
def test_imports_go_down_only(name: str, path: Path) -> None:
    own = layer_of(name)
    for target in imported(path):
        same_package = target.split(".")[:2] == name.split(".")[:2]
        assert layer_of(target) < own or same_package, (
            f"{name} (layer {own}) imports {target} (layer {layer_of(target)})"
        )


def test_platform_checks_live_in_the_platform_package() -> None:
    for name, path in modules():
        if name.startswith("mmkit.platform"):
            continue
        text = path.read_text()
        for needle in ("sys.platform", "os.name", "platform.system"):
            assert needle not in text, f"{name} looks at {needle}"
