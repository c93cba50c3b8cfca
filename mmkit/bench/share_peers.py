"""Four ways for N processes to read one dataset, as the halves that run in spawned processes.

An owner makes the one copy and sends what readers open it by, then waits to be told it is
done; a reader opens it, reads every layer against the CRC-32 its file stores, sends how
many it read, and holds on until told it is done, so that all of them are measured while
they map the data. "mmkit shared": a shared manager and ``mmkit.attach``. "shared_memory":
``multiprocessing.shared_memory``. "private copies": no owner, each reader loads its own
copy into a private manager (which checks every layer). "lmdb": one key per layer, read
with ``buffers=True`` (zero-copy), where py-lmdb is installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any, NamedTuple

from mmkit.bench.spawned import Work
from mmkit.manager import MmapManager
from mmkit.manager.reader import attach
from mmkit.storage import dimension_path, read_dimension
from mmkit.values.config import DimensionSpec, MemoryConfig
from mmkit.values.ids import LayerId
from mmkit.values.share import ShareHandle


class Layers(NamedTuple):
    """Every layer of the dataset in file order, with the CRC-32 its file stores."""

    size: int
    checksums: tuple[tuple[LayerId, int], ...]


class Peer(NamedTuple):
    """One way to share: its owner (None: every reader makes its own copy) and its reader."""

    name: str
    owner: Work | None
    reader: Work


def _verify(read: Callable[[int, LayerId], memoryview], layers: Layers) -> int:
    """Read every layer through ``read(position, layer)``, check it, and count them."""
    for position, (layer, crc) in enumerate(layers.checksums):
        if zlib.crc32(read(position, layer)) != crc:
            raise ValueError(f"{layer} does not match the checksum its file stores")
    return len(layers.checksums)


def _payloads(directory: Path) -> Iterator[tuple[DimensionSpec, memoryview]]:
    """Each dimension's payload, read from its file and checked layer by layer."""
    config = MemoryConfig()
    for spec in config.dimensions:
        payload = memoryview(bytearray(spec.size))
        read_dimension(dimension_path(directory, spec), spec, config.layer_size, payload)
        yield spec, payload


def idle(link: Connection) -> None:
    """A worker that holds no data: what an interpreter with these imports costs."""
    link.send(0)
    link.recv()


# -- mmkit --------------------------------------------------------------------------------------


def mmkit_owner(link: Connection, directory: Path, layers: Layers) -> None:
    config = MemoryConfig(data_dir=directory, shared=True)
    with MmapManager(config) as manager:
        for spec in config.dimensions:
            manager.load_dimension(spec.id)
        link.send(manager.share())
        link.recv()


def mmkit_reader(link: Connection, handle: ShareHandle, layers: Layers) -> None:
    with attach(handle) as reader:
        link.send(_verify(lambda _, layer: reader.access_layer(layer), layers))
        link.recv()


# -- multiprocessing.shared_memory --------------------------------------------------------------


def open_shared_memory(name: str) -> SharedMemory:
    """Attach to a segment by name without leaving it to a resource tracker to unlink."""
    if sys.version_info >= (3, 13):
        return SharedMemory(name=name, track=False)
    # Before 3.13 attaching registers the name with the resource tracker, which unlinks what
    # is still registered when it ends. A spawned worker reports to its parent's tracker,
    # whose registry is a set: this second registration changes nothing, and the owner's
    # unlink() takes the name out once.
    return SharedMemory(name=name)


def shm_owner(link: Connection, directory: Path, layers: Layers) -> None:
    config = MemoryConfig()
    memory = SharedMemory(create=True, size=config.dimensions_size)
    whole = memory.buf
    assert whole is not None  # None only once closed
    try:
        offset = 0
        for spec in config.dimensions:
            with whole[offset : offset + spec.size] as target:
                read_dimension(dimension_path(directory, spec), spec, layers.size, target)
            offset += spec.size
        link.send(memory.name)
        link.recv()
    finally:
        memory.close()
        memory.unlink()


def shm_reader(link: Connection, name: str, layers: Layers) -> None:
    memory = open_shared_memory(name)
    whole, size = memory.buf, layers.size
    assert whole is not None  # None only once closed
    try:
        link.send(_verify(lambda at, _: whole[at * size : (at + 1) * size], layers))
        link.recv()
    finally:
        memory.close()


# -- private copies -----------------------------------------------------------------------------


def private_reader(link: Connection, directory: Path, layers: Layers) -> None:
    config = MemoryConfig(data_dir=directory)
    with MmapManager(config) as manager:
        for spec in config.dimensions:
            manager.load_dimension(spec.id)
        link.send(len(layers.checksums))
        link.recv()


# -- lmdb ---------------------------------------------------------------------------------------


def has_lmdb() -> bool:
    """Whether py-lmdb is installed (an optional peer: ``pip install 'mmkit[bench]'``)."""
    return importlib.util.find_spec("lmdb") is not None


def _key(layer: LayerId) -> bytes:
    return f"{layer.dimension}/{layer.index}".encode()


def _lmdb_read(env: Any, layers: Layers) -> int:
    with env.begin(buffers=True) as txn:
        return _verify(lambda _, layer: txn.get(_key(layer)), layers)


def lmdb_owner(link: Connection, directory: Path, layers: Layers) -> None:
    lmdb = importlib.import_module("lmdb")
    size = len(layers.checksums) * layers.size
    with tempfile.TemporaryDirectory(prefix="mmkit-bench-lmdb-") as where:
        env = lmdb.open(where, map_size=2 * size, sync=False, metasync=False)
        try:
            with env.begin(write=True) as txn:
                for spec, payload in _payloads(directory):
                    for index in range(spec.size // layers.size):
                        start = index * layers.size
                        txn.put(_key(LayerId(spec.id, index)), payload[start : start + layers.size])
                    payload.release()
            _lmdb_read(env, layers)  # the owner maps the pages too, as the other owners do
            link.send(where)
            link.recv()
        finally:
            env.close()


def lmdb_reader(link: Connection, where: str, layers: Layers) -> None:
    lmdb = importlib.import_module("lmdb")
    env = lmdb.open(where, readonly=True)
    try:
        link.send(_lmdb_read(env, layers))
        link.recv()
    finally:
        env.close()


def peers() -> list[Peer]:
    """The mechanisms to compare, mmkit first; lmdb only where it is installed."""
    found = [
        Peer("mmkit shared", mmkit_owner, mmkit_reader),
        Peer("shared_memory", shm_owner, shm_reader),
        Peer("private copies", None, private_reader),
    ]
    if has_lmdb():
        found.append(Peer("lmdb", lmdb_owner, lmdb_reader))
    return found
