"""The command line, run as a user would: ``python -m mmkit …`` in a child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmkit.cli import main

ROOT = Path(__file__).resolve().parent.parent


def mmkit(*args: str, cache: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if cache is not None:
        env["MMKIT_CACHE"] = str(cache)
    return subprocess.run(
        [sys.executable, "-m", "mmkit", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
        check=False,
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("dataset")
    result = mmkit("generate", str(directory), "--seed", "0")
    assert result.returncode == 0, result.stderr
    assert "D14" in result.stdout and "MiB/s" in result.stdout
    return directory


def test_demo_on_a_fresh_machine(tmp_path: Path) -> None:
    result = mmkit("demo", cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "creating the default dataset" in out
    for word in ("Emotion", "Security", "loaded", "init", "load + verify", "p50", "p99"):
        assert word in out
    assert "0 mismatches" in out
    assert len(list((tmp_path / "cache" / "dataset-seed0").glob("*.mmkd"))) == 14
    again = mmkit("demo", cache=tmp_path / "cache")
    assert again.returncode == 0 and "creating" not in again.stdout


def test_inspect_a_good_file(dataset: Path) -> None:
    result = mmkit("inspect", str(dataset / "d14-security.mmkd"))
    assert result.returncode == 0
    assert "D14 (Security)" in result.stdout and "verdict         ok" in result.stdout


def test_inspect_a_damaged_file(dataset: Path, tmp_path: Path) -> None:
    raw = bytearray((dataset / "d14-security.mmkd").read_bytes())
    raw[-1] ^= 1
    bad = tmp_path / "bad.mmkd"
    bad.write_bytes(bytes(raw))
    result = mmkit("inspect", str(bad))
    assert result.returncode == 1
    assert "layer 3 checksum mismatch" in result.stdout and "MISMATCH" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("inspect", "/no/such/file.mmkd"),
        ("demo", "--data", "{file}"),  # a data directory that is a file
        ("generate", "{file}/x"),  # a directory that cannot be made, under a file
    ],
)
def test_user_errors_are_one_line(args: tuple[str, ...], tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("not a directory\n")
    result = mmkit(*(arg.format(file=file) for arg in args))
    assert result.returncode == 1
    if args[0] != "inspect":
        assert result.stderr.startswith("mmkit: error:")
        assert len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.stderr


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["frobnicate"])
    assert caught.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_bench_prints_every_case_as_a_ratio(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    result = mmkit("bench", "--quick", "--repeat", "1", "--json", str(report))
    assert result.returncode == 0, result.stderr
    for row in ("access_layer vs memoryview slice", "pool allocate(4096)+free", "scan 16 MiB",
                "load+verify 14 dims", "128 queries: p99", "memcpy", "page fault",
                "scaling with the budget", "threads: access_layer calls per second",
                "bookkeeping"):  # fmt: skip
        assert row in result.stdout, row
    rows = json.loads(report.read_text())["rows"]
    assert all(row["mmkit_ns"] > 0 for row in rows)
