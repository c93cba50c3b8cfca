"""The thread that checks layers while ``read_dimension`` reads the next ones.

It belongs to one call: it has stopped, and no slice of the target is left, whenever the
call returns or raises, a KeyboardInterrupt at any moment included; a forked child or a
thread running at interpreter shutdown loads like anyone else.
"""

from __future__ import annotations

import _thread
import io
import os
import threading
import zlib
from pathlib import Path

import pytest

from mmkit import DataFileError, DimensionSpec
from mmkit.platform import PAGE_SIZE
from mmkit.storage import PAYLOAD_ALIGNMENT, read_dimension, write_dimension
from tests import markers
from tests.conftest import run_python

LAYER = PAGE_SIZE
A = DimensionSpec(1, "A", 16 * LAYER)


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a.mmkd"
    write_dimension(path, A, LAYER, os.urandom(A.size))
    return path


def helpers_alive() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t is not threading.current_thread()]


def damage_layer(path: Path, index: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[PAYLOAD_ALIGNMENT + index * LAYER + 3] ^= 1
    path.write_bytes(bytes(raw))


def count_layer_checksums(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Patch ``zlib.crc32`` to note every layer-sized buffer it checks."""
    calls: list[int] = []
    real = zlib.crc32

    def counting(data: bytes | memoryview, value: int = 0) -> int:
        if memoryview(data).nbytes == LAYER:
            calls.append(1)
        return real(data, value)

    monkeypatch.setattr(zlib, "crc32", counting)
    return calls


def test_a_mismatch_stops_the_verifier(a_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    damage_layer(a_file, 0)
    calls = count_layer_checksums(monkeypatch)
    with pytest.raises(DataFileError, match="layer 0 checksum mismatch"):
        read_dimension(a_file, A, LAYER, memoryview(bytearray(A.size)))
    assert len(calls) == 1  # the 15 layers after the bad one are not checked
    assert helpers_alive() == []


def test_without_a_thread_layers_are_checked_inline(
    a_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object) -> int:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(_thread, "start_new_thread", refuse)
    target = bytearray(A.size)
    header = read_dimension(a_file, A, LAYER, memoryview(target))
    assert target == a_file.read_bytes()[PAYLOAD_ALIGNMENT:]
    assert header.layer_checksums[5] == zlib.crc32(target[5 * LAYER : 6 * LAYER])
    damage_layer(a_file, 5)
    calls = count_layer_checksums(monkeypatch)
    with pytest.raises(DataFileError, match="layer 5 checksum mismatch"):
        read_dimension(a_file, A, LAYER, memoryview(target))
    assert len(calls) == 6


def test_an_interrupt_while_reading_leaves_nothing_behind(
    a_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Interrupted(io.FileIO):
        def readinto(self, buffer: object) -> int | None:
            if self.tell() == PAYLOAD_ALIGNMENT + 9 * LAYER:
                raise KeyboardInterrupt
            return super().readinto(buffer)  # type: ignore[arg-type]

    monkeypatch.setattr(io, "FileIO", Interrupted)
    target = bytearray(A.size)
    view = memoryview(target)
    with pytest.raises(KeyboardInterrupt):
        read_dimension(a_file, A, LAYER, view)
    view.release()
    target.extend(b"x")  # BufferError if a slice of the target were still alive
    assert helpers_alive() == []


LOADER = """
    import os, sys, threading, time, zlib
    from mmkit import DimensionSpec
    from mmkit.storage import read_dimension, write_dimension

    PATH = sys.argv[1] if len(sys.argv) > 1 else {path!r}
    LAYER = {layer}
    SPEC = DimensionSpec(1, "A", {count} * LAYER)

    def load(target=None):
        target = memoryview(bytearray(SPEC.size)) if target is None else target
        header = read_dimension(PATH, SPEC, LAYER, target)
        for index, crc in enumerate(header.layer_checksums):
            assert zlib.crc32(target[index * LAYER : (index + 1) * LAYER]) == crc
        return header
"""


def loader(tmp_path: Path, layer: int, count: int) -> str:
    """The scenarios' common start: a data file of ``count`` random layers, and ``load()``."""
    path = tmp_path / "a.mmkd"
    spec = DimensionSpec(1, "A", count * layer)
    write_dimension(path, spec, layer, os.urandom(spec.size))
    return LOADER.format(path=str(path), layer=layer, count=count)


@markers.needs_fork
def test_a_forked_child_loads(tmp_path: Path) -> None:
    result = run_python(
        loader(tmp_path, LAYER, 16)
        + """
    load()  # the parent has loaded: whatever a load leaves behind exists now
    pid = os.fork()
    if pid == 0:
        try:
            load()
            load()
        except BaseException:
            os._exit(3)
        os._exit(0)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            sys.exit(os.waitstatus_to_exitcode(status))
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    sys.exit("the forked child's load hung")
    """,
        timeout=90,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_load_after_the_main_thread_returned(tmp_path: Path) -> None:
    result = run_python(
        loader(tmp_path, LAYER, 16)
        + """
    from mmkit import MemoryConfig
    from mmkit.storage import generate_dataset

    def late():
        threading.main_thread().join()  # the interpreter is shutting down now
        try:
            load()
            config = MemoryConfig(limit=64 * LAYER, layer_size=LAYER, dimensions=(SPEC,))
            generate_dataset(os.path.join(os.path.dirname(PATH), "late"), config)
        except BaseException as exc:
            print("failed:", type(exc).__name__, exc, flush=True)
            os._exit(1)
        print("verified", flush=True)
        os._exit(0)

    threading.Thread(target=late).start()
    """
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "verified\n"
    assert (tmp_path / "late" / "d01-a.mmkd").is_file()


def test_interrupts_at_random_moments(tmp_path: Path) -> None:
    # Each round sends one to three SIGINTs at random moments of one load, to the main
    # thread so that a wait in progress is interrupted too; the handler raises only inside
    # read_dimension, as often as it is called. After every round, interrupted or not, the
    # mapping must close at once (nothing holds a slice of it) and no thread may be left.
    result = run_python(
        loader(tmp_path, 4 << 20, 4)
        + """
    import _thread, mmap, random, signal

    def inside_read_dimension(frame):
        while frame is not None:
            if frame.f_code.co_name == "read_dimension":
                return True
            frame = frame.f_back
        return False

    def on_sigint(signum, frame):
        if inside_read_dimension(frame):
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    MAIN = threading.get_ident()

    def interrupt():
        if hasattr(signal, "pthread_kill"):
            signal.pthread_kill(MAIN, signal.SIGINT)
        else:
            _thread.interrupt_main()

    def send(delays):
        for delay in delays:
            time.sleep(delay)
            interrupt()

    def settled():
        # Threads of any kind: a thread's last bytecodes may run just after it let go.
        deadline = time.monotonic() + 2
        while len(sys._current_frames()) > 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        return len(sys._current_frames()) == 1

    def timed_load():
        mapping = mmap.mmap(-1, SPEC.size)
        target = memoryview(mapping)
        started = time.perf_counter()
        load(target)
        taken = time.perf_counter() - started
        target.release()
        mapping.close()
        return taken

    duration = sorted(timed_load() for _ in range(5))[2]
    rng = random.Random(7)
    interrupted = completed = 0
    for turn in range(150):
        mapping = mmap.mmap(-1, SPEC.size)
        target = memoryview(mapping)
        moments = sorted(rng.uniform(0, 1.3 * duration) for _ in range(rng.randint(1, 3)))
        delays = [b - a for a, b in zip([0.0, *moments], moments)]
        sender = threading.Thread(target=send, args=(delays,))
        sender.start()
        try:
            load(target)
            completed += 1
        except KeyboardInterrupt:
            interrupted += 1
        target.release()
        mapping.close()  # BufferError while the verifier or a slice still holds the target
        sender.join()
        others = [t for t in threading.enumerate() if t is not threading.main_thread()]
        assert not others, f"round {turn}: {others} still running"
        assert settled(), f"round {turn}: {len(sys._current_frames())} threads"
    print(interrupted, completed)
    assert interrupted >= 40 and completed >= 1, (interrupted, completed)
    """,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
