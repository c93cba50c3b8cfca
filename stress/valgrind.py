"""Memcheck on the interpreter running a short mmkit workload.

The run fails on an invalid read or write whose stack passes through ctypes/libffi or the
memory calls mmkit makes, or whose address lies in the manager's reservation; on the
workload not finishing; or on valgrind itself failing. Every error kind is counted.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import xml.etree.ElementTree as ET
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import mmkit
from mmkit import DimensionId, DimensionSpec, LayerId, MemoryConfig, MiB, MmapManager
from mmkit.platform import PAGE_SIZE
from mmkit.storage import dimension_path
from stress.common import ROOT, Options, Result, payload_crcs

SUPPRESSIONS = Path(__file__).with_name("python.supp")
TIMEOUT = 300.0
DONE = "workload finished"
SPAN = re.compile(r"^span (0x[0-9a-f]+) (0x[0-9a-f]+)$", re.MULTILINE)
ADDRESS = re.compile(r"Address (0x[0-9A-Fa-f]+)")
INVALID = frozenset({"InvalidRead", "InvalidWrite"})
MEMORY_CALLS = frozenset({"mmap", "mmap64", "munmap", "mprotect", "madvise", "mincore"})
FFI_MARKERS = ("libffi", "_ctypes")
WORKLOAD = (
    "generate a 2-dimension dataset; load from bytes and from a file; access; update with a "
    "view held; evict (refused, then done after a save); reload; allocate/free; stats "
    "(mincore); close with a view held; prefault + a cap with loads on demand; 4 threads "
    "reading during 20 updates"
)


@dataclass(frozen=True)
class Error:
    """One memcheck error: its kind, its stack (function, object) and the address it names."""

    kind: str
    frames: tuple[tuple[str, str], ...]
    address: int | None

    def through_mmkit(self) -> bool:
        """Whether the stack passes through ctypes/libffi or one of mmkit's memory calls."""
        return any(
            fn in MEMORY_CALLS or fn.startswith("ffi_") or any(m in obj for m in FFI_MARKERS)
            for fn, obj in self.frames
        )

    def summary(self) -> str:
        """The kind and the innermost frames, for the report."""
        stack = " < ".join(fn or Path(obj).name for fn, obj in self.frames[:6])
        where = f" at {self.address:#x}" if self.address is not None else ""
        return f"{self.kind}{where}: {stack}"


def _config(**overrides: object) -> MemoryConfig:
    """Two dimensions of page-sized layers in a 32-page budget."""
    fields: dict[str, object] = {
        "limit": 32 * PAGE_SIZE,
        "layer_size": PAGE_SIZE,
        "dimensions": (
            DimensionSpec(1, "Alpha", 4 * PAGE_SIZE),
            DimensionSpec(2, "Beta", 2 * PAGE_SIZE),
        ),
    }
    fields.update(overrides)
    return MemoryConfig(**fields)  # type: ignore[arg-type]


def _announce(mgr: MmapManager) -> None:
    """Print the span of the manager's reservation (with room for its alignment)."""
    start = min(region.address for region in mgr.regions())
    print(f"span {start - 4 * MiB:#x} {start + mgr.stats().reserved:#x}", flush=True)


def _expect(ok: bool) -> None:
    if not ok:
        raise AssertionError("the workload read the wrong bytes")


