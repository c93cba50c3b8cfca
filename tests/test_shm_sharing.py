"""macOS's sharing backend (``shm_open``, a socket, ``ByteLocks``) run on Linux as well.

Linux has every call it makes, so the sharing suites run again in a child with
``MMKIT_SHARING=shm``: spawned, forked and unrelated readers, kills, faults, the model. On
macOS the suites run on this backend directly.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

SUITES = ["test_sharing.py", "test_sharing_attacks.py", "test_sharing_faults.py"]
SUITES += ["test_sharing_model.py", "test_bytelocks.py", "test_shm_attacks.py"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="macOS runs it directly")
@pytest.mark.timeout(900)
def test_the_sharing_suites_pass_on_the_macos_backend() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x"]
        + [f"tests/{suite}" for suite in SUITES],
        cwd=ROOT,
        env={**os.environ, "MMKIT_SHARING": "shm"},
        capture_output=True,
        text=True,
        timeout=850,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout.splitlines()[-1]
    assert "about Linux's sharing backend" in result.stdout  # memfd's own tests were skipped
