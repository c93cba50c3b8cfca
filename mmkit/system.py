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
import hashlib
import os
import re
import time
import zlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import MappingProxyType, TracebackType

from mmkit.manager import MmapManager
from mmkit.values.config import MemoryConfig
from mmkit.values.errors import InvalidArgument, InvalidState
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


@dataclass(frozen=True, slots=True)
class QueryResponse:
    """What a query activated and read, and how long each part took (seconds)."""

    query: str
    dimensions_activated: tuple[DimensionId, ...]
    layers_scanned: int
    bytes_scanned: int
    digest: str
    dimension_times: Mapping[DimensionId, float]
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


def activate(text: str, config: MemoryConfig) -> tuple[DimensionId, ...]:
    """The dimensions a query concerns, in id order; at least two, chosen deterministically."""
    words = re.findall(r"[a-z]+", text.lower())
    chosen = {
        spec.id
        for spec in config.dimensions
        for stem in VOCABULARY.get(spec.name, ())
        if any(word.startswith(stem) for word in words)
    }
    ids = [spec.id for spec in config.dimensions]
    start = zlib.crc32(text.encode("utf-8", "surrogatepass"))
    needed = min(MIN_ACTIVATED, len(ids))
    step = 0
    while len(chosen) < needed:
        chosen.add(ids[(start + step) % len(ids)])
        step += 1
    return tuple(sorted(chosen))


class ConsciousnessSystem:
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
        self._closed = False

    @property
    def manager(self) -> MmapManager:
        return self._manager

    async def process_query(self, text: str) -> QueryResponse:
        """Activate the dimensions ``text`` concerns and scan them, off the event loop."""
        if not isinstance(text, str):
            raise InvalidArgument(f"a query is a str, not {type(text).__name__}")
        if self._closed:
            raise InvalidState("process_query: the system is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.scan, text)

    def scan(self, text: str) -> QueryResponse:
        """The work of one query, on the calling thread."""
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
            dimension_times=MappingProxyType(times),
            total_time=time.perf_counter() - started,
        )

    def close(self) -> None:
        """Stop the workers and give the memory back. Idempotent."""
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
        self.close()
