"""Worker processes started with multiprocessing's "spawn", each with a pipe, every wait bounded.

``Spawned`` starts workers on one top-level function, which gets its pipe and arguments.
``gather`` takes one message from each by the group's deadline and raises ``WorkerFailed``
naming the first worker that died, reported an error or did not answer in time. A worker
that raises sends its error back as ``Failure`` before it exits. ``close`` hangs up, lets
the workers exit until the deadline (after an error, not at all), and stops the rest.
"""

from __future__ import annotations

import multiprocessing
import signal
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

from mmkit.values.errors import MmkitError

if TYPE_CHECKING:
    from multiprocessing.connection import _ConnectionBase  # a Connection, or a PipeConnection

_SIGMASK = getattr(signal, "pthread_sigmask", None)  # POSIX only, as are the two below
_SIG_BLOCK: int = getattr(signal, "SIG_BLOCK", 0)
_SIG_SETMASK: int = getattr(signal, "SIG_SETMASK", 0)

STOP_SECONDS = 5.0
"""How long a worker that outlived the deadline gets to exit on SIGTERM before SIGKILL."""

Work = Callable[..., None]


class WorkerFailed(MmkitError):
    """A worker died, reported an error, or did not answer before the deadline."""


class Failure(NamedTuple):
    """What a worker sends instead of its answer when it fails."""

    error: str


def _serve(work: Work, link: Connection, args: tuple[Any, ...]) -> None:
    """A worker's body: ``work(link, *args)``, its error sent back to the parent."""
    try:
        work(link, *args)
    except (KeyboardInterrupt, EOFError):
        pass  # Ctrl-C (where SIGINT cannot be blocked), or the parent hung up: it reports why
    except (MmkitError, OSError) as exc:
        _fail(link, exc)
    except Exception as exc:
        traceback.print_exc()  # a bug, not a condition: show where before the parent stops us
        _fail(link, exc)


def _fail(link: Connection, exc: BaseException) -> NoReturn:
    with suppress(OSError):
        link.send(Failure(f"{type(exc).__name__}: {exc}"))
    raise SystemExit(1) from None


@contextmanager
def _sigint_held() -> Iterator[None]:
    """SIGINT blocked while a worker starts, where the OS can block it: the start is never cut
    short, and the worker inherits the block, so Ctrl-C at a terminal reaches the parent only,
    which then stops its workers. A Ctrl-C meanwhile lands as the block is lifted."""
    if _SIGMASK is None:
        yield
        return
    # A spawn starts multiprocessing's resource tracker first if it is not running, and
    # unblocks SIGINT after starting it: so start it now, before SIGINT is blocked.
    resource_tracker.ensure_running()
    held = _SIGMASK(_SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        _SIGMASK(_SIG_SETMASK, held)


def _death(process: BaseProcess) -> str:
    process.join(STOP_SECONDS)
    code = process.exitcode
    if code is not None and code < 0:
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Spawned:
    """A group of worker processes, each with its own pipe, under one deadline."""

    def __init__(self, name: str, seconds: float) -> None:
        self._name = name
        self._seconds = seconds
        self._deadline = time.monotonic() + seconds
        self._context = multiprocessing.get_context("spawn")
        self._processes: list[BaseProcess] = []
        self._links: list[_ConnectionBase[Any, Any]] = []

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self._processes if process.pid is not None]

    def start(self, work: Work, arguments: Sequence[tuple[Any, ...]]) -> None:
        """One worker per tuple of arguments, each running ``work(link, *args)``."""
        for args in arguments:
            ours, theirs = self._context.Pipe()
            number = len(self._processes) + 1
            process = self._context.Process(
                target=_serve,
                args=(work, theirs, args),
                name=f"mmkit-{self._name}-{number}",
                daemon=True,
            )
            with _sigint_held():
                try:
                    process.start()
                finally:
                    theirs.close()  # the worker's end is its own: once it exits, ours reads EOF
                self._links.append(ours)
                self._processes.append(process)

    def gather(self, stage: str) -> list[Any]:
        """One message from every worker, in order; ``WorkerFailed`` for the first that fails."""
        answers: dict[int, Any] = {}
        waiting = dict(enumerate(self._processes))
        while waiting:
            left = self._deadline - time.monotonic()
            events = [self._links[n] for n in waiting] + [p.sentinel for p in waiting.values()]
            ready = wait(events, timeout=max(left, 0))
            if not ready:
                raise WorkerFailed(
                    f"{len(waiting)} of {len(self._processes)} {self._name}s did not finish "
                    f"{stage} within {self._seconds:.0f} s"
                )
            for n, process in list(waiting.items()):
                link = self._links[n]
                if link not in ready and process.sentinel not in ready:
                    continue
                who = f"{self._name} {n + 1} (process {process.pid})"
                try:
                    answer = link.recv()
                except EOFError:
                    raise WorkerFailed(f"{who} {_death(process)} while {stage}") from None
                if isinstance(answer, Failure):
                    raise WorkerFailed(f"{who} failed while {stage}: {answer.error}")
                answers[n] = answer
                del waiting[n]
        return [answers[n] for n in range(len(self._processes))]

    def send(self, message: object) -> None:
        """The same message to every worker; ``WorkerFailed`` naming one that is gone."""
        for n, (link, process) in enumerate(zip(self._links, self._processes, strict=True), 1):
            try:
                link.send(message)
            except (BrokenPipeError, ConnectionResetError):
                who = f"{self._name} {n} (process {process.pid})"
                raise WorkerFailed(f"{who} {_death(process)}") from None

    def close(self, *, patient: bool = True) -> None:
        """Hang up and let the workers exit until the deadline (if ``patient``); stop the rest.

        Impatient, the workers are stopped before the pipes close, so none of them is left to
        find its pipe closed halfway through starting and print a traceback about it."""
        if patient:
            for link in self._links:
                link.close()
            for process in self._processes:
                process.join(max(self._deadline - time.monotonic(), 0))
        for process in self._processes:
            if process.is_alive():
                process.terminate()
        for process in self._processes:
            process.join(STOP_SECONDS)
            if process.is_alive():
                process.kill()
                process.join(STOP_SECONDS)
        for link in self._links:
            link.close()

    def __enter__(self) -> Spawned:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close(patient=exc_type is None)
