"""What an adversarial review of sharing found, each kept as a test that runs the attack.

Every scenario runs in a child interpreter with a timeout, and the test asserts on its exit
code and on what it printed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import textwrap
import time
from collections.abc import Iterator

import pytest

import mmkit
from mmkit import AttachError
from tests import markers
from tests.conftest import run_python
from tests.osprobe import describe
from tests.test_sharing import Child

UNMEASURED = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_PROCESS")}

pytestmark = markers.sharing

OWNER = """
    import mmkit
    from mmkit import DimensionId, LayerId, MemoryConfig, MmapManager
    from tests.test_sharing import shared_config, stamp
    owner = MmapManager(shared_config())
    owner.load_dimension(1, b"".join(stamp(LayerId(1, i), 0) for i in range(4)))
    token = str(owner.share())
"""


def run(code: str, timeout: float = 90) -> str:
    """Run ``OWNER`` then ``code`` in a child; its output, once it exited 0."""
    source = textwrap.dedent(OWNER) + textwrap.dedent(code)
    result = run_python(source, timeout=timeout, measured=False)
    assert result.returncode == 0, describe(result.returncode) + "\n" + result.stderr[-3000:]
    return result.stdout


@pytest.mark.timeout(120)
def test_closing_a_reader_while_threads_read_it() -> None:
    """The control area stays readable through close: threads racing it get InvalidState."""
    out = run("""
        import threading
        from mmkit import MmkitError
        for attempt in range(100):
            reader = mmkit.attach(token)
            stop = threading.Event()
            def read():
                while not stop.is_set():
                    try:
                        reader.access_layer(LayerId(1, 0)).release()
                    except MmkitError:
                        pass
            threads = [threading.Thread(target=read) for _ in range(2)]
            for thread in threads:
                thread.start()
            reader.close()
            stop.set()
            for thread in threads:
                thread.join()
        print("survived")
    """)
    assert out.strip() == "survived"


@pytest.mark.timeout(120)
def test_racing_threads_always_get_the_layer_they_asked_for() -> None:
    """A thread that lets a unit go and pins it again for a later table cannot hand another
    thread, which read the earlier table, a view of the wrong layer."""
    out = run("""
        import random, sys, threading
        sys.setswitchinterval(1e-6)
        reader = mmkit.attach(token)
        stop = threading.Event()
        wrong = []
        def read():
            while not stop.is_set():
                layer = LayerId(1, random.randrange(3))
                try:
                    view = reader.access_layer(layer)
                except mmkit.MmkitError:
                    continue
                if view[0] != 1 or view[1] != layer.index:
                    wrong.append((layer, bytes(view[:2])))
                view.release()
        threads = [threading.Thread(target=read) for _ in range(4)]
        for thread in threads:
            thread.start()
        for version in range(1, 3000):
            layer = LayerId(1, version % 3)
            try:
                owner.update_layer(layer, stamp(layer, version))
            except mmkit.LimitExceeded:
                pass
        stop.set()
        for thread in threads:
            thread.join()
        print("wrong", wrong[:3])
    """)
    assert out.strip() == "wrong []"


FORK_WITHOUT_DESCRIPTORS = """
    import os, resource
    def fork_without_descriptors():
        # os.fork() while the process can open no more descriptors (as the fork hooks run)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        highest = max(map(int, os.listdir("/proc/self/fd")))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
        filler = []
        try:
            while True:
                filler.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        pid = os.fork()
        for fd in filler:
            os.close(fd)
        if pid:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        return pid