def _basic(directory: Path, files: dict[DimensionId, Path]) -> None:
    """Load from bytes and from a file, read, update, evict, save, reload, the pool, close."""
    mgr = MmapManager(_config())
    _announce(mgr)
    payload = bytes(range(256)) * (4 * PAGE_SIZE // 256)
    mgr.load_dimension(1, payload)
    mgr.load_dimension(2, files[DimensionId(2)])
    _expect(bytes(mgr.access_layer(LayerId(1, 1))) == payload[PAGE_SIZE : 2 * PAGE_SIZE])
    held = mgr.access_layer(LayerId(2, 1))
    before = zlib.crc32(held)
    mgr.update_layer(LayerId(2, 1), b"\x09" * PAGE_SIZE)
    _expect(bytes(mgr.access_layer(LayerId(2, 1))) == b"\x09" * PAGE_SIZE)
    _expect(not mgr.evict(2) and zlib.crc32(held) == before)
    del held
    mgr.save_dimension(2, directory / "saved.mmkd")
    _expect(mgr.evict(2) and not mgr.is_loaded(2))
    _expect(bytes(mgr.access_layer(LayerId(2, 1))) == b"\x09" * PAGE_SIZE)
    block = mgr.allocate(100, owner="valgrind")
    block.view[:5] = b"hello"
    _expect(bytes(block.view[:5]) == b"hello")
    mgr.free(block)
    _expect(mgr.stats().resident > 0)
    kept = mgr.access_layer(LayerId(1, 0))
    mgr.close()
    _expect(bytes(kept) == payload[:PAGE_SIZE])


def _capped(directory: Path) -> None:
    """Prefaulted, loading on demand from the data directory under a one-dimension cap."""
    config = _config(data_dir=directory, resident_limit=4 * PAGE_SIZE, prefault=True)
    with MmapManager(config) as mgr:
        _announce(mgr)
        specs = config.dimensions * 2
        for spec in specs:
            crcs = payload_crcs(dimension_path(directory, spec))
            for index, crc in enumerate(crcs):
                _expect(zlib.crc32(mgr.access_layer(LayerId(spec.id, index))) == crc)
        _expect(mgr.stats().evictions >= 3)


def _threads(directory: Path) -> None:
    """Four readers while the main thread updates a layer."""
    with MmapManager(_config(data_dir=directory)) as mgr:
        _announce(mgr)
        valid = {zlib.crc32(bytes([n]) * PAGE_SIZE) for n in range(4)}
        mgr.update_layer(LayerId(1, 0), bytes(PAGE_SIZE))
        seen: list[bool] = []

        def read() -> None:
            seen.extend(zlib.crc32(mgr.access_layer(LayerId(1, 0))) in valid for _ in range(20))

        readers = [threading.Thread(target=read) for _ in range(4)]
        for thread in readers:
            thread.start()
        for n in range(20):
            mgr.update_layer(LayerId(1, 0), bytes([n % 4]) * PAGE_SIZE)
        for thread in readers:
            thread.join()
        _expect(all(seen) and len(seen) == 80)


def workload() -> None:
    """What runs under memcheck: every kind of call mmkit makes, on tiny configurations."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        files = mmkit.generate_dataset(directory, _config(), seed=3)
        _basic(directory, files)
        _capped(directory)
        _threads(directory)
    print(DONE, flush=True)


def _command(xml: Path, log: Path) -> list[str]:
    return [
        "valgrind",
        "--tool=memcheck",
        "--error-exitcode=99",
        f"--suppressions={SUPPRESSIONS}",
        "--num-callers=40",
        "--leak-check=full",
        "--show-leak-kinds=definite",
        "--errors-for-leak-kinds=definite",
        "--xml=yes",
        f"--xml-file={xml}",
        f"--log-file={log}",
        sys.executable,
        "-c",
        "import stress.valgrind as v; v.workload()",
    ]


def suppressed(xml: Path) -> dict[str, int]:
    """How often each suppression matched."""
    found = ET.parse(xml).getroot().find("suppcounts")
    pairs = found.iter("pair") if found is not None else iter(())
    return {pair.findtext("name") or "?": int(pair.findtext("count") or 0) for pair in pairs}


def parse(xml: Path) -> list[Error]:
    """The errors of a memcheck XML log (suppressed ones are not in it)."""
    errors = []
    for node in ET.parse(xml).getroot().iter("error"):
        stack = node.find("stack")
        frames = tuple(
            (frame.findtext("fn") or "", frame.findtext("obj") or "")
            for frame in (stack.iter("frame") if stack is not None else ())
        )
        text = " ".join(t.text or "" for t in node.iter("auxwhat"))
        found = ADDRESS.search(text)
        address = int(found.group(1), 16) if found else None
        errors.append(Error(node.findtext("kind") or "?", frames, address))
    return errors


def _spans(stdout: str) -> list[tuple[int, int]]:
    return [(int(a, 16), int(b, 16)) for a, b in SPAN.findall(stdout)]


def _judge(result: Result, errors: list[Error], spans: list[tuple[int, int]]) -> None:
    counts = Counter(error.kind for error in errors)
    result.figures["errors by kind"] = (
        ", ".join(f"{k} {n}" for k, n in sorted(counts.items())) or "none"
    ) + " (only invalid reads and writes are judged)"

    def in_mmkit(error: Error) -> bool:
        address = error.address
        return address is not None and any(lo <= address < hi for lo, hi in spans)

    bad = [e for e in errors if e.kind in INVALID and (e.through_mmkit() or in_mmkit(e))]
    result.check(
        f"no invalid read/write through ctypes, libffi, mmap/mprotect/madvise/mincore or in the "
        f"reservation ({len(bad)} of {sum(counts[k] for k in INVALID)} invalid accesses)",
        not bad,
    )
    result.notes += [error.summary() for error in bad[:10]]


def run(options: Options) -> Result:
    """Run the workload under memcheck with CPython's allocator set to malloc."""
    del options
    result = Result("valgrind")
    if shutil.which("valgrind") is None:
        result.skipped = "valgrind not installed"
        print("skipped: valgrind not installed")
        return result
    result.figures["workload"] = WORKLOAD
    with tempfile.TemporaryDirectory(prefix="mmkit-valgrind-") as tmp:
        xml, log = Path(tmp) / "memcheck.xml", Path(tmp) / "memcheck.log"
        try:
            done = subprocess.run(
                _command(xml, log),
                cwd=ROOT,
                env={**os.environ, "PYTHONMALLOC": "malloc"},
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            result.check(f"memcheck finished within {TIMEOUT:.0f} s", False)
            return result
        result.figures["exit code"] = f"{done.returncode} (99: memcheck reported errors)"
        if not result.check(
            f"the workload ran to the end under memcheck (exit {done.returncode})",
            DONE in done.stdout and done.returncode in (0, 99),
        ):
            result.notes += (done.stderr.strip().splitlines() + log.read_text().splitlines())[-20:]
        if not result.check("memcheck wrote its XML log", xml.exists()):
            return result
        counts = suppressed(xml)
        result.figures["suppressed"] = (
            ", ".join(f"{name} {n}" for name, n in sorted(counts.items())) or "none"
        )
        _judge(result, parse(xml), _spans(done.stdout))
    return result
