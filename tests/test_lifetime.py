"""No sequence of public calls crashes the interpreter: each scenario runs in a child."""

from __future__ import annotations

import pytest

from tests.conftest import run_python

PRELUDE = """
import gc, threading
import mmkit
from mmkit import LayerId, MemoryConfig, MmapManager
from mmkit.platform import PAGE_SIZE
from tests.conftest import small_config
"""

SCENARIOS = {
    "view read after close": """
        mgr = MmapManager(small_config())
        mgr.load_dimension(1, bytes(range(256)) * (4 * PAGE_SIZE // 256))
        view = mgr.access_layer(LayerId(1, 1))
        mgr.close()
        assert view[:3].tolist() == [0, 1, 2], view[:3].tolist()
        assert sum(view) == PAGE_SIZE // 256 * sum(range(256))
    """,
    "view outlives the manager object": """
        mgr = MmapManager(small_config())
        mgr.load_dimension(2, b"\\x05" * (2 * PAGE_SIZE))
        view = mgr.access_layer(LayerId(2, 0))[100:]
        del mgr
        gc.collect()
        assert set(bytes(view)) == {5}
    """,
    "view released after close, then others read": """
        mgr = MmapManager(small_config())
        mgr.load_dimension(1)
        views = [mgr.access_layer(LayerId(1, i)) for i in range(4)]
        mgr.close()
        views[0].release()
        assert all(bytes(v) == bytes(PAGE_SIZE) for v in views[1:])
    """,
    "readers racing close": """
        mgr = MmapManager(MemoryConfig())
        for d in range(1, 15):
            mgr.load_dimension(d)
        stop = threading.Event()
        failures = []
        def read(n):
            layer = LayerId(1 + n % 14, 0)
            while not stop.is_set():
                try:
                    view = mgr.access_layer(layer)
                except mmkit.InvalidState:
                    return
                if view[-1] != 0:
                    failures.append(n)
        threads = [threading.Thread(target=read, args=(n,)) for n in range(16)]
        for t in threads:
            t.start()
        mgr.close()
        stop.set()
        for t in threads:
            t.join()
        assert not failures
    """,
    "closing from many threads at once": """
        mgr = MmapManager(small_config())
        mgr.load_dimension(1)
        threads = [threading.Thread(target=mgr.close) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert mgr.state is mmkit.ManagerState.CLOSED
    """,
    "every public call after close": """
        mgr = MmapManager(small_config())
        mgr.load_dimension(1)
        view = mgr.access_layer(LayerId(1, 0))
        mgr.close()
        for call in (lambda: mgr.load_dimension(1), lambda: mgr.access_layer(LayerId(1, 0)),
                     lambda: mgr.region(1), mgr.regions, mgr.initialize):
            try:
                call()
            except mmkit.InvalidState:
                pass
            else:
                raise AssertionError("no InvalidState")
        mgr.stats(); repr(mgr); mgr.close()
        assert bytes(view) == bytes(PAGE_SIZE)
    """,
    "a daemon thread reading during interpreter exit": """
        mgr = MmapManager(small_config())
        mgr.load_dimension(1, b"\\x01" * (4 * PAGE_SIZE))
        def spin():
            while True:
                assert sum(mgr.access_layer(LayerId(1, 0))) == PAGE_SIZE
        threading.Thread(target=spin, daemon=True).start()
    """,
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_exits_cleanly(name: str) -> None:
    result = run_python(PRELUDE + SCENARIOS[name].replace("\n        ", "\n"))
    assert result.returncode == 0, result.stderr