"""

ORPHAN = (
    FORK_WITHOUT_DESCRIPTORS
    + """
    import sys, mmkit
    from mmkit import LayerId
    from tests.test_sharing import stamp
    reader = mmkit.attach(sys.argv[1])
    view = reader.access_layer(LayerId(1, 0))
    go_read, go_write = os.pipe()
    pid = fork_without_descriptors()
    if pid == 0:
        code = 3
        try:
            os.close(go_write)
            os.read(go_read, 1)
            same = bytes(view) == stamp(LayerId(1, 0), 1)
            try:
                reader.access_layer(LayerId(1, 1))
                refused = False
            except mmkit.InvalidState:
                refused = True
            code = 0 if same and refused else 1 + same
        finally:
            os._exit(code)
    view.release()
    reader.stats()  # the parent lets go, but keeps the pins its child reads through
    print("released", flush=True)
    sys.stdin.readline()
    os.write(go_write, b"g")
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))
"""
)


@markers.procfs
@pytest.mark.timeout(120)
def test_a_reader_forked_without_a_descriptor_to_spare_keeps_its_views() -> None:
    """At RLIMIT_NOFILE the child cannot get an open of its own: it shares its parent's pins,
    so the parent keeps them, and the child's views keep their bytes."""
    from mmkit import LayerId, MmapManager
    from tests.test_sharing import shared_config, stamp

    with MmapManager(shared_config()) as owner:
        owner.load_dimension(1, b"".join(stamp(LayerId(1, i), 0) for i in range(4)))
        owner.update_layer(LayerId(1, 0), stamp(LayerId(1, 0), 1))
        with Child(ORPHAN, str(owner.share())) as reader:
            assert reader.line() == "released"
            for version in range(2, 8):
                owner.update_layer(LayerId(1, 0), stamp(LayerId(1, 0), version))
            reader.say("go")
            assert reader.wait(timeout=60) == 0, reader.errors()


@markers.memfd_sharing
def test_memory_that_is_not_sealed_is_refused() -> None:
    """A same-user process that hands out a token for an unsealed memfd could shrink it under
    the reader (SIGBUS): attach refuses what is not sealed against resizing."""
    import mmap
    import os
    import struct

    from mmkit.memory.arena import DESCRIPTION_OFFSET, HEADER, MAGIC, ArenaLayout

    config = mmkit.MemoryConfig(shared=True)
    arena = ArenaLayout.plan(config, mmap.PAGESIZE)
    fd = os.memfd_create("mmkit-arena", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, arena.size)
        nonce = os.urandom(16)
        header = HEADER.pack(MAGIC, 1, len(arena.description), nonce, os.getpid(), 0, 1, 0)
        os.pwrite(fd, header, 0)
        os.pwrite(fd, arena.description, DESCRIPTION_OFFSET)
        os.pwrite(fd, struct.pack("<Q", arena.offsets[0] | 1), arena.table_offset)
        token = f"mmkit-share-1:{os.geteuid()}:{os.getpid()}:{fd}:{nonce.hex()}"
        with pytest.raises(AttachError, match="not mmkit shared memory"):
            mmkit.attach(token)
    finally:
        os.close(fd)


@markers.procfs
@pytest.mark.timeout(120)
def test_ctrl_c_storms_in_attach_and_close_leave_nothing() -> None:
    out = run(
        """
        import gc, os, random, signal
        def arena():
            with open("/proc/self/maps") as maps:
                mapped = sum("mmkit-arena" in line for line in maps)
            held = 0
            for fd in os.listdir("/proc/self/fd"):
                try:
                    held += "mmkit-arena" in os.readlink(f"/proc/self/fd/{fd}")
                except OSError:
                    pass
            return mapped, held
        before = arena()
        signal.signal(signal.SIGALRM, lambda *_: signal.raise_signal(signal.SIGINT))
        interrupts = 0
        for attempt in range(2000):
            reader = None
            try:
                try:
                    signal.setitimer(signal.ITIMER_REAL, random.uniform(1e-6, 4e-4))
                    reader = mmkit.attach(token)
                    reader.access_layer(LayerId(1, attempt % 4)).release()
                    reader.close()
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            except KeyboardInterrupt:
                interrupts += 1
                if reader is not None:
                    reader.close()
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        reader = None
        gc.collect()
        print(interrupts > 100, arena() == before)
    """,
        timeout=110,
    )
    assert out.strip() == "True True"


