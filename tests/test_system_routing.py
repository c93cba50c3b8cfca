"""Query routing: linear in the text, bounded in length, and the same answers as before."""

from __future__ import annotations

import asyncio
import re
import sys
import zlib
from collections.abc import Callable
from types import FrameType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmkit import DimensionId, InvalidArgument, MemoryConfig
from mmkit.system import MAX_QUERY_LENGTH, MIN_ACTIVATED, VOCABULARY, ConsciousnessSystem, activate
from tests.conftest import small_config

STEMS = sorted({stem for stems in VOCABULARY.values() for stem in stems})


def reference(text: str, config: MemoryConfig) -> tuple[DimensionId, ...]:
    """Routing as it was written first: every stem against every word."""
    words = re.findall(r"[a-z]+", text.lower())
    chosen = {
        spec.id
        for spec in config.dimensions
        for stem in VOCABULARY.get(spec.name, ())
        if any(word.startswith(stem) for word in words)
    }
    ids = [spec.id for spec in config.dimensions]
    start = zlib.crc32(text.encode("utf-8", "surrogatepass"))
    step = 0
    while len(chosen) < min(MIN_ACTIVATED, len(ids)):
        chosen.add(ids[(start + step) % len(ids)])
        step += 1
    return tuple(sorted(chosen))


def adversarial(length: int) -> str:
    """Distinct words, each a stem less its last letter plus a unique tail: no early match."""
    tails = (
        format(n, "x").translate(str.maketrans("0123456789", "ghijklmnop")) for n in range(length)
    )
    words: list[str] = []
    size = -1
    for tail in tails:
        word = STEMS[len(words) % len(STEMS)][:-1] + "q" + tail
        if size + 1 + len(word) > length:
            break
        words.append(word)
        size += 1 + len(word)
    return " ".join(words)


def calls_made(work: Callable[[], object]) -> int:
    """How many Python and C function calls ``work`` makes, counted by the profiler."""
    count = 0

    def profile(frame: FrameType, event: str, arg: object) -> None:
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        work()
    finally:
        sys.setprofile(previous)
    return count


def test_a_maximal_adversarial_query_routes_in_fewer_calls_than_it_has_words() -> None:
    text = adversarial(MAX_QUERY_LENGTH)
    assert MAX_QUERY_LENGTH - 64 < len(text) <= MAX_QUERY_LENGTH
    words = text.split()
    assert len(set(words)) == len(words) > 5000
    config = MemoryConfig()
    activate(text, config)  # build what routing caches, so only the routing itself counts
    # Matching every stem against every word made about one call per stem per word.
    assert calls_made(lambda: activate(text, config)) < len(words)
    assert activate(text, config) == reference(text, config)


def test_the_longest_query_is_accepted_and_one_more_character_is_refused() -> None:
    config = MemoryConfig()
    assert len(activate("f" * MAX_QUERY_LENGTH, config)) >= MIN_ACTIVATED
    with pytest.raises(InvalidArgument, match=str(MAX_QUERY_LENGTH)):
        activate("f" * (MAX_QUERY_LENGTH + 1), config)


def test_a_huge_query_is_refused_before_any_work() -> None:
    huge = "feel the threat of the complex system " * 280_000  # 10.6 MB, as reported

    async def run() -> None:
        system = ConsciousnessSystem(small_config())
        try:
            with pytest.raises(InvalidArgument, match="at most"):
                await system.process_query(huge)
            with pytest.raises(InvalidArgument, match="at most"):
                system.scan(huge)
        finally:
            system.close()

    asyncio.run(run())


FRAGMENTS = st.sampled_from(
    [*STEMS, *(stem[:-1] for stem in STEMS), "harmony", "ing", "s", "ed", "X", "İ", "K", "ß"]
)
SEPARATORS = st.sampled_from([" ", "", "-", "1", "é", "\n", "_"])


@given(st.lists(st.tuples(FRAGMENTS, SEPARATORS, st.booleans()), max_size=12))
def test_routing_matches_the_first_implementation(pieces: list[tuple[str, str, bool]]) -> None:
    text = "".join(
        (fragment.upper() if upper else fragment) + sep for fragment, sep, upper in pieces
    )
    for config in (MemoryConfig(), small_config()):
        assert activate(text, config) == reference(text, config)


def test_a_word_starting_with_two_stems_activates_both_dimensions() -> None:
    config = MemoryConfig()
    names = {config.dimension(d).name for d in activate("harmony", config)}
    assert names == {"Ethical", "Balance"}  # "harm" and "harmony"
