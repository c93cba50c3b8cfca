"""The CLI writes the default dataset only where there is nothing: users' files stay as they are."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

import mmkit
from tests.test_cli import mmkit as run_mmkit

COMMANDS = [pytest.param(("query", "feel"), id="query"), pytest.param(("demo",), id="demo")]


def snapshot(directory: Path) -> dict[str, str]:
    """Every file in ``directory`` by name, with a digest of its bytes."""
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.iterdir())
    }


def assert_refused(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stdout + result.stderr
    assert len(lines) == 1 and lines[0].startswith("mmkit: error:"), result.stderr
    assert "creating" not in result.stdout + result.stderr
    for text in expected:
        assert text in lines[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_partial_dataset_is_refused_and_left_byte_for_byte(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    mine = tmp_path / "mine"
    mmkit.generate_dataset(mine, seed=7)
    (mine / "d03-intention.mmkd").unlink()
    before = snapshot(mine)
    result = run_mmkit(*command, "--data", str(mine))
    assert_refused(result, "d03-intention.mmkd", "13 of 14", "mmkit generate")
    assert snapshot(mine) == before


@pytest.mark.parametrize("command", COMMANDS)
def test_a_partial_dataset_in_the_cache_is_refused_too(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    cached = tmp_path / "cache" / "dataset-seed0"
    mmkit.generate_dataset(cached, seed=7)
    for name in ("d01-emotion.mmkd", "d02-cognition.mmkd", "d04-social.mmkd", "d14-security.mmkd"):
        (cached / name).unlink()
    before = snapshot(cached)
    result = run_mmkit(*command, cache=tmp_path / "cache")
    assert_refused(result, "d01-emotion.mmkd", "and 1 more", str(cached))
    assert snapshot(cached) == before


def test_a_directory_of_other_files_is_not_written_into(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine\n")
    result = run_mmkit("query", "feel", "--data", str(tmp_path))
    assert_refused(result, "no dataset", "mmkit generate")
    assert snapshot(tmp_path) == {"notes.txt": hashlib.sha256(b"mine\n").hexdigest()}


def test_a_complete_dataset_is_used_as_it_is(tmp_path: Path) -> None:
    mmkit.generate_dataset(tmp_path, seed=7)
    before = snapshot(tmp_path)
    result = run_mmkit("query", "feel", "--data", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "creating" not in result.stderr
    assert snapshot(tmp_path) == before


def test_an_empty_directory_gets_the_default_dataset(tmp_path: Path) -> None:
    result = run_mmkit("query", "feel", "--data", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "creating the default dataset" in result.stderr
    assert len(list(tmp_path.glob("*.mmkd"))) == 14
