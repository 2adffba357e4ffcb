"""The in-cluster peer tier: chunk owners, the client that asks them, the tiered reader."""

from bdn.peer.chunks import ChunkRef, ChunkService, ChunkStats
from bdn.peer.client import FORWARDED_HEADER, PeerClient, chunk_path
from bdn.peer.tiered import TierConfig, TieredReader, TierStats

__all__ = [
    "FORWARDED_HEADER",
    "ChunkRef",
    "ChunkService",
    "ChunkStats",
    "PeerClient",
    "TierConfig",
    "TierStats",
    "TieredReader",
    "chunk_path",
]
