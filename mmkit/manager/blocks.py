"""Pool blocks handed to callers: ``Block``, the owners' quotas, and ending a block's lease.

Each use of a block's ``view`` is a new writable export of the block's lease (made on first
use), so threads that each take theirs share no memoryview. ``free`` gives the block back
only when that lease has no export left: any view still held (a slice, a numpy array) makes
it refuse with ``BlockInUse``.
"""

from __future__ import annotations

import operator

from mmkit.manager.publication import Publication
from mmkit.manager.reclaim import Spans
from mmkit.manager.residency import Residency
from mmkit.memory.lease import Lease
from mmkit.memory.locks import WriteGuard
from mmkit.platform.interrupts import held_signals
from mmkit.values.errors import (
    BlockInUse,
    InvalidArgument,
    InvalidBlock,
    InvalidState,
    LimitExceeded,
    OwnsMemory,
)


class Block(OwnsMemory):
    """A block of pool memory: ``address``, ``size`` (its size class), ``owner``, ``view``.

    ``view`` is a new writable ``memoryview`` over exactly the block's bytes, each time.
    """

    __slots__ = (
        "__weakref__",
        "_blocks",
        "_freed",
        "_lease",
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

    @property
    def freed(self) -> bool:
        return self._freed

    @property
    def view(self) -> memoryview:
        lease = self._lease
        if lease is not None and not self._freed:
            try:
                return lease.view()
            except InvalidState:
                pass  # freed or closed meanwhile: the manager says which
        return self._blocks.view_of(self)

    def __repr__(self) -> str:
        state = "freed" if self._freed else "live"
        who = f" owner={self.owner!r}" if self.owner is not None else ""
        return f"<Block {state} {self.address:#x} size={self.size}{who}>"


class Blocks:
    """One manager's live blocks and the bytes each owner holds against its quota."""

    __slots__ = ("_guard", "_published", "_residency", "_spans", "live", "open", "owners", "quota")

    def __init__(
        self,
        guard: WriteGuard,
        quota: int,
        published: Publication,
        residency: Residency,
        spans: Spans,
    ) -> None:
        self._guard = guard
        self._published = published
        self._residency = residency
        self._spans = spans
        self.quota = quota
        self.live: dict[int, Block] = {}
        self.owners: dict[str, int] = {}
        self.open = True

    def allocate(self, nbytes: int, owner: str | None) -> Block:
        """A zeroed block of at least ``nbytes``, within ``owner``'s quota.

        An allocate that a held Ctrl-C will interrupt gives its block back first, so the
        caller, who never gets it, loses nothing.
        """
        if type(nbytes) is not int or nbytes <= 0:  # plain values: no caller code in the write
            if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes <= 0:
                raise InvalidArgument(
                    f"allocate needs a positive int number of bytes, not {nbytes!r}"
                )
            nbytes = operator.index(nbytes)
        if owner is not None:
            if not isinstance(owner, str) or not owner:
                raise InvalidArgument(f"owner must be a non-empty str or None, not {owner!r}")
            owner = str.__str__(owner)
        return self._guard.run(self._allocate, nbytes, owner)

    def free(self, block: Block) -> None:
        """Give a block back to the pool if no view of it is left; ``BlockInUse`` otherwise."""
        if not isinstance(block, Block):
            raise InvalidBlock(f"free needs a Block, not {type(block).__name__}")
        self._guard.run(self._free, block)

    def _allocate(self, nbytes: int, owner: str | None) -> Block:
        published, spans = self._published, self._spans
        pool, table = spans.pool, published.table
        if pool is None or not table.open:
            raise InvalidState(f"allocate: the manager is {table.state.value}")
        if published.retired or spans.stray or spans.unfreed or pool.pending:
            self._residency.reap()
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
        if held_signals:  # Ctrl-C came meanwhile: the caller will never get this block
            self._remove(block)
            pool.free(address)
        return block

    def _free(self, block: Block) -> None:
        published, spans = self._published, self._spans  # as in ``_allocate``
        pool, table = spans.pool, published.table
        if pool is None or not table.open:
            raise InvalidState(f"free: the manager is {table.state.value}")
        if published.retired or spans.stray or spans.unfreed or pool.pending:
            self._residency.reap()
        self._remove(block)
        pool.free(block.address)

    def view_of(self, block: Block) -> memoryview:
        """A view of the block, under the manager's write guard (its lease made on first use)."""
        with self._guard:
            if block._freed:
                raise InvalidBlock(f"block at {block.address:#x} has been freed")
            if not self.open:
                raise InvalidState("the manager is closed: a block gets no new view after close")
            if block._lease is None:
                block._lease = Lease(block.address, block.size, writable=True)
            return block._lease.view()

    def _remove(self, block: Block) -> None:
        """Take a live block out if no view of it is left; ``BlockInUse`` changes nothing."""
        if block._blocks is not self:
            raise InvalidBlock(f"block at {block.address:#x} belongs to another manager")
        if block._freed or self.live.get(block.address) is not block:
            raise InvalidBlock(f"block at {block.address:#x} has already been freed")
        lease = block._lease
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
