"""A chunk reader that goes owner peer first, origin second (docs/DESIGN.md, "Pull", tiers 2-3).

The transfer engine asks for one chunk per range request. For each, the ring
names its owners (one, or more with replicas): this node's own
:class:`ChunkService` when it is an owner, else the owner peers in ring order.
A peer that is down, slow or errs before sending a byte is skipped for the next
owner, then origin; one that fails part-way, or whose bytes the engine rejects
(it asks for the same chunk again), is not asked for that chunk a second time.
So pulls complete while peers die, and a corrupt peer costs one chunk's bytes,
counted.

:class:`TierConfig` is the peer tier a pull is given (it implements
``bdn.pull.Tier``, structurally: this module does not import the pull);
:meth:`TierConfig.start_pull` hands each pull a :class:`PeerPull` whose
:class:`TierStats` that pull's result reports.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from bdn.agent.protocol import ChunkRef
from bdn.backends.base import RangeReader
from bdn.digest import Digest
from bdn.errors import AuthError, BdnError, TransferError
from bdn.manifest import FileEntry
from bdn.peer.chunks import LocalChunks
from bdn.peer.client import PeerClient
from bdn.ring import Ring

log = logging.getLogger(__name__)

Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class TierConfig:
    """The peer tier of one node.

    Attributes:
        ring: the ring over live members (addresses ``host:port``), or a callable
            returning the current one.
        self_addr: this node's own ring address (its chunks go through ``local``).
        peers: the client that asks other members.
        local: this node's chunk service (``None``: read own chunks from origin).
    """

    ring: Ring | Callable[[], Ring]
    self_addr: str | None
    peers: PeerClient
    local: LocalChunks | None = None

    def current_ring(self) -> Ring:
        """The ring now: a callable ``ring`` is asked per chunk, so a pull follows
        membership changes while it runs."""
        return self.ring if isinstance(self.ring, Ring) else self.ring()

    def start_pull(self) -> PeerPull:
        """This tier for one pull, with counters of its own (``bdn.pull.Tier``)."""
        return PeerPull(self)


@dataclass(slots=True)
class TierStats:
    """Bytes and failures per tier, summed over the readers that share it."""

    bytes_from_peers: int = 0
    bytes_from_origin: int = 0
    bytes_from_local_cache: int = 0
    peer_failures: int = 0
    corrupt_from_peers: int = 0


@dataclass(frozen=True, slots=True)
class PeerPull:
    """One pull through the peer tier: its readers share ``stats``.

    Implements ``bdn.pull.TierPull``: every byte its readers hand over is
    counted in ``stats`` by where it came from, origin included.
    """

    tiers: TierConfig
    stats: TierStats = field(default_factory=TierStats)

    def reader(self, origin: RangeReader, entry: FileEntry, chunk_size: int) -> TieredReader:
        """A reader of ``entry``'s blob that asks its chunks' owners before ``origin``."""
        return TieredReader(
            origin, entry.sha256, entry.size, chunk_size, entry.chunks, self.tiers, self.stats
        )


@dataclass(slots=True)
class TieredReader:
    """A :class:`RangeReader` of one blob through the tiers; see the module docstring."""

    origin: RangeReader
    digest: Digest
    size: int
    chunk_size: int
    chunks: tuple[str, ...]
    tiers: TierConfig
    stats: TierStats
    supports_ranges: bool | None = True
    # Which peer served each chunk in full (a second request for it means the
    # engine rejected the bytes), and the (chunk, peer) pairs not to try again.
    _peer_served: dict[int, str] = field(default_factory=dict)
    _peer_failed: set[tuple[int, str]] = field(default_factory=set)

    def describe(self) -> str:
        return f"{self.digest} via peers, origin {self.origin.describe()}"

    async def close(self) -> None:
        await self.origin.close()

    async def open_range(self, start: int, end: int) -> AsyncIterator[Buffer]:
        ref = self._chunk_ref(start, end)
        ring = self.tiers.current_ring()
        owners = ring.owners(self.digest, ref.index) if ref is not None else []
        if ref is None or not owners:
            async for piece in self._from_origin(start, end):
                yield piece
            return
        served_by = self._peer_served.pop(ref.index, None)
        if served_by is not None:
            # The engine asks for a chunk again only when its bytes failed the check.
            self.stats.corrupt_from_peers += 1
            self._peer_failed.add((ref.index, served_by))
            log.warning(
                "chunk %d of %s from peer %s failed verification; not asking it again",
                ref.index,
                self.digest,
                served_by,
            )
        # Owners in ring order (replicas after the first); each is tried once.
        for owner in owners:
            if owner == self.tiers.self_addr:
                if self.tiers.local is None:
                    break
                data, source = await self.tiers.local.read_with_origin(ref)
                if source in ("origin", "coalesced"):
                    self.stats.bytes_from_origin += len(data)
                else:  # Kept on this node already (its node or chunk cache).
                    self.stats.bytes_from_local_cache += len(data)
                yield data
                return
            if (ref.index, owner) in self._peer_failed:
                continue
            sent = 0
            try:
                async for piece in self.tiers.peers.open_chunk(owner, ref):
                    sent += len(piece)
                    self.stats.bytes_from_peers += len(piece)
                    yield piece
                self._peer_served[ref.index] = owner
                return
            except (TransferError, AuthError) as err:
                self.stats.peer_failures += 1
                self._peer_failed.add((ref.index, owner))
                log.info("peer %s failed chunk %d of %s: %s", owner, ref.index, self.digest, err)
                if sent:
                    raise  # Bytes already went to the engine: it retries, elsewhere.
        async for piece in self._from_origin(start, end):
            yield piece

    async def _from_origin(self, start: int, end: int) -> AsyncIterator[Buffer]:
        async for piece in self.origin.open_range(start, end):
            self.stats.bytes_from_origin += len(piece)
            yield piece

    def _chunk_ref(self, start: int, end: int) -> ChunkRef | None:
        """The chunk ``[start, end)`` is, or ``None`` for any other range (read from origin)."""
        index, rest = divmod(start, self.chunk_size)
        if rest or end != min(start + self.chunk_size, self.size) or index >= len(self.chunks):
            return None
        try:
            return ChunkRef(self.digest, index, self.size, self.chunk_size, self.chunks[index])
        except (ValueError, BdnError):
            return None
