"""Ctrl-C during ``mmkit demo``: one line, no traceback, exit 130."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import mmkit
from tests import markers

ROOT = Path(__file__).resolve().parent.parent

# The demo, with each reader thread holding at its first read until SIGINT has arrived, so
# the signal lands while the readers are running, however fast or slow the machine is.
DEMO_WITH_READERS_HELD = textwrap.dedent(
    """
    import signal, sys, threading
    from mmkit import cli

    interrupted = threading.Event()
    first = threading.Lock()

    def on_sigint(signum, frame):
        interrupted.set()
        signal.default_int_handler(signum, frame)

    signal.signal(signal.SIGINT, on_sigint)
    access_layer = cli.MmapManager.access_layer

    def held(self, layer):
        if threading.current_thread() is not threading.main_thread() and not interrupted.is_set():
            if first.acquire(blocking=False):
                print("reader running", flush=True)
            interrupted.wait()
        return access_layer(self, layer)

    cli.MmapManager.access_layer = held
    sys.exit(cli.main(sys.argv[1:]))
    """
)


@markers.posix_signals
def test_ctrl_c_while_the_readers_run_prints_one_line(tmp_path: Path) -> None:
    mmkit.generate_dataset(tmp_path)
    child = subprocess.Popen(
        [sys.executable, "-c", DEMO_WITH_READERS_HELD, "demo", "--data", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "reader running\n"
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 130, out + err
    assert err == "mmkit: interrupted\n"
    assert "Traceback" not in out