STORMED_READER = """
    import random, signal, sys, mmkit
    from mmkit import LayerId
    reader = mmkit.attach(sys.argv[1])
    def interrupt(*_):
        raise RuntimeError("a timeout")
    signal.signal(signal.SIGALRM, interrupt)
    for attempt in range(2000):
        try:
            try:
                signal.setitimer(signal.ITIMER_REAL, random.uniform(1e-6, 1e-4))
                reader.access_layer(LayerId(1, attempt % 4)).release()
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except (RuntimeError, mmkit.MmkitError):
            pass
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    print("done", flush=True)
    sys.stdin.readline()
    print(reader.stats().pinned, flush=True)  # a call: the reader lets go of all it can
    sys.stdin.readline()
"""


@markers.posix_signals
@pytest.mark.timeout(120)
def test_exceptions_from_any_signal_handler_leave_no_pins_behind() -> None:
    """A reader whose calls a signal handler interrupts at random (a SIGALRM timeout that
    raises) while the owner publishes all along holds no pin, once it calls again, beyond
    what its views need: none."""
    from mmkit import LayerId, MmapManager
    from tests.test_sharing import shared_config, stamp

    with MmapManager(shared_config()) as owner:
        owner.load_dimension(1, b"".join(stamp(LayerId(1, i), 0) for i in range(4)))
        storm = Child(
            STORMED_READER,
            str(owner.share()),
            stderr=subprocess.DEVNULL,  # the exceptions the collector's callbacks ignore
            env=UNMEASURED,  # a storm of exceptions is no place for coverage's tracer
        )
        with storm as reader, patience(0.01):  # a reader stopped inside the table lock: once
            version = 0
            while not select_ready(reader.process.stdout):
                version += 1
                layer = LayerId(1, version % 4)
                with contextlib.suppress(mmkit.LimitExceeded):  # the reader's next call lets go
                    owner.update_layer(layer, stamp(layer, version))
                time.sleep(0.001)  # a new table a millisecond: the reader copies many
            assert reader.line() == "done"
            reader.say()
            assert reader.line() == "0"  # it let go of all it could
            assert owner.stats().reader_pins == 0
            owner.update_layer(LayerId(1, 0), stamp(LayerId(1, 0), 0))  # nothing holds spares
            assert reader.wait() == 0


@contextlib.contextmanager
def patience(seconds: float) -> Iterator[None]:
    """How long the owner waits for a reader's hold on the table, for a while."""
    from mmkit.memory import shared

    before, shared.LOCK_PATIENCE = shared.LOCK_PATIENCE, seconds
    try:
        yield
    finally:
        shared.LOCK_PATIENCE = before


def select_ready(stream: object) -> bool:
    import select

    return bool(select.select([stream], [], [], 0)[0])


@markers.procfs
@pytest.mark.timeout(120)
def test_a_dropped_reader_gives_back_its_mappings_and_pins() -> None:
    out = run("""
        import gc
        def maps():
            with open("/proc/self/maps") as lines:
                return sum("mmkit-arena" in line for line in lines)
        alone = maps()
        def use():
            reader = mmkit.attach(token)
            reader.access_layer(LayerId(1, 0)).release()
        for _ in range(20):
            use()
        gc.collect()
        print(maps() == alone, owner.stats().reader_pins)
    """)
    assert out.strip() == "True 0"


