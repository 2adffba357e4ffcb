"""The seam between a pull and this node's own chunk owner (the agent's chunk service).

The tiered reader (:mod:`bdn.peer.tiered`) reads the chunks this node owns
through :class:`LocalChunks` rather than over HTTP. The library only names the
shape here; the agent implements it (:class:`bdn.agent.chunks.ChunkService`),
so ``bdn.peer`` never imports daemon code.
"""

from __future__ import annotations

from typing import Literal, Protocol

from bdn.agent.protocol import ChunkRef

__all__ = ["ChunkOrigin", "LocalChunks"]

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
