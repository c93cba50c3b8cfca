"""The query system from the spec: a query activates dimensions and scans their layers.

Each dimension has a small vocabulary (``VOCABULARY``); the words of a query pick the
dimensions it concerns, and every query activates at least two. Scanning reads every
layer of the activated dimensions zero-copy, one view at a time, with ``zlib.crc32``,
which releases the GIL: queries run off the event loop on a thread pool, so all cores
work, and a query never holds more than one layer, so it runs under a small
``resident_limit`` too.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import os
import re
import threading
import time
import zlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import MappingProxyType, TracebackType

from mmkit.manager import MmapManager
from mmkit.values.config import MemoryConfig
from mmkit.values.errors import InvalidArgument, InvalidState, OwnsMemory
from mmkit.values.ids import DimensionId, LayerId

VOCABULARY: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "Emotion": ("feel", "emotion", "mood", "happy", "sad", "angry", "fear", "love", "joy"),
        "Cognition": ("think", "thought", "reason", "logic", "understand", "know", "learn",
                      "complex", "idea"),
        "Intention": ("want", "goal", "plan", "intend", "purpose", "aim", "decide", "will"),
        "Social": ("people", "friend", "social", "team", "community", "relation", "together"),
        "Temporal": ("time", "when", "past", "future", "now", "history", "schedule", "today"),
        "Philosophy": ("why", "meaning", "truth", "exist", "philosoph", "mind", "conscious"),
        "Technical": ("code", "system", "technical", "software", "compute", "algorithm",
                      "query", "data", "memory"),
        "Creative": ("create", "creative", "art", "design", "imagine", "story", "music"),
        "Ethical": ("right", "wrong", "ethic", "moral", "fair", "should", "harm", "justice"),
        "Meta": ("meta", "self", "reflect", "aware", "introspect"),
        "Ecological": ("nature", "climate", "ecolog", "environment", "planet", "earth"),
        "Positivity": ("good", "hope", "positive", "great", "grateful", "optimis", "kind"),
        "Balance": ("balance", "calm", "moderate", "stable", "harmony", "equilibrium"),
        "Security": ("attack", "secure", "security", "threat", "safe", "risk", "protect",
                     "vulnerab"),
    }
)  # fmt: skip
"""Stems per dimension name: a query word activates a dimension when it starts with one."""

MIN_ACTIVATED = 2

MAX_QUERY_LENGTH = 64 * 1024
"""The longest query, in characters: routing one this long takes a few milliseconds."""


@dataclass(frozen=True, slots=True)
class QueryResponse:
    """What a query activated and read, and how long each part took (seconds)."""

    query: str
    dimensions_activated: tuple[DimensionId, ...]
    layers_scanned: int
    bytes_scanned: int
    digest: str
    dimension_times: dict[DimensionId, float]
    total_time: float

    def render(self) -> str:
        names = ", ".join(str(d) for d in self.dimensions_activated)
        lines = [
            f"query        {self.query!r}",
            f"activated    {names}",
            f"scanned      {self.layers_scanned} layers, {self.bytes_scanned} bytes",
            f"digest       {self.digest}",
        ]
        lines += [
            f"  {dimension}      {seconds * 1e3:8.2f} ms"
            for dimension, seconds in self.dimension_times.items()
        ]
        lines.append(f"total        {self.total_time * 1e3:8.2f} ms")
        return "\n".join(lines)


@functools.lru_cache(maxsize=16)
def _router(
    names: tuple[tuple[DimensionId, str], ...],
) -> tuple[re.Pattern[str] | None, Mapping[str, frozenset[DimensionId]]]:
    """A regex finding the longest stem at each word start, and the dimensions each stem means.

    A stem means its own and those of the stems it starts with: a word starts with them all."""
    owners: dict[str, set[DimensionId]] = {}
    for dimension, name in names:
        for stem in VOCABULARY.get(name, ()):
            owners.setdefault(stem, set()).add(dimension)
    meaning = {
        stem: frozenset(d for other, ids in owners.items() if stem.startswith(other) for d in ids)
        for stem in owners
    }
    # Grouped by first letter, so a word start tries one group; alternatives are tried in
    # order, longest first, so the longest stem there wins.
    stems = sorted(owners, key=lambda stem: (stem[0], -len(stem), stem))
    groups = "|".join(
        re.escape(letter) + "(?:" + "|".join(re.escape(stem[1:]) for stem in group) + ")"
        for letter, group in itertools.groupby(stems, key=lambda stem: stem[0])
    )
    pattern = re.compile(rf"(?<![a-z])(?:{groups})") if stems else None
    return pattern, meaning


def _check_length(text: str) -> None:
    if len(text) > MAX_QUERY_LENGTH:
        raise InvalidArgument(f"a query is at most {MAX_QUERY_LENGTH} characters, not {len(text)}")


def activate(text: str, config: MemoryConfig) -> tuple[DimensionId, ...]:
    """The dimensions a query concerns, in id order; at least two, chosen deterministically.

    Linear in the text, which is at most ``MAX_QUERY_LENGTH`` characters (else ``InvalidArgument``).
    """
    _check_length(text)
    pattern, meaning = _router(tuple((spec.id, spec.name) for spec in config.dimensions))
    chosen: set[DimensionId] = set()
    if pattern is not None:
        for stem in set(pattern.findall(text.lower())):
            chosen |= meaning[stem]
    ids = [spec.id for spec in config.dimensions]
    start = zlib.crc32(text.encode("utf-8", "surrogatepass"))
    needed = min(MIN_ACTIVATED, len(ids))
    step = 0
    while len(chosen) < needed:
        chosen.add(ids[(start + step) % len(ids)])
        step += 1
    return tuple(sorted(chosen))


class ConsciousnessSystem(OwnsMemory):
    """Answers queries over a manager's dimensions; also an async context manager."""

    def __init__(self, config: MemoryConfig | None = None) -> None:
        self._manager = MmapManager(config)
        self._config = self._manager.config
        try:
            if self._config.data_dir is None:
                for spec in self._config.dimensions:
                    self._manager.load_dimension(spec.id)
        except BaseException:
            self._manager.close()
            raise
        self._executor = ThreadPoolExecutor(
            max_workers=os.cpu_count() or 2, thread_name_prefix="mmkit-query"
        )
        self._lock = threading.Lock()
        self._closed = False

    @property
    def manager(self) -> MmapManager:
        return self._manager

    def _require_open(self, operation: str) -> None:
        if self._closed:
            raise InvalidState(f"{operation}: the system is closed")

    async def process_query(self, text: str) -> QueryResponse:
        """Activate the dimensions ``text`` concerns and scan them, off the event loop."""
        if not isinstance(text, str):
            raise InvalidArgument(f"a query is a str, not {type(text).__name__}")
        _check_length(text)
        self._require_open("process_query")
        try:
            future = self._executor.submit(self._scan, text)
        except RuntimeError:
            # ``close`` on another thread shut the executor down since the check above.
            if not self._closed:
                raise
            raise InvalidState("process_query: the system is closed") from None
        return await asyncio.wrap_future(future)

    def scan(self, text: str) -> QueryResponse:
        """The work of one query, on the calling thread."""
        if not isinstance(text, str):
            raise InvalidArgument(f"a query is a str, not {type(text).__name__}")
        self._require_open("scan")
        try:
            return self._scan(text)
        except InvalidState:
            if not self._closed:
                raise
            raise InvalidState("scan: the system is closed") from None

    def _scan(self, text: str) -> QueryResponse:
        started = time.perf_counter()
        activated = activate(text, self._config)
        digest = hashlib.sha256()
        times: dict[DimensionId, float] = {}
        layers = scanned = 0
        for dimension in activated:
            began = time.perf_counter()
            for index in range(self._config.layer_count(dimension)):
                view = self._manager.access_layer(LayerId(dimension, index))
                crc = zlib.crc32(view)
                scanned += view.nbytes
                view.release()
                digest.update(b"%d:%d:%08x;" % (dimension, index, crc))
                layers += 1
            times[dimension] = time.perf_counter() - began
        return QueryResponse(
            query=text,
            dimensions_activated=activated,
            layers_scanned=layers,
            bytes_scanned=scanned,
            digest=digest.hexdigest(),
            dimension_times=times,
            total_time=time.perf_counter() - started,
        )

    def close(self) -> None:
        """Let the queries already submitted finish, then give the memory back. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._executor.shutdown(wait=True)
        self._manager.close()

    async def __aenter__(self) -> ConsciousnessSystem:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close on a worker thread: waiting for the queries in flight must not block the loop."""
        await asyncio.get_running_loop().run_in_executor(None, self.close)