@pytest.mark.timeout(120)
def test_a_stopped_reader_holding_the_table_delays_the_owner_once() -> None:
    """A reader stopped while it copies the table (SIGSTOP, a debugger) costs the owner one
    wait for the lock; later publishes do not wait for it."""
    out = run("""
        import time
        from mmkit.memory import shared
        from mmkit.memory.arena import PUBLISH_BYTE
        shared.LOCK_PATIENCE = 0.2
        reader = mmkit.attach(token)
        memory = reader._memory
        assert memory.sharing.lock(memory.handle, PUBLISH_BYTE, exclusive=False)  # stopped mid-copy
        times = []
        for version in range(1, 6):
            start = time.monotonic()
            owner.update_layer(LayerId(1, 0), stamp(LayerId(1, 0), version))
            times.append(time.monotonic() - start)
        memory.sharing.unlock(memory.handle, PUBLISH_BYTE)
        print(times[0] >= 0.2, max(times[1:]) < 0.1)
        print(bytes(reader.access_layer(LayerId(1, 0))) == stamp(LayerId(1, 0), 5))
    """)
    assert out.split() == ["True", "True", "True"]


@pytest.mark.parametrize(
    "token",
    [
        "mmkit-share-\u00b2:0:1:3:" + "0" * 32,  # a digit, but not an ASCII one
        "mmkit-share-1:0:\u0661:3:" + "0" * 32,  # Arabic-Indic one
    ],
)
def test_tokens_with_unicode_digits_are_attach_errors(token: str) -> None:
    with pytest.raises(AttachError):
        mmkit.attach(token)


def test_a_forged_description_cannot_exhaust_the_reader() -> None:
    from mmkit.memory.arena import ArenaLayout

    for description in (b"[" * 200_000, b"{}", b"\xff" * 10):
        with pytest.raises(ValueError, match="not valid"):
            ArenaLayout.parse(description, mmkit.platform.PAGE_SIZE)


# -- the second review -----------------------------------------------------------------------


def test_reads_stay_lock_free_after_calls_that_let_go(monkeypatch: pytest.MonkeyPatch) -> None:
    """A call that lets go of idle pins (``stats``) must not send later reads of the layers
    still pinned down the locked path."""
    from mmkit import LayerId, MmapManager
    from mmkit.manager.reader import SharedReader
    from tests.test_sharing import every_layer, shared_config, stamp

    with MmapManager(shared_config()) as owner:
        for spec in owner.config.dimensions:
            count = spec.size // owner.config.layer_size
            owner.load_dimension(
                spec.id, b"".join(stamp(LayerId(spec.id, i), 0) for i in range(count))
            )
        with mmkit.attach(owner.share()) as reader:
            layers = every_layer(owner.config)
            held = [reader.access_layer(layer) for layer in layers]  # every unit stays pinned
            slow: list[object] = []
            real = SharedReader._access_slow

            def counted(self: SharedReader, layer: object) -> memoryview:
                slow.append(layer)
                return real(self, layer)

            monkeypatch.setattr(SharedReader, "_access_slow", counted)
            for _ in range(3):
                reader.stats()  # lets go of what it can, shows the rest again
                for layer in layers:
                    reader.access_layer(layer).release()
            assert slow == [] or not mmkit.manager.dimension.SHARED_VIEWS
            for view in held:
                view.release()


def test_a_refused_eviction_is_invisible_to_readers() -> None:
    """An eviction refused because a reader elsewhere holds the dimension changes nothing
    another reader can see: it stays loaded throughout."""
    from mmkit import DimensionId, LayerId, MmapManager
    from tests.test_sharing import shared_config

    with MmapManager(shared_config()) as owner:
        owner.load_dimension(1)  # zeros: evictable
        with Child(HOLDER, str(owner.share())) as holder:
            assert holder.line() == "holding"
            with mmkit.attach(owner.share()) as watcher:
                generation = watcher.stats().generation
                for _ in range(20):
                    assert not owner.evict(DimensionId(1))
                    assert watcher.is_loaded(1) and owner.is_loaded(1)
                    watcher.access_layer(LayerId(1, 0)).release()
                # refusals published nothing but, at most, reminders to let go
                assert watcher.stats().generation - generation <= 2
            holder.say()
            assert holder.wait() == 0
            assert owner.evict(DimensionId(1))


