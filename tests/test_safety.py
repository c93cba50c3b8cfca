"""What an adversarial caller can do with public calls cannot crash or hang the interpreter.

Each scenario that could crash runs in a child interpreter and the test asserts its exit
code; anything that could hang has a timeout. Item numbers refer to the safety issue's list.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests import markers
from tests.conftest import ROOT, run_python

PRELUDE = """
import copy, ctypes, gc, os, pickle, sys, threading
import mmkit
from mmkit import LayerId, MemoryConfig, MmapManager
from mmkit.platform import PAGE_SIZE
from tests.conftest import small_config
"""


def run(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run_python(PRELUDE + textwrap.dedent(code), timeout=timeout)


# -- A. crashes ---------------------------------------------------------------------------


@pytest.mark.parametrize("updated", [False, True], ids=["loaded", "updated"])
def test_nothing_reachable_from_a_view_is_writable(updated: bool) -> None:
    """A1: view.obj offered a writable buffer over PROT_READ pages (SIGSEGV on write)."""
    result = run(
        f"""
        mgr = MmapManager(small_config())
        mgr.load_dimension(1, bytes(range(256)) * (4 * PAGE_SIZE // 256))
        if {updated}:
            mgr.update_layer(LayerId(1, 0), bytes(range(256)) * (PAGE_SIZE // 256))
        view = mgr.access_layer(LayerId(1, 0))
        before = bytes(view)
        owner = view.obj  # an empty read-only memoryview: it counts the views, shows nothing
        assert isinstance(owner, memoryview) and owner.readonly and owner.nbytes == 0, owner
        attempts = [
            owner.release,  # refused while views count on it: it is no handle on the memory
            lambda: owner.__setitem__(0, 1),
            lambda: memoryview(owner).cast("B").__setitem__(0, 1),
            lambda: view.__setitem__(0, 1),
            lambda: memoryview(view).__setitem__(0, 1),
            lambda: (ctypes.c_char * 16).from_buffer(view),
            lambda: (ctypes.c_char * 16).from_buffer(owner),
            lambda: setattr(owner, "_mmkit_owner", None),
        ]
        try:
            import numpy
        except ImportError:
            pass
        else:
            attempts += [
                lambda: numpy.frombuffer(owner, dtype=numpy.uint8).__setitem__(0, 1),
                lambda: numpy.frombuffer(view, dtype=numpy.uint8).__setitem__(0, 1),
                lambda: numpy.asarray(view).__setitem__(0, 1),
            ]
        for number, attempt in enumerate(attempts):
            try:
                attempt()
            except (TypeError, ValueError, AttributeError, BufferError, IndexError):
                pass
            else:
                raise AssertionError(f"attempt {{number}} was allowed")
        assert bytes(view) == before
        assert bytes(mgr.access_layer(LayerId(1, 0))) == before
        """
    )
    assert result.returncode == 0, result.stderr


def test_owners_of_memory_refuse_to_be_copied_or_pickled() -> None:
    """A2: closing a copy of a manager decommitted the pool the original still used."""
    result = run(
        """
        mgr = MmapManager(small_config())
        block = mgr.allocate(64)
        for thing in (mgr, block):
            for attempt in (copy.copy, copy.deepcopy, pickle.dumps):
                try:
                    duplicate = attempt(thing)
                except mmkit.NotCopyable as exc:
                    assert isinstance(exc, TypeError)
                else:
                    if hasattr(duplicate, "close"):
                        duplicate.close()  # what the old code let happen
        mgr.allocate(4096).view[0] = 1
        block.view[0] = 2
        assert block.view[0] == 2
        """
    )
    assert result.returncode == 0, result.stderr


def test_a_slice_of_a_block_view_outlives_close() -> None:
    """A3: close() watched the Block while views pinned its BlockPin."""
    result = run(
        """
        mgr = MmapManager(small_config())
        mgr.load_dimension(1, b"\\x01" * (4 * PAGE_SIZE))
        layer = mgr.access_layer(LayerId(1, 0))  # a held layer view: close takes the slow path
        block = mgr.allocate(PAGE_SIZE)
        block.view[:4] = b"abcd"
        s = block.view[:16]
        del block
        gc.collect()
        mgr.close()
        assert bytes(s[:4]) == b"abcd"
        s[4] = 9
        assert s[4] == 9 and layer[0] == 1
        """
    )
    assert result.returncode == 0, result.stderr


@markers.posix_signals
@pytest.mark.timeout(180)
def test_ctrl_c_at_random_moments_during_loads(tmp_path: object) -> None:
    """A4: an interrupted load decommitted its region under a verifier thread (SIGSEGV)."""
    child = textwrap.dedent(
        """
        import signal, sys
        import mmkit
        from mmkit import DimensionSpec, MemoryConfig, MmapManager, MiB
        spec = DimensionSpec(1, "Big", 128 * MiB)
        config = MemoryConfig(limit=160 * MiB, layer_size=64 * MiB, dimensions=(spec,),
                              data_dir=sys.argv[1])
        mmkit.generate_dataset(sys.argv[1], config)
        mgr = MmapManager(config)
        armed = [False]

        def interrupt(signum, frame):
            if armed[0]:  # only inside a load: the rest of this loop is the test's own code
                raise KeyboardInterrupt

        signal.signal(signal.SIGINT, interrupt)
        interrupted = loads = 0
        print("ready", flush=True)
        for _ in range(int(sys.argv[2])):
            try:
                try:
                    armed[0] = True
                    mgr.load_dimension(1)
                    loads += 1
                finally:
                    armed[0] = False
            except KeyboardInterrupt:
                interrupted += 1
            if mgr.is_loaded(1):
                assert mgr.evict(1)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent may signal until we exit
        mgr.load_dimension(1)
        view = mgr.access_layer(mmkit.LayerId(1, 1))
        assert view.nbytes == 64 * MiB
        print(f"{loads} loads, {interrupted} interrupted", flush=True)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-c", child, str(tmp_path), "40"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert process.stdout is not None
    try:
        assert process.stdout.readline() == "ready\n"
        rng = random.Random(4)
        while process.poll() is None:
            time.sleep(rng.uniform(0.0, 0.25))
            process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "interrupted" in out


@markers.needs_mlockall
def test_pages_locked_by_mlockall_are_given_back_zeroed() -> None:
    """A5: madvise(DONTNEED) refused locked pages; the span stayed counted as committed."""
    result = run(
        """
        import tempfile
        from pathlib import Path
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mlockall(1 | 2) != 0:  # MCL_CURRENT | MCL_FUTURE
            print("SKIP mlockall refused", ctypes.get_errno())
            sys.exit(0)
        config = small_config(limit=4096 * PAGE_SIZE)
        with tempfile.TemporaryDirectory() as tmp:
            bad = Path(tmp) / "bad.mmkd"
            mmkit.storage.write_dimension(bad, config.dimension(1), PAGE_SIZE,
                                          b"\\x5a" * (4 * PAGE_SIZE))
            raw = bytearray(bad.read_bytes())
            raw[-1] ^= 0xFF  # the last layer's checksum no longer matches
            bad.write_bytes(bytes(raw))
            mgr = MmapManager(config)
            try:
                mgr.load_dimension(1, bad)
            except mmkit.DataFileError:
                pass
            else:
                raise AssertionError("a corrupt file was accepted")
            mgr.load_dimension(1)  # zero-filled: none of the rejected bytes may show
            for index in range(4):
                assert set(bytes(mgr.access_layer(LayerId(1, index)))) == {0}
            blocks = [mgr.allocate(64 * PAGE_SIZE) for _ in range(48)]
            for block in blocks:
                block.view[:] = b"\\x33" * block.size
            for block in blocks:
                mgr.free(block)  # idle pages past the retained amount are decommitted
            again = [mgr.allocate(64 * PAGE_SIZE) for _ in range(48)]
            for block in again:
                assert set(bytes(block.view)) == {0}
                block.view[:] = b"\\x44" * block.size
        """
    )
    assert result.returncode == 0, result.stderr


# -- B. hangs -----------------------------------------------------------------------------


@markers.needs_fork
def test_loads_work_in_a_forked_child(tmp_path: object) -> None:
    """B6: the verifier pool was inherited by a forked child without its threads."""
    result = run(
        f"""
        import multiprocessing
        data = {str(tmp_path)!r}
        config = MemoryConfig(data_dir=data)
        mmkit.generate_dataset(data, config)
        mgr = MmapManager(config)
        mgr.load_dimension(1)
        pid = os.fork()
        if pid == 0:
            try:
                mgr.load_dimension(2)
                assert mgr.access_layer(LayerId(2, 0)).nbytes == mmkit.MiB
                child = MmapManager(config)
                child.load_dimension(3)
            except BaseException:
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status

        def load_in_child(_: int) -> int:
            other = MmapManager(config)
            other.load_dimension(4)
            return other.access_layer(LayerId(4, 0)).nbytes

        with multiprocessing.get_context("fork").Pool(2) as pool:
            assert pool.map(load_in_child, range(2)) == [mmkit.MiB] * 2
        """,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


@markers.needs_fork
def test_fork_while_another_thread_writes() -> None:
    """B6: a child forked while a writer held the manager's lock would wait on it forever."""
    result = run(
        """
        mgr = MmapManager(small_config())
        stop = threading.Event()
        def churn():
            while not stop.is_set():
                block = mgr.allocate(100)
                mgr.update_layer(LayerId(1, 0), b"\\x08" * PAGE_SIZE)
                mgr.free(block)
                mgr.stats()
        mgr.load_dimension(1)
        writer = threading.Thread(target=churn)
        writer.start()
        try:
            for _ in range(40):
                pid = os.fork()
                if pid == 0:
                    mgr.update_layer(LayerId(1, 1), b"\\x09" * PAGE_SIZE)
                    mgr.free(mgr.allocate(10))
                    assert mgr.access_layer(LayerId(1, 1))[0] == 9
                    os._exit(0)
                _, status = os.waitpid(pid, 0)
                assert os.waitstatus_to_exitcode(status) == 0, status
        finally:
            stop.set()
            writer.join()
        """,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_a_load_after_the_main_thread_returned(tmp_path: object) -> None:
    """B6: a non-daemon thread loading during shutdown got a raw RuntimeError."""
    result = run(
        f"""
        import time
        data = {str(tmp_path)!r}
        config = MemoryConfig(data_dir=data)
        mmkit.generate_dataset(data, config)
        mgr = MmapManager(config)
        main = threading.main_thread()
        def late():
            main.join()  # the main thread has returned: the interpreter is shutting down
            mgr.load_dimension(1)
            assert mgr.access_layer(LayerId(1, 3)).nbytes == mmkit.MiB
            print("loaded after main returned", flush=True)
        threading.Thread(target=late).start()
        """
    )
    assert result.returncode == 0, result.stderr
    assert "loaded after main returned" in result.stdout
    assert "Traceback" not in result.stderr
