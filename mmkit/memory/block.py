"""Pool blocks as callers hold them: the ``Block`` and the pin its views keep alive."""

from __future__ import annotations

import weakref

from mmkit.memory.views import span_view
from mmkit.values.errors import InvalidBlock


class BlockPin:
    """What a block's views hold on to: keeps the address space mapped while any exists."""

    __slots__ = ("__weakref__", "reservation")

    def __init__(self, reservation: object) -> None:
        self.reservation = reservation


class Block:
    """A block of pool memory: ``address``, ``size`` (its size class), ``owner``, ``view``.

    ``view`` is a writable ``memoryview`` over exactly the block's bytes, made on first use.
    """

    __slots__ = (
        "__weakref__",
        "_pin",
        "_view",
        "address",
        "manager_id",
        "owner",
        "requested",
        "size",
    )

    def __init__(
        self,
        address: int,
        size: int,
        requested: int,
        *,
        owner: str | None,
        pin: BlockPin,
        manager_id: object,
    ) -> None:
        self.address = address
        self.size = size
        self.requested = requested
        self.owner = owner
        self.manager_id = manager_id
        self._pin: BlockPin | None = pin
        self._view: memoryview | None = None

    @property
    def freed(self) -> bool:
        return self._pin is None

    @property
    def view(self) -> memoryview:
        view = self._view
        if view is None:
            pin = self._pin
            if pin is None:
                raise InvalidBlock(f"block at {self.address:#x} has been freed")
            view = self._view = span_view(self.address, self.size, pin, writable=True)
        return view

    def detach(self) -> BlockPin | None:
        """Drop the block's own hold on its memory; return the pin if a caller's view still has it.

        On a non-None return the block is unchanged (still live); the caller must refuse the free.
        """
        pin = self._pin
        if pin is None:
            raise InvalidBlock(f"block at {self.address:#x} has already been freed")
        view = self._view
        if view is not None:
            try:
                view.release()
            except BufferError:
                return pin
        self._view = None
        self._pin = None
        alive = weakref.ref(pin)
        del pin
        pin = alive()
        if pin is not None:
            self._pin = pin
            return pin
        return None

    def __repr__(self) -> str:
        state = "freed" if self._pin is None else "live"
        who = f" owner={self.owner!r}" if self.owner is not None else ""
        return f"<Block {state} {self.address:#x} size={self.size}{who}>"
