"""Pool blocks handed to callers: ``Block``, the owners' quotas, and ending a block's lease.

A block's ``view`` is a writable export of its own lease, made on first use. ``free`` gives
the block back only when that lease has no export left: the block's own view is released
first, and any other view (a slice, a numpy array) makes it refuse with ``BlockInUse``.
"""

from __future__ import annotations

from mmkit.memory.lease import Lease
from mmkit.memory.locks import WriteGuard
from mmkit.memory.pool import PoolAllocator
from mmkit.values.errors import BlockInUse, InvalidBlock, InvalidState, LimitExceeded, OwnsMemory


def _released(view: memoryview) -> bool:
    """Whether a caller released the block's view (``with block.view as v:`` does)."""
    try:
        view.nbytes  # noqa: B018
    except ValueError:
        return True
    return False


class Block(OwnsMemory):
    """A block of pool memory: ``address``, ``size`` (its size class), ``owner``, ``view``.

    ``view`` is a writable ``memoryview`` over exactly the block's bytes.
    """

    __slots__ = (
        "__weakref__",
        "_blocks",
        "_freed",
        "_lease",
        "_view",
        "address",
        "owner",
        "requested",
        "size",
    )

    def __init__(
        self, blocks: Blocks, address: int, size: int, requested: int, owner: str | None
    ) -> None:
        self._blocks = blocks
        self.address = address
        self.size = size
        self.requested = requested
        self.owner = owner
        self._freed = False
        self._lease: Lease | None = None
        self._view: memoryview | None = None

    @property
    def freed(self) -> bool:
        return self._freed

    @property
    def view(self) -> memoryview:
        view = self._view
        if view is None or _released(view):
            return self._blocks.view_of(self)
        return view

    def __repr__(self) -> str:
        state = "freed" if self._freed else "live"
        who = f" owner={self.owner!r}" if self.owner is not None else ""
        return f"<Block {state} {self.address:#x} size={self.size}{who}>"


class Blocks:
    """One manager's live blocks and the bytes each owner holds against its quota."""

    __slots__ = ("_guard", "live", "open", "owners", "quota")

    def __init__(self, guard: WriteGuard, quota: int) -> None:
        self._guard = guard
        self.quota = quota
        self.live: dict[int, Block] = {}
        self.owners: dict[str, int] = {}
        self.open = True

    def allocate(self, pool: PoolAllocator, nbytes: int, owner: str | None) -> Block:
        """A new block from ``pool``, within ``owner``'s quota; ``LimitExceeded`` otherwise."""
        if owner is not None:
            size = pool.block_size(nbytes)
            used = self.owners.get(owner, 0)
            if used + size > self.quota:
                raise LimitExceeded(
                    f"owner {owner!r} cannot have {nbytes} more bytes (a block of {size}): "
                    f"it uses {used} of its quota of {self.quota}"
                )
        address, size = pool.allocate(nbytes)
        block = Block(self, address, size, nbytes, owner)
        self.live[address] = block
        if owner is not None:
            self.owners[owner] = self.owners.get(owner, 0) + size
        return block

    def free(self, pool: PoolAllocator, block: Block) -> None:
        """Give a block back to ``pool`` if no view of it is left; ``BlockInUse`` otherwise."""
        self._remove(block)
        pool.free(block.address)

    def view_of(self, block: Block) -> memoryview:
        """The block's view, made now: once per block, under the manager's write guard."""
        with self._guard:
            if block._freed:
                raise InvalidBlock(f"block at {block.address:#x} has been freed")
            if block._view is not None and not _released(block._view):
                return block._view
            if not self.open:
                raise InvalidState("the manager is closed: a block gets no new view after close")
            if block._lease is None:
                block._lease = Lease(block.address, block.size, writable=True)
            block._view = block._lease.view()
            return block._view

    def _remove(self, block: Block) -> None:
        """Take a live block out if no view of it is left; ``BlockInUse`` changes nothing."""
        if block._blocks is not self:
            raise InvalidBlock(f"block at {block.address:#x} belongs to another manager")
        if block._freed or self.live.get(block.address) is not block:
            raise InvalidBlock(f"block at {block.address:#x} has already been freed")
        view, lease = block._view, block._lease
        if view is not None:
            try:
                view.release()
            except BufferError:
                raise self._in_use(block) from None
            block._view = None
        if lease is not None and not lease.close():
            raise self._in_use(block)
        block._freed = True
        del self.live[block.address]
        if block.owner is not None:
            left = self.owners[block.owner] - block.size
            if left:
                self.owners[block.owner] = left
            else:
                del self.owners[block.owner]

    def close(self) -> list[Lease]:
        """Forget every block (they stay readable through views made before); their leases."""
        self.open = False
        leases = [block._lease for block in self.live.values() if block._lease is not None]
        self.live = {}
        self.owners = {}
        return leases

    @staticmethod
    def _in_use(block: Block) -> BlockInUse:
        return BlockInUse(f"block at {block.address:#x} still has views; release them before free")
