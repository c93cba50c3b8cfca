"""The lease: exact export counts, an inert ``view.obj``, and no view after close."""

from __future__ import annotations

import copy
import ctypes
import gc
import pickle
import threading

import pytest

from mmkit import InvalidState, NotCopyable
from mmkit.memory.lease import Lease, Span

SIZE = 4096


@pytest.fixture
def memory() -> ctypes.Array[ctypes.c_char]:
    return ctypes.create_string_buffer(bytes(range(256)) * (SIZE // 256), SIZE)


def lease_over(memory: ctypes.Array[ctypes.c_char], *, writable: bool = False) -> Lease:
    return Lease(ctypes.addressof(memory), SIZE, writable=writable)


def test_a_view_is_an_export_and_its_slices_share_it(memory: ctypes.Array[ctypes.c_char]) -> None:
    lease = lease_over(memory)
    assert lease.exports == 0
    view = lease.view()
    assert view.readonly and view.format == "B" and view.nbytes == SIZE
    assert view[:4].tolist() == [0, 1, 2, 3]
    assert lease.exports == 1
    part = view[100:200]
    again = memoryview(view)
    view.release()
    assert lease.exports == 1  # the slice and the second view still reach the memory
    del part
    assert lease.exports == 1
    again.release()
    assert lease.exports == 0
    second = lease.view()
    third = lease.view()
    assert lease.exports == 2
    second.release()
    third.release()
    assert lease.exports == 0


def test_close_refuses_while_any_view_is_left(memory: ctypes.Array[ctypes.c_char]) -> None:
    lease = lease_over(memory)
    part = lease.view()[8:16]
    assert lease.close() is False
    assert lease.open
    part.release()
    assert lease.close() is True
    assert not lease.open
    with pytest.raises(InvalidState, match="given back"):
        lease.view()
    assert lease.close() is True


def test_a_view_released_in_another_thread_is_counted_at_once(
    memory: ctypes.Array[ctypes.c_char],
) -> None:
    lease = lease_over(memory)
    views = [lease.view()[i:] for i in range(8)]

    def drop() -> None:
        for view in views:
            view.release()
        views.clear()

    thread = threading.Thread(target=drop)
    thread.start()
    thread.join()
    assert lease.exports == 0 and lease.close()


def test_a_view_in_a_reference_cycle_still_counts_until_it_is_collected(
    memory: ctypes.Array[ctypes.c_char],
) -> None:
    lease = lease_over(memory)
    cycle: list[object] = [lease.view()]
    cycle.append(cycle)
    del cycle
    assert lease.exports == 1  # it still exists, so it still reaches the memory
    gc.collect()
    assert lease.exports == 0


def test_close_when_idle_fires_with_the_last_view(memory: ctypes.Array[ctypes.c_char]) -> None:
    lease = lease_over(memory)
    fired: list[int] = []
    view = lease.view()
    part = view[1:3]
    view.release()
    lease.close_when_idle(lambda: fired.append(1))
    assert not lease.open and fired == []
    with pytest.raises(InvalidState):
        lease.view()
    del part
    assert fired == [1]
    idle = lease_over(memory)
    idle.close_when_idle(lambda: fired.append(2))
    assert fired == [1, 2]


def test_view_obj_is_inert(memory: ctypes.Array[ctypes.c_char]) -> None:
    lease = lease_over(memory)
    view = lease.view()
    token = view.obj
    assert type(token) is Span
    assert [name for name in dir(token) if not name.startswith("__")] == []
    with pytest.raises(TypeError):
        memoryview(token)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        token[0] = 1  # type: ignore[index]
    with pytest.raises(AttributeError):
        token.anything = 1  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        view[0] = 1
    with pytest.raises(TypeError):
        (ctypes.c_char * SIZE).from_buffer(view)
    with pytest.raises(pickle.PicklingError):
        pickle.dumps(token)
    assert bytes(view[:3]) == b"\x00\x01\x02"


def test_a_writable_lease_makes_writable_views(memory: ctypes.Array[ctypes.c_char]) -> None:
    lease = lease_over(memory, writable=True)
    view = lease.view()
    assert not view.readonly
    view[:2] = b"ab"
    assert memory.raw[:2] == b"ab"
    view.release()
    assert lease.close()


def test_numpy_arrays_are_views_too(memory: ctypes.Array[ctypes.c_char]) -> None:
    numpy = pytest.importorskip("numpy")
    lease = lease_over(memory)
    view = lease.view()
    array = numpy.frombuffer(view, dtype=numpy.uint8)
    assert not array.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        array[0] = 1
    with pytest.raises(TypeError):
        numpy.frombuffer(view.obj, dtype=numpy.uint8)
    del view
    assert lease.exports == 1 and not lease.close()
    del array
    assert lease.close()


def test_a_lease_cannot_be_copied(memory: ctypes.Array[ctypes.c_char]) -> None:
    lease = lease_over(memory)
    for attempt in (copy.copy, copy.deepcopy, pickle.dumps):
        with pytest.raises(NotCopyable):
            attempt(lease)
