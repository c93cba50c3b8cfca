"""The interpreter the suite runs on: on a free-threaded build the GIL must stay off.

An extension module that does not declare it can run without the GIL (``Py_mod_gil``) makes
a free-threaded CPython turn the GIL back on when it is imported, with only a warning; the
suite would then pass while testing nothing about free threading. ``tox -e py313t`` sets
``PYTHON_GIL=0``, which forces the GIL off regardless, so the check runs in a child without
it: there, importing such a module does re-enable the GIL, and the test names the module.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig

import pytest

from tests.conftest import ROOT

FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))

needs_free_threading = pytest.mark.skipif(
    not FREE_THREADED, reason="a GIL build of CPython: there is no GIL to keep off"
)

# Imports mmkit (every module of it), then the test dependencies that are installed, one at
# a time, and reports after which import, if any, the GIL came back on.
CHILD = r"""
import importlib, importlib.util, json, pkgutil, sys, warnings

warnings.simplefilter("always")
foreign = "mmkit.platform.posix" if sys.platform == "win32" else "mmkit.platform.windows"
names = ["mmkit", "mmkit.cli", "mmkit.bench"]
import mmkit
names += [
    m.name for m in pkgutil.walk_packages(mmkit.__path__, "mmkit.")
    if m.name not in ("mmkit.__main__", foreign)
]
optional = ["numpy", "pytest", "hypothesis", "pytest_bdd", "pytest_timeout", "coverage"]
names += [name for name in optional if importlib.util.find_spec(name) is not None]

culprit = None
with warnings.catch_warnings(record=True) as caught:
    for name in names:
        importlib.import_module(name)
        if culprit is None and sys._is_gil_enabled():
            culprit = name
print(json.dumps({
    "gil_enabled": sys._is_gil_enabled(),
    "culprit": culprit,
    "imported": names,
    "warnings": [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)],
}))
"""


@needs_free_threading
def test_imports_leave_the_gil_disabled() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHON_GIL"}
    child = subprocess.run(
        [sys.executable, "-c", CHILD],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=90,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout.strip().splitlines()[-1])
    assert "mmkit.cli" in report["imported"] and "mmkit.bench" in report["imported"]
    assert not report["gil_enabled"], (
        f"importing {report['culprit']} re-enabled the GIL: {report['warnings']}"
    )


@pytest.mark.skipif(
    not re.fullmatch(r"py3\d+t", os.environ.get("TOX_ENV_NAME", "")),
    reason="only under tox's free-threaded environments (py313t, py314t)",
)
def test_tox_free_threaded_env_runs_without_the_gil() -> None:
    assert FREE_THREADED, f"{os.environ['TOX_ENV_NAME']} runs on a GIL build: {sys.version}"
    assert os.environ.get("PYTHON_GIL") == "0", "the tox environment must set PYTHON_GIL=0"
    assert getattr(sys.flags, "gil", None) == 0
    assert not sys._is_gil_enabled()
