"""The second adversarial pass: each way it found to break mmkit, as a test.

Crash- and hang-prone scenarios run in a child interpreter with a timeout. The Ctrl-C storms
arm their SIGINT handler only around the mmkit calls under test, so an interrupt never lands
in the test script's own code.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import sys
from pathlib import Path

import pytest

import mmkit
from mmkit import (
    ConfigError,
    DataFileError,
    DimensionSpec,
    InvalidArgument,
    InvalidState,
    LayerId,
    MemoryConfig,
    MmapManager,
    NotABuffer,
    storage,
)
from mmkit.platform import PAGE_SIZE
from mmkit.system import ConsciousnessSystem
from tests import markers
from tests.conftest import run_python, small_config

STORM = """
import os, signal, sys, threading, time
import mmkit
from mmkit import LayerId, MemoryConfig, DimensionSpec, MmapManager
from mmkit.platform import PAGE_SIZE as P
armed = [False]
def interrupt(signum, frame):
    if armed[0]:
        raise KeyboardInterrupt
signal.signal(signal.SIGINT, interrupt)
stop = threading.Event()
def storm():
    while not stop.is_set():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.0002)
def call(function, *args):
    try:
        try:
            armed[0] = True
            return function(*args)
        finally:
            armed[0] = False
    except KeyboardInterrupt:
        return None
"""


def storm(body: str, timeout: float = 90) -> None:
    code = STORM + body + "\nstop.set()\nprint('done')\n"
    result = run_python(code, timeout=timeout, measured=False)
    assert result.returncode == 0, result.stderr
    assert "done" in result.stdout


# -- 1. caller code running inside a write ------------------------------------------------


def test_an_argument_that_closes_the_manager_cannot_re_enter_a_write(tmp_path: Path) -> None:
    """An __index__ that closed the manager mid-load made the load write another's region."""
    result = run_python(
        f"""
        import mmkit
        from mmkit import LayerId
        from mmkit.platform import PAGE_SIZE
        from tests.conftest import small_config
        mgr = mmkit.MmapManager(small_config())
        other = []
        class Dim:
            def __index__(self):
                if not other:
                    mgr.close()
                    second = mmkit.MmapManager(small_config())
                    second.load_dimension(1, b"X" * (4 * PAGE_SIZE))
                    other.append((second, second.access_layer(LayerId(1, 0))))
                return 1
        bad = {str(tmp_path / "bad.mmkd")!r}
        open(bad, "wb").write(b"junk" * 100)
        try:
            mgr.load_dimension(Dim(), bad)
        except mmkit.MmkitError as exc:
            assert isinstance(exc, mmkit.InvalidState), exc
        assert bytes(other[0][1][:4]) == b"XXXX"
        """
    )
    assert result.returncode == 0, result.stderr


def test_a_path_that_loads_the_same_dimension_cannot_change_a_view(tmp_path: Path) -> None:
    """An __fspath__ that loaded the dimension made the outer load overwrite a live view."""
    config = small_config()
    path = tmp_path / "b.mmkd"
    storage.write_dimension(path, config.dimension(1), PAGE_SIZE, b"B" * (4 * PAGE_SIZE))
    with MmapManager(config) as mgr:
        held: list[memoryview] = []

        class Sneaky(os.PathLike[str]):
            def __fspath__(self) -> str:
                if not held:
                    mgr.load_dimension(1, b"A" * (4 * PAGE_SIZE))
                    held.append(mgr.access_layer(LayerId(1, 0)))
                return str(path)

        with pytest.raises(mmkit.AlreadyLoaded):
            mgr.load_dimension(1, Sneaky())
        assert bytes(held[0][:4]) == b"AAAA"
        assert mgr.stats().data == 4 * PAGE_SIZE


def test_a_layer_id_subclass_that_closes_the_manager_gets_invalid_state() -> None:
    """A LayerId subclass whose __getitem__ closed the manager ended in a raw AssertionError."""
    mgr = MmapManager(small_config())
    mgr.load_dimension(1)

    class Closing(LayerId):
        def __getitem__(self, index: object) -> object:  # type: ignore[override]
            mgr.close()
            return super().__getitem__(index)  # type: ignore[index]

    with pytest.raises(InvalidState):
        mgr.update_layer(Closing(1, 0), bytes(PAGE_SIZE))


# -- 2, 4, 6, 11: Ctrl-C storms -------------------------------------------------------------


