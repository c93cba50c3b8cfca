"""Holding Ctrl-C while a write that must be whole is under way.

CPython raises ``KeyboardInterrupt`` in the main thread between any two bytecodes; inside a
write that changes memory mappings and the tables describing them, that could leave the two
out of step. Here a SIGINT that arrives meanwhile is held and handed to the program's own
handler as soon as the write is done. Only the main thread receives KeyboardInterrupt, and
only it may change signal handlers, so elsewhere (and when nested) this costs one check.
"""

from __future__ import annotations

import importlib
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType

# The C functions behind ``signal``'s enum-converting wrappers: a few times faster, and
# called on every write the main thread makes.
_c_signal = importlib.import_module("_signal")
_get_ident = threading.get_ident
_set_handler: Callable[[int, object], object] = _c_signal.signal
_get_handler: Callable[[int], object] = _c_signal.getsignal
_SIGINT = int(signal.SIGINT)


class _State:
    """Which thread is the main one, and how deep the holding goes on it."""

    __slots__ = ("depth", "main")

    def __init__(self) -> None:
        self.main = threading.main_thread().ident
        self.depth = 0


_state = _State()
_held: list[FrameType | None] = []
held_signals = _held
"""Non-empty while a SIGINT is being held (to be delivered when the holding ends)."""


def _hold(signum: int, frame: FrameType | None) -> None:
    _held.append(frame)


def hold() -> object:
    """Start holding SIGINT on the main thread; pass the result to ``deliver``."""
    state = _state
    if _get_ident() != state.main:
        return None
    if state.depth:
        state.depth += 1
        return None
    try:
        previous = _get_handler(_SIGINT)
        if previous is None:  # installed outside Python: leave it alone
            return None
        _set_handler(_SIGINT, _hold)
    except (ValueError, OSError):  # a subinterpreter, or no SIGINT here
        return None
    state.depth = 1
    return previous


def deliver(previous: object) -> None:
    """Stop holding; a SIGINT that came meanwhile goes to the handler it was held from."""
    state = _state
    if previous is None:
        if state.depth and _get_ident() == state.main:
            state.depth -= 1
        return
    state.depth = 0
    _set_handler(_SIGINT, previous)
    if not _held:
        return
    frame = _held[0]
    _held.clear()
    if callable(previous):
        previous(signal.SIGINT, frame)
    elif previous == signal.SIG_DFL:
        signal.raise_signal(signal.SIGINT)


class interrupts_deferred:  # noqa: N801  (used like a function: ``with interrupts_deferred():``)
    """Hold SIGINT until the block is done, then deliver it (see ``hold``)."""

    __slots__ = ("_previous",)

    def __enter__(self) -> interrupts_deferred:
        self._previous = hold()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        deliver(self._previous)


def _after_fork_in_child() -> None:
    """The forking thread is the child's main thread, whichever it was in the parent."""
    _state.main = _get_ident()
    _state.depth = 0
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
