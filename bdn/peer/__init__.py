"""The in-cluster peer tier, pull side: the client that asks chunk owners, the tiered reader.

The owner side (the chunk service a peer's request reaches) is daemon code:
:mod:`bdn.agent.chunks`. The wire both sides speak is :mod:`bdn.agent.protocol`.
"""

from bdn.agent.protocol import FORWARDED_HEADER, ChunkRef, chunk_path
from bdn.peer.chunks import ChunkOrigin, LocalChunks
from bdn.peer.client import PeerClient
from bdn.peer.tiered import TierConfig, TieredReader, TierStats

__all__ = [
    "FORWARDED_HEADER",
    "ChunkOrigin",
    "ChunkRef",
    "LocalChunks",
    "PeerClient",
    "TierConfig",
    "TierStats",
    "TieredReader",
    "chunk_path",
]
