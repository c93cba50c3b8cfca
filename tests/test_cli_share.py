"""``mmkit demo --workers N`` and ``mmkit bench share``: processes sharing one loaded dataset.

The demo and the bench read PSS from ``/proc`` and attach through ``/proc/<pid>/fd``, so
they run on Linux only; each child has a timeout below the test's own.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import mmkit
from mmkit.cli import main
from tests import markers

ROOT = Path(__file__).resolve().parent.parent
SECONDS = 90


def run(*args: str, cache: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``ARGS`` in a child interpreter (a command line: ``-m mmkit …`` or a script and its own)."""
    env = dict(os.environ)
    if cache is not None:
        env["MMKIT_CACHE"] = str(cache)
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=SECONDS,
        cwd=ROOT,
        env=env,
        check=False,
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache directory that already holds the default dataset, as after a first demo."""
    directory = tmp_path_factory.mktemp("cache")
    mmkit.generate_dataset(directory / "dataset-seed0")
    return directory


def cells(line: str) -> list[str]:
    """A table line's cells: columns are at least two spaces apart."""
    return re.split(r"\s{2,}", line.strip())


def mib(cell: str) -> float:
    value, unit = cell.split()
    return float(value) * {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024}[unit]


@markers.procfs
def test_two_workers_share_the_dataset_and_hold_less_than_copies(cache: Path) -> None:
    result = run("-m", "mmkit", "demo", "--workers", "2", cache=cache)
    assert result.returncode == 0, result.stderr
    rows = {row[0]: row for row in map(cells, result.stdout.splitlines())}
    assert "creating" not in result.stdout and "n/a" not in result.stdout
    assert [name for name in rows if name.startswith("worker")] == ["worker 1", "worker 2"]
    for name in ("worker 1", "worker 2"):
        assert rows[name][4:6] == ["148", "0"], rows[name]  # layers checked, mismatches
    total, copies = mib(rows["total"][-1]), mib(rows["3 private copies (estimate)"][-1])
    assert copies == 3 * 148.0
    assert 148 <= total < copies
    assert rows["saving"][-1].endswith("%)")


def test_a_bad_worker_count_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("0", "65", "two"):
        with pytest.raises(SystemExit) as caught:
            main(["demo", "--workers", bad])
        assert caught.value.code == 2
        err = capsys.readouterr().err
        assert f"argument --workers: must be a whole number from 1 to 64, not '{bad}'" in err


# The demo with ``attach`` replaced, in the owner and, since spawn imports the main script
# again as ``__mp_main__``, in every worker.
FAILING_DEMO = """
import sys, time
from mmkit import AttachError, cli
from mmkit.cli import shared_demo

def refuse(handle):
    raise AttachError("refused by the test")

def hang(handle):
    time.sleep(60)

def announce_and_hang(handle):
    print("worker attaching", flush=True)
    hang(handle)

shared_demo.WORKER_SECONDS = 5
shared_demo.attach = {attach}
if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
"""


@markers.procfs
@pytest.mark.parametrize(
    ("attach", "expected"),
    [
        ("refuse", "failed while attaching and verifying: AttachError: refused by the test"),
        ("hang", "2 of 2 workers did not finish attaching and verifying within 5 s"),
    ],
)
def test_a_worker_that_fails_or_hangs_ends_the_demo_with_one_line(
    cache: Path, tmp_path: Path, attach: str, expected: str
) -> None:
    script = tmp_path / "demo.py"
    script.write_text(textwrap.dedent(FAILING_DEMO.format(attach=attach)))
    result = run(str(script), "demo", "--workers", "2", cache=cache)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith("mmkit: error: "), result.stderr
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@markers.procfs
def test_ctrl_c_stops_the_workers_and_prints_one_line(cache: Path, tmp_path: Path) -> None:
    script = tmp_path / "demo.py"
    script.write_text(textwrap.dedent(FAILING_DEMO.format(attach="announce_and_hang")))
    child = subprocess.Popen(
        [sys.executable, str(script), "demo", "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "MMKIT_CACHE": str(cache)},
        start_new_session=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "worker attaching\n"
        os.killpg(child.pid, signal.SIGINT)  # as Ctrl-C at a terminal: the whole group
        out, err = child.communicate(timeout=SECONDS)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == 130, out + err
    assert err == "mmkit: interrupted\n"  # and no worker's traceback


@markers.procfs
def test_bench_share_prints_its_tables() -> None:
    result = run("-m", "mmkit", "bench", "share", "--quick", "--repeat", "1", "--workers-max", "1")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for text in ("attach vs SharedMemory(name) open, p50", "reader access_layer vs memoryview",
                 "owner access_layer", "publish → visible", "seen − update_layer returned",
                 "an idle spawned worker"):  # fmt: skip
        assert text in out, text
    peers = [row[1] for row in map(cells, out.splitlines()) if row[0] == "1"]
    assert peers[:3] == ["mmkit shared", "shared_memory", "private copies"]
    assert peers[3:] == ([] if "lmdb: skipped" in out else ["lmdb"])
