"""The seams between a pull and this node's own chunk service (the agent's).

The tiered reader (:mod:`bdn.peer.tiered`) reads the chunks this node owns
through :class:`LocalChunks` rather than over HTTP, and with fan-out on hands
every chunk it reads from elsewhere to :class:`RelayChunks`, so this node can
pass it on (:mod:`bdn.peer.fanout`). The library only names the shapes here;
the agent implements them (:class:`bdn.agent.chunks.ChunkService`), so
``bdn.peer`` never imports daemon code.
"""

from __future__ import annotations

from typing import Literal, Protocol

from bdn.agent.protocol import ChunkRef
from bdn.peer.fanout import FanoutStats

__all__ = ["ChunkOrigin", "LocalChunks", "RelayChunks"]

Buffer = bytes | bytearray | memoryview

ChunkOrigin = Literal["node_cache", "chunk_cache", "origin", "coalesced"]
"""Where a local chunk came from: kept on this node already (``node_cache``,
``chunk_cache``), or fetched from origin by this read or one it joined
(``origin``, ``coalesced``)."""


class LocalChunks(Protocol):
    """This node's chunk owner, as a pull sees it."""

    async def read_with_origin(self, ref: ChunkRef) -> tuple[bytes, ChunkOrigin]:
        """The chunk's verified bytes and where they came from.

        Raises:
            NotFound, IntegrityError, TransferError, AuthError: origin could
                not give the chunk's bytes.
        """
        ...


class RelayChunks(Protocol):
    """Where a pull leaves the chunks it read from peers or origin, for fan-out.

    The owner of a chunk may send later requesters to this node as soon as this
    node asked for the chunk, so a read announces itself first (:meth:`begin`),
    and ends with :meth:`keep` (its verified bytes) or :meth:`abandon`. A
    redirected request that arrives meanwhile waits for that outcome. All three
    are called from the event loop and never raise.
    """

    @property
    def fanout_stats(self) -> FanoutStats:
        """This node's fan-out counters (the requester side counts here too)."""
        ...

    def load(self) -> int:
        """Redirected requests this node answers as a holder now (sent to owners)."""
        ...

    def wanted(self, members: int) -> bool:
        """Whether a ring of ``members`` nodes can redirect anyone to this node.

        An owner sends a chunk itself to its first K requesters, so in a ring of
        at most K + 1 nodes nobody is ever redirected, and keeping a relay copy
        would only cost a disk write per chunk.
        """
        ...

    def begin(self, ref: ChunkRef) -> None:
        """A read of ``ref`` from elsewhere has started on this node."""
        ...

    def keep(self, ref: ChunkRef, data: Buffer) -> None:
        """``data`` is ``ref``'s verified bytes: keep them to pass on (in the
        background; ``data`` must not change afterwards)."""
        ...

    def abandon(self, ref: ChunkRef) -> None:
        """The read of ``ref`` failed or was cancelled: nothing to pass on."""
        ...
