"""The query system: activation, deterministic scans, concurrency and memory pressure."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import mmkit
from mmkit import DimensionId, InvalidArgument, InvalidState, LayerId, MemoryConfig, MiB
from mmkit.system import VOCABULARY, ConsciousnessSystem, QueryResponse, activate
from tests.test_cli import mmkit as run_mmkit


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("system-data")
    mmkit.generate_dataset(directory)
    return directory


def names(ids: tuple[DimensionId, ...]) -> list[str]:
    config = MemoryConfig()
    return [config.dimension(d).name for d in ids]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("How do I feel about this attack?", ["Emotion", "Security"]),
        ("my mood and the threat model", ["Emotion", "Security"]),
        ("complex query", ["Cognition", "Technical"]),
        ("Feelings, memory and creative music", ["Emotion", "Technical", "Creative"]),
    ],
)
def test_words_activate_their_dimensions(text: str, expected: list[str]) -> None:
    assert names(activate(text, MemoryConfig())) == expected


@pytest.mark.parametrize("text", ["", "zzz", "test", "!!!", "é"])
def test_every_query_activates_at_least_two(text: str) -> None:
    activated = activate(text, MemoryConfig())
    assert len(activated) >= 2
    assert activated == activate(text, MemoryConfig())
    assert list(activated) == sorted(activated)


def test_every_dimension_has_a_vocabulary() -> None:
    assert set(VOCABULARY) == {spec.name for spec in MemoryConfig().dimensions}


def test_full_query_flow() -> None:
    async def run() -> QueryResponse:
        async with ConsciousnessSystem() as system:
            return await system.process_query("complex query")

    response = asyncio.run(run())
    assert len(response.dimensions_activated) > 1
    assert response.layers_scanned == 16 + 12
    assert response.bytes_scanned == 28 * MiB
    assert set(response.dimension_times) == set(response.dimensions_activated)
    assert response.total_time >= sum(response.dimension_times.values())
    assert "D02" in response.render()


def test_the_same_query_on_the_same_data_gives_the_same_answer(data: Path) -> None:
    async def run(config: MemoryConfig, text: str) -> str:
        async with ConsciousnessSystem(config) as system:
            return (await system.process_query(text)).digest

    on_files = asyncio.run(run(MemoryConfig(data_dir=data), "feel the threat"))
    assert on_files == asyncio.run(run(MemoryConfig(data_dir=data), "feel the threat"))
    assert on_files != asyncio.run(run(MemoryConfig(), "feel the threat"))
    assert on_files != asyncio.run(run(MemoryConfig(data_dir=data), "time and nature"))


def test_an_update_changes_the_answer(data: Path) -> None:
    async def run() -> tuple[str, str]:
        async with ConsciousnessSystem(MemoryConfig(data_dir=data)) as system:
            before = await system.process_query("attack")
            system.manager.update_layer(LayerId(14, 0), bytes(MiB))
            after = await system.process_query("attack")
            return before.digest, after.digest

    before, after = asyncio.run(run())
    assert before != after


def test_128_concurrent_queries(data: Path) -> None:
    async def run() -> list[QueryResponse]:
        async with ConsciousnessSystem(MemoryConfig(data_dir=data)) as system:
            return await asyncio.gather(
                *(system.process_query(f"query {n} about feelings") for n in range(128))
            )

    responses = asyncio.run(run())
    assert len(responses) == 128
    by_dimensions: dict[tuple[DimensionId, ...], str] = {}
    for response in responses:
        assert by_dimensions.setdefault(response.dimensions_activated, response.digest) == (
            response.digest
        )


def test_memory_pressure_handling(data: Path) -> None:
    config = MemoryConfig(data_dir=data, resident_limit=24 * MiB)

    async def run() -> tuple[list[QueryResponse], mmkit.Stats]:
        async with ConsciousnessSystem(config) as system:
            texts = ["test", "feel", "attack", "time", "nature", "why", "code", "art"]
            results = [await system.process_query(texts[n % 8]) for n in range(100)]
            return results, system.manager.stats()

    results, stats = asyncio.run(run())
    assert len(results) == 100
    assert stats.evictions > 0
    assert stats.data <= 24 * MiB + 16 * MiB
    for first, again in zip(results, results[8:], strict=False):
        assert first.digest == again.digest


def test_bad_input_and_closed_system() -> None:
    async def run() -> None:
        system = ConsciousnessSystem(mmkit_small())
        with pytest.raises(InvalidArgument):
            await system.process_query(42)  # type: ignore[arg-type]
        system.close()
        system.close()
        with pytest.raises(InvalidState):
            await system.process_query("x")

    asyncio.run(run())


def mmkit_small() -> MemoryConfig:
    from tests.conftest import small_config

    return small_config()


def test_query_command(data: Path) -> None:
    result = run_mmkit("query", "how do I feel about this attack", "--data", str(data))
    assert result.returncode == 0, result.stderr
    assert "D01, D14" in result.stdout and "digest" in result.stdout
    limited = run_mmkit(
        "query", "how do I feel about this attack", "--data", str(data), "--resident-limit", "8"
    )
    assert limited.returncode == 0, limited.stderr
    assert (
        limited.stdout.split("digest")[1].split()[0] == result.stdout.split("digest")[1].split()[0]
    )