HOLDER = """
    import sys, mmkit
    from mmkit import LayerId
    reader = mmkit.attach(sys.argv[1])
    view = reader.access_layer(LayerId(1, 0))
    print("holding", flush=True)
    sys.stdin.readline()
"""


@markers.procfs
@pytest.mark.timeout(120)
def test_a_fork_without_a_descriptor_to_spare_keeps_only_what_was_in_use() -> None:
    """If the owner cannot pin for a forked child, what was in use then is never reused;
    what came later still is, once the child is gone."""
    out = run(
        textwrap.dedent(FORK_WITHOUT_DESCRIPTORS)
        + textwrap.dedent("""
        owner.update_layer(LayerId(1, 1), stamp(LayerId(1, 1), 1))  # a spare layer in use
        pid = fork_without_descriptors()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        for version in range(2, 40):  # spare layers turn over: only the kept ones stay
            owner.update_layer(LayerId(1, 2), stamp(LayerId(1, 2), version))
        print(owner.stats().spare_layers_free)
    """)
    )
    assert int(out) >= 1


@markers.needs_fork
@pytest.mark.timeout(120)
def test_a_forked_child_slow_to_start_keeps_its_views() -> None:
    """A child that reaches mmkit's fork hooks late (an earlier hook, a loaded machine):
    what its inherited views read is never rewritten, however long it takes."""
    slow_child = """
        import os, time
        os.register_at_fork(after_in_child=lambda: time.sleep(1.0))  # before mmkit's hooks
    """
    result = run_python(
        textwrap.dedent(slow_child)
        + textwrap.dedent(OWNER)
        + textwrap.dedent("""
        from mmkit.platform import bytelocks
        bytelocks.FORK_PATIENCE = 0.2  # the macOS backend's wait for the child, shortened
        view = owner.access_layer(LayerId(1, 0))
        before = bytes(view)
        pid = os.fork()
        if pid == 0:
            time.sleep(1.0)  # the owner updates meanwhile
            os._exit(0 if bytes(view) == before else 1)
        view.release()
        for version in range(1, 12):
            try:
                owner.update_layer(LayerId(1, 0), stamp(LayerId(1, 0), version))
            except mmkit.LimitExceeded:
                pass
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
    """),
        timeout=90,
        measured=False,
    )
    assert result.returncode == 0, describe(result.returncode) + result.stderr[-3000:]
    assert result.stdout.strip() == "0"


@markers.needs_fork
@pytest.mark.timeout(180)
def test_forks_while_other_threads_attach_and_close_readers() -> None:
    """Every child comes out of fork (no lock left held) as a forked owner that cannot
    write, and no fork hook fails (CPython would print it)."""
    result = run_python(
        textwrap.dedent(OWNER)
        + textwrap.dedent("""
        import os, sys, threading
        sys.setswitchinterval(1e-5)
        arena = owner._spans.arena
        owner.access_layer(LayerId(1, 0)).release()
        stop = threading.Event()
        def churn():
            while not stop.is_set():
                with mmkit.attach(token) as reader:
                    reader.access_layer(LayerId(1, 0)).release()
        threads = [threading.Thread(target=churn) for _ in range(3)]
        for thread in threads:
            thread.start()
        bad = 0
        for _ in range(200):
            pid = os.fork()
            if pid == 0:
                os._exit(0 if arena.forked else 3)
            _, status = os.waitpid(pid, 0)
            bad += os.waitstatus_to_exitcode(status) != 0
        stop.set()
        for thread in threads:
            thread.join()
        print(bad)
    """),
        timeout=150,
        measured=False,
    )
    assert result.returncode == 0, describe(result.returncode) + result.stderr[-3000:]
    assert result.stdout.strip() == "0"
    assert "Exception ignored" not in result.stderr, result.stderr[-3000:]