@markers.posix_signals
def test_ctrl_c_storm_over_block_views_allocate_and_free() -> None:
    """A KeyboardInterrupt inside a ctypes callback handed C an unfilled buffer (SIGSEGV); an
    interrupted allocate or free lost its block; a block whose free was interrupted could
    never be freed again."""
    storm(
        """
mgr = MmapManager(MemoryConfig(limit=256 * P, layer_size=P,
                               dimensions=(DimensionSpec(1, "A", 4 * P),)))
threading.Thread(target=storm, daemon=True).start()
end = time.time() + 3
held = []
while time.time() < end:
    block = call(mgr.allocate, 64)
    if block is None:
        continue
    held.append(block)
    call(lambda: block.view.__setitem__(0, 1))
    if len(held) > 8:
        first = held.pop(0)
        if call(mgr.free, first) is None and not first.freed:
            held.append(first)
stop.set()
time.sleep(0.05)
# A block whose allocate returned just before a KeyboardInterrupt hit this script is lost to
# the script, not to the manager: every pool block must be a block the manager knows.
live = list(mgr._blocks.live.values())
assert mgr.stats().pool_blocks == len(live), (mgr.stats().pool_blocks, len(live))
for block in live:
    mgr.free(block)
stats = mgr.stats()
assert stats.pool_blocks == 0, stats
mgr.allocate(stats.pool_size)
"""
    )


@markers.posix_signals
@pytest.mark.timeout(120)
def test_ctrl_c_storm_over_readers_and_an_updater() -> None:
    """A release callback run with an exception set left a lease lock taken: the updater,
    and then close(), waited forever; readers got a raw SystemError."""
    storm(
        """
mgr = MmapManager(MemoryConfig(limit=64 * P, layer_size=P,
                               dimensions=(DimensionSpec(1, "A", 8 * P),)))
mgr.load_dimension(1)
def update():
    while not stop.is_set():
        mgr.update_layer(LayerId(1, 3), b"u" * P)
writer = threading.Thread(target=update)
writer.start()
threading.Thread(target=storm, daemon=True).start()
end = time.time() + 3
while time.time() < end:
    views = call(lambda: [mgr.access_layer(LayerId(1, i)) for i in range(8)])
    del views
stop.set()
writer.join(timeout=30)
assert not writer.is_alive(), "the updater is stuck"
mgr.close()
""",
    )


@markers.posix_signals
def test_ctrl_c_during_saves_leaves_no_temporary_files(tmp_path: Path) -> None:
    """An interrupted save stranded its hidden temporary file."""
    storm(
        f"""
from pathlib import Path
target = Path({str(tmp_path)!r})
mgr = MmapManager(MemoryConfig(limit=64 * P, layer_size=P,
                               dimensions=(DimensionSpec(1, "A", 8 * P),)))
mgr.load_dimension(1)
threading.Thread(target=storm, daemon=True).start()
end = time.time() + 3
while time.time() < end:
    call(mgr.save_dimension, 1, target / "d1.mmkd")
stop.set()
time.sleep(0.05)
left = [p.name for p in target.iterdir() if p.name.endswith(".tmp")]
assert not left, left
"""
    )


# -- 3. a manager collected while another thread makes a block view -------------------------


def test_a_collected_manager_waits_for_a_block_view_in_progress() -> None:
    """The finalizer gave the budget back under a thread that was making a block view."""
    result = run_python(
        """
        import sys, threading, time
        import mmkit
        from mmkit.platform import PAGE_SIZE as P
        sys.setswitchinterval(1e-6)
        config = mmkit.MemoryConfig(limit=256 * P, layer_size=P,
                                    dimensions=(mmkit.DimensionSpec(1, "A", 4 * P),))
        for _ in range(60):
            mgr = mmkit.MmapManager(config)
            blocks = [mgr.allocate(64) for _ in range(200)]
            got = []
            def make():
                for block in blocks:
                    try:
                        got.append(block.view)
                    except mmkit.MmkitError:
                        pass
            thread = threading.Thread(target=make)
            thread.start()
            while len(got) < 20 and thread.is_alive():
                time.sleep(0)
            del mgr
            thread.join()
            for view in got:
                view[0] = 1  # every view handed out stays writable
            del blocks, got
        """,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


# -- 5. an exception unwinding past the last view of a retired copy ------------------------


def test_an_exception_unwinding_past_a_retired_copy_is_kept() -> None:
    """Releasing the last view of a retired copy during unwinding replaced the caller's
    exception with SystemError and leaked the copy for good."""
    config = MemoryConfig(limit=64 * PAGE_SIZE, layer_size=PAGE_SIZE,
                          dimensions=(DimensionSpec(1, "A", 4 * PAGE_SIZE),))  # fmt: skip
    mgr = MmapManager(config)
    mgr.load_dimension(1)
    mgr.update_layer(LayerId(1, 0), b"a" * PAGE_SIZE)

    def layers() -> object:
        yield LayerId(1, 0)
        mgr.update_layer(LayerId(1, 0), b"b" * PAGE_SIZE)  # retire the copy just viewed
        raise ValueError("the caller's own error")

    with pytest.raises(ValueError, match="own error"):
        [mgr.access_layer(layer) for layer in layers()]  # type: ignore[attr-defined]
    assert mgr.stats().pool_blocks == 1  # the live copy only: the retired one went back
    mgr.close()


# -- 7. a file changed in place is not trusted ------------------------------------------------


@pytest.mark.parametrize("how", ["payload byte", "same checksum", "touched"])
def test_a_file_changed_in_place_does_not_let_data_be_dropped(tmp_path: Path, how: str) -> None:
    """evict() trusted a header whose payload had been edited, or a forged CRC."""
    config = small_config(data_dir=tmp_path)
    mmkit.generate_dataset(tmp_path, config)
    path = storage.dimension_path(tmp_path, config.dimension(1))
    with MmapManager(config) as mgr:
        before = bytes(mgr.access_layer(LayerId(1, 0)))
        raw = bytearray(path.read_bytes())
        offset = storage.read_header_file(path).payload_offset
        if how == "payload byte":
            raw[offset] ^= 0xFF
        elif how == "same checksum":  # a swap of two equal-length runs keeps no CRC, so
            raw[offset : offset + 4] = raw[offset : offset + 4]  # rewrite identical bytes
        path.write_bytes(bytes(raw)) if how != "touched" else os.utime(path)
        assert not mgr.evict(1)
        assert bytes(mgr.access_layer(LayerId(1, 0))) == before


# -- 10. errors cross process boundaries ------------------------------------------------------


def _load_from(path: str) -> None:
    with MmapManager(small_config()) as mgr:
        mgr.load_dimension(1, path)


def test_every_error_pickles(tmp_path: Path) -> None:
    """DataFileError could not be unpickled, so a Pool result never arrived (a hang)."""
    errors = [cls("msg") for cls in vars(mmkit).values()
              if isinstance(cls, type) and issubclass(cls, mmkit.MmkitError)
              and cls is not DataFileError]  # fmt: skip
    errors.append(DataFileError(tmp_path / "x", "bad"))
    for error in errors:
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error) and str(again) == str(error)
    junk = tmp_path / "junk.mmkd"
    junk.write_bytes(b"junk" * 100)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        result = pool.apply_async(_load_from, (str(junk),))
        with pytest.raises(DataFileError, match="not an mmkit data file"):
            result.get(timeout=60)


