"""Closing the query system: off the event loop, and ``InvalidState`` on every path after."""

from __future__ import annotations

import asyncio
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import mmkit
from mmkit import InvalidState, MemoryConfig
from mmkit.system import ConsciousnessSystem, QueryResponse
from tests.conftest import small_config


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("close-data")
    mmkit.generate_dataset(directory)
    return directory


def test_the_event_loop_keeps_running_while_aexit_waits_for_queries(data: Path) -> None:
    async def run() -> tuple[int, list[QueryResponse]]:
        system = ConsciousnessSystem(MemoryConfig(data_dir=data))
        await system.__aenter__()
        queries = [
            asyncio.ensure_future(system.process_query(f"feel the threat {n}")) for n in range(64)
        ]
        await asyncio.sleep(0)  # every query is on the thread pool now
        ticks = 0
        stopped = False

        async def ticker() -> None:
            nonlocal ticks
            while not stopped:
                ticks += 1
                await asyncio.sleep(0)

        ticking = asyncio.create_task(ticker())
        before = ticks
        await system.__aexit__(None, None, None)
        during = ticks - before
        stopped = True
        await ticking
        return during, await asyncio.gather(*queries)

    during, responses = asyncio.run(run())
    # A close that blocked the loop would let the ticker run only after it returned.
    assert during > 0
    assert len({r.digest for r in responses}) == 1 and len(responses) == 64


def test_a_close_between_the_check_and_the_submit_is_invalid_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    system = ConsciousnessSystem(small_config())
    submit = ThreadPoolExecutor.submit

    def close_first(executor: ThreadPoolExecutor, fn: object, /, *args: object) -> object:
        if getattr(fn, "__self__", None) is system:
            closer = threading.Thread(target=system.close)
            closer.start()
            closer.join()
        return submit(executor, fn, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(ThreadPoolExecutor, "submit", close_first)
    with pytest.raises(InvalidState, match="the system is closed"):
        asyncio.run(system.process_query("feel"))


def test_threads_querying_while_another_closes_all_end_in_invalid_state() -> None:
    system = ConsciousnessSystem(small_config())
    count = 8
    ready = threading.Barrier(count + 1)
    endings: list[BaseException | None] = [None] * count

    def querying(slot: int) -> None:
        first = True

        async def forever() -> None:
            nonlocal first
            while True:
                await system.process_query(f"feel {slot}")
                if first:
                    first = False
                    ready.wait()

        try:
            asyncio.run(forever())
        except BaseException as exc:
            endings[slot] = exc
            if first:
                ready.abort()  # failed before the barrier: do not leave the others waiting

    def scanning(slot: int) -> None:
        first = True
        try:
            while True:
                system.scan(f"attack {slot}")
                if first:
                    first = False
                    ready.wait()
        except BaseException as exc:
            endings[slot] = exc
            if first:
                ready.abort()

    threads = [
        threading.Thread(target=querying if n % 2 else scanning, args=(n,)) for n in range(count)
    ]
    for thread in threads:
        thread.start()
    try:
        ready.wait()  # every thread has answered once and is still going
    finally:
        system.close()
    for thread in threads:
        thread.join()
    for ending in endings:
        assert isinstance(ending, InvalidState), "".join(traceback.format_exception(ending))
        assert "the system is closed" in str(ending)
