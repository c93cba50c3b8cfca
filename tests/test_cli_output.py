"""What the CLI prints: never an encoding error, never a raw control character from a name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import mmkit
from mmkit import DimensionSpec, MemoryConfig
from mmkit.bench import machine
from mmkit.bench import main as bench_main
from mmkit.cli import main
from mmkit.storage import write_dimension

ROOT = Path(__file__).resolve().parent.parent
POSIX_ONLY = pytest.mark.skipif(
    sys.platform == "win32", reason="Windows file names cannot hold control characters"
)


def run(*args: str | bytes, encoding: str) -> subprocess.CompletedProcess[bytes]:
    """``python -m mmkit ARGS`` with its output encoded as ``encoding`` (strict)."""
    env = {**os.environ, "PYTHONIOENCODING": encoding}
    return subprocess.run(
        [sys.executable, "-m", "mmkit", *args],
        capture_output=True,
        timeout=300,
        cwd=ROOT,
        env=env,
        check=False,
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("output-data")
    mmkit.generate_dataset(directory)
    return directory


def strange_name() -> bytes:
    """A directory name with a terminal escape and, where the OS allows it, a non-UTF-8 byte."""
    return b"data-\x1b[2J-\xff" if sys.platform.startswith("linux") else b"data-\x1b[2J"


def assert_shown_escaped(output: bytes) -> None:
    assert b"\x1b" not in output
    assert b"\\x1b[2J" in output
    if sys.platform.startswith("linux"):
        assert b"\\udcff" in output


def test_a_character_the_terminal_cannot_encode_is_escaped(dataset: Path) -> None:
    result = run("query", "\N{GRINNING FACE} feel", "--data", str(dataset), encoding="latin-1")
    assert result.returncode == 0, result.stderr
    assert b"\\U0001f600 feel" in result.stdout
    assert b"Traceback" not in result.stderr


@POSIX_ONLY
def test_generate_prints_a_strange_directory_escaped(tmp_path: Path) -> None:
    target = os.fsencode(tmp_path) + b"/" + strange_name()
    result = run("generate", target, encoding="utf-8")
    assert result.returncode == 0, result.stderr
    assert_shown_escaped(result.stdout)
    assert len(list(Path(os.fsdecode(target)).glob("*.mmkd"))) == 14


@POSIX_ONLY
def test_an_error_about_a_strange_directory_is_one_escaped_line(tmp_path: Path) -> None:
    target = os.fsencode(tmp_path) + b"/" + strange_name()
    os.mkdir(target)
    Path(os.fsdecode(target), "notes.txt").write_text("mine\n")
    result = run("query", "feel", "--data", target, encoding="utf-8")
    assert result.returncode == 1
    assert result.stderr.startswith(b"mmkit: error:") and result.stderr.count(b"\n") == 1
    assert_shown_escaped(result.stderr)


def test_inspect_escapes_the_name_read_from_a_file(tmp_path: Path) -> None:
    config = MemoryConfig()
    crafted = DimensionSpec(1, "x\x1b[2J\nverdict         ok", config.layer_size)
    path = tmp_path / "crafted.mmkd"
    write_dimension(path, crafted, config.layer_size, bytes(crafted.size))
    result = run("inspect", str(path), encoding="utf-8")
    assert result.returncode == 0, result.stderr
    assert b"\x1b" not in result.stdout
    assert b"(x\\x1b[2J\\nverdict         ok)" in result.stdout
    assert result.stdout.count(b"verdict") == 2  # the forged one stays on the name's line


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out == f"mmkit {mmkit.__version__}\n"


def refuse_to_measure(settings: object) -> None:
    raise AssertionError("the benchmark started before checking --json")


@pytest.mark.parametrize("where", ["missing/report.json", "."])
def test_bench_checks_the_json_path_before_measuring(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(machine, "measure", refuse_to_measure)
    target = tmp_path / where
    assert bench_main(["--quick", "--json", str(target)]) == 2
    assert main(["bench", "--json", str(target)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("mmkit bench: error: --json") for line in err)
    assert not target.is_file()


def test_bench_with_a_bad_json_path_fails_at_once(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mmkit", "bench", "--json", str(tmp_path / "no" / "x.json")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("mmkit bench: error: --json") and "no such directory" in (
        result.stderr
    )
    assert "measuring" not in result.stderr


def test_bench_refuses_a_missing_beside_interpreter_at_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert bench_main(["threads", "--beside", "/no/such/python3.13t"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmkit bench: error: --beside") and "no such interpreter" in err