# -- 12, 13, 14: clear errors, plain values, paths --------------------------------------------


def test_arguments_of_the_wrong_kind_are_mmkit_errors(tmp_path: Path) -> None:
    spec = small_config().dimension(1)

    class BytesPath:
        def __fspath__(self) -> bytes:
            return b"/tmp/x"

    with MmapManager(small_config()) as mgr:
        with pytest.raises(InvalidArgument):
            mgr.load_dimension(1, BytesPath())
        with pytest.raises(InvalidArgument):
            mgr.load_dimension(1, "")
    for data_dir in (BytesPath(), "a\0b", ""):
        with pytest.raises(ConfigError):
            MemoryConfig(data_dir=data_dir)  # type: ignore[arg-type]
    strided = memoryview(bytearray(8 * PAGE_SIZE))[::2]
    with pytest.raises(InvalidArgument, match="contiguous"):
        storage.write_dimension(tmp_path / "s.mmkd", spec, PAGE_SIZE, strided)
    with pytest.raises(InvalidArgument):
        storage.read_dimension(tmp_path / "s.mmkd", None, PAGE_SIZE, memoryview(bytearray(4)))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        storage.dimension_path(None, spec)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        storage.dimension_filename(None)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        storage.read_header(None, "x")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        storage.generate_dataset(tmp_path / "g", small_config(), progress=5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        MmapManager(small_config(), backend=object())  # type: ignore[arg-type]
    with pytest.raises(NotABuffer):
        mmkit.address_of(object())
    system = ConsciousnessSystem(small_config())
    try:
        for query in (123, None, b"x"):
            with pytest.raises(InvalidArgument):
                system.scan(query)  # type: ignore[arg-type]
        response = system.scan("how do I feel")
        assert pickle.loads(pickle.dumps(response)) == response
    finally:
        system.close()


def test_a_block_view_released_by_its_caller_is_made_again() -> None:
    with MmapManager(small_config()) as mgr:
        block = mgr.allocate(64)
        with block.view as view:
            view[:2] = b"ok"
        assert bytes(block.view[:2]) == b"ok"
        mgr.free(block)


def test_a_relative_source_survives_a_change_of_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = small_config()
    (tmp_path / "data").mkdir()
    storage.write_dimension(tmp_path / "data" / "d1.mmkd", config.dimension(1), PAGE_SIZE,
                            b"r" * (4 * PAGE_SIZE))  # fmt: skip
    monkeypatch.chdir(tmp_path)
    with MmapManager(config) as mgr:
        mgr.load_dimension(1, "data/d1.mmkd")
        assert mgr.evict(1)
        monkeypatch.chdir(Path(sys.prefix))
        assert bytes(mgr.access_layer(LayerId(1, 2))[:2]) == b"rr"
