"""A chunk reader that goes owner peer first, origin second (docs/DESIGN.md, "Pull", tiers 2-3).

The transfer engine asks for one chunk per range request. For each, the ring
names its owners (one, or more with replicas): this node's own
:class:`ChunkService` when it is the first owner, else the owner peers in ring
order, then origin. Every source's answer is read whole and verified against
the manifest's xxh3-128 before it is handed over, so a peer that is down,
slow, errs or sends corrupt bytes is skipped for the next source with nothing
half-written, and is not asked for that chunk again. A request that runs past
a learned deadline is hedged to the next source (:mod:`bdn.peer.race`,
:mod:`bdn.peer.hedge`). So pulls complete while peers die or freeze, and a
corrupt peer costs one chunk's bytes, counted.

With fan-out on (``TierConfig.relay``, :mod:`bdn.peer.fanout`) an owner may
answer with a redirect to a holder of the chunk. The reader follows one,
verifies the holder's bytes, and on any failure of the holder asks the owner
again (naming the holder that failed), never origin: only the owner's own
failure sends a chunk to origin. Every chunk read from elsewhere is handed to
the relay once verified, so this node can pass it on.

:class:`TierConfig` is the peer tier a pull is given (it implements
``bdn.pull.Tier``, structurally: this module does not import the pull);
:meth:`TierConfig.start_pull` hands each pull a :class:`PeerPull` whose
:class:`TierStats` that pull's result reports.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from bdn.agent.protocol import ChunkRef
from bdn.backends.base import RangeReader
from bdn.digest import Digest, xxh3_128_hex
from bdn.errors import AuthError, BdnError, IntegrityError, TransferError
from bdn.manifest import FileEntry
from bdn.peer.chunks import LocalChunks, RelayChunks
from bdn.peer.client import PeerClient, Redirected
from bdn.peer.fanout import (
    FAILED_HOLDER_HEADER,
    PEER_HEADER,
    PEER_LOAD_HEADER,
    REDIRECTED_HEADER,
)
from bdn.peer.hedge import Hedging, OriginHedgeBudget
from bdn.peer.progress import ReadProgress
from bdn.peer.race import ORIGIN, ChunkRace, successor
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
        hedging: when and how often slow chunk reads are hedged, shared by
            every pull of this node (``None``: never; see :mod:`bdn.peer.hedge`).
        relay: where chunks read from elsewhere are kept to pass on (``None``:
            fan-out off here: requests do not name this node, nothing is kept).
    """

    ring: Ring | Callable[[], Ring]
    self_addr: str | None
    peers: PeerClient
    local: LocalChunks | None = None
    hedging: Hedging | None = None
    relay: RelayChunks | None = None

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
    origin_budget: OriginHedgeBudget = field(default_factory=OriginHedgeBudget)

    def reader(self, origin: RangeReader, entry: FileEntry, chunk_size: int) -> TieredReader:
        """A reader of ``entry``'s blob that asks its chunks' owners before ``origin``
        (the blob adds its share to the pull's origin-hedge budget)."""
        self.origin_budget.grow(entry.size, len(self.tiers.current_ring().members))
        return TieredReader(
            origin, entry.sha256, entry.size, chunk_size, entry.chunks, self.tiers, self.stats,
            origin_budget=self.origin_budget,
        )

    def first_chunk(self, entry: FileEntry, chunk_size: int) -> int:
        """A chunk picked from this node's address and the blob: the nodes of a burst
        start at different chunks. Asked in the same order everywhere, the nodes that
        ask first would be one hop from every owner, and with fan-out would pass on
        every chunk (``bdn simulate --chunk-order``)."""
        count = max(1, -(-entry.size // chunk_size))
        me = self.tiers.self_addr or ""
        return int(xxh3_128_hex(f"{me}/{entry.sha256}".encode())[:8], 16) % count


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
    origin_budget: OriginHedgeBudget | None = None
    # Which peer served each chunk in full (a second request for it means the
    # engine rejected the bytes), and the (chunk, peer) pairs not to try again.
    _peer_served: dict[int, str] = field(default_factory=dict)
    _peer_failed: set[tuple[int, str]] = field(default_factory=set)

    @property
    def hedging(self) -> Hedging | None:
        return self.tiers.hedging

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
        if owners[0] == self.tiers.self_addr:
            if self.tiers.local is not None:
                yield await self._from_local(ref)
                return
            owners = []  # Without a chunk service, own chunks come from origin.
        sources = [o for o in owners if (ref.index, o) not in self._peer_failed]
        # A hedge goes to the successor before origin (bdn.peer.race, bdn.peer.hedge).
        after = successor(ring, self.digest, ref.index, owners)
        extra = [after] if after is not None and (ref.index, after) not in self._peer_failed \
            else []
        relay = self.tiers.relay
        if relay is not None and not relay.wanted(len(ring.members)):
            relay = None  # Nobody can be sent here: skip the relay copy's disk write.
        if relay is not None:
            relay.begin(ref)
        try:
            data, source = await ChunkRace(self, ref, [*sources, *extra, ORIGIN], costly=extra,
                                           origin_budget=self.origin_budget).run()
        except BaseException:
            if relay is not None:
                relay.abandon(ref)
            raise
        if relay is not None:
            relay.keep(ref, data)
        if source == ORIGIN:
            self.stats.bytes_from_origin += len(data)
        elif source != self.tiers.self_addr:
            self.stats.bytes_from_peers += len(data)
            self._peer_served[ref.index] = source
        yield data

    async def _from_local(self, ref: ChunkRef) -> bytes:
        """Chunk ``ref`` from this node's own chunk service, counted by where it found it."""
        assert self.tiers.local is not None
        data, source = await self.tiers.local.read_with_origin(ref)
        if source in ("origin", "coalesced"):
            self.stats.bytes_from_origin += len(data)
        else:  # Kept on this node already (its node or chunk cache).
            self.stats.bytes_from_local_cache += len(data)
        return data

    async def read_source(self, ref: ChunkRef, source: str,
                          progress: ReadProgress | None = None) -> Buffer:
        """Chunk ``ref``'s verified bytes from one source (a peer, this node, or ORIGIN);
        a peer's answer is recorded in ``progress`` as it arrives (for hedging).

        Raises:
            TransferError, AuthError, IntegrityError, NotFound: that source failed;
                a peer's failure is counted and the peer not asked for the chunk again.
        """
        if source == ORIGIN:
            data = await self._read_origin(ref)
        elif source == self.tiers.self_addr:
            return await self._from_local(ref)
        else:
            data, verified = await self._read_peer(ref, source, progress or ReadProgress())
            if verified:
                return data
        if await _digest_of(data) != ref.xxh3:
            if source == ORIGIN:
                raise IntegrityError(f"chunk {ref.index} of {self.digest} from origin is corrupt",
                                     expected=ref.xxh3)
            self.stats.corrupt_from_peers += 1
            self._peer_failed.add((ref.index, source))
            log.warning("chunk %d of %s from peer %s failed verification; not asking it again",
                        ref.index, self.digest, source)
            raise IntegrityError(f"peer {source} sent a corrupt chunk", expected=ref.xxh3)
        return data

    async def _read_peer(self, ref: ChunkRef, peer: str,
                         progress: ReadProgress) -> tuple[bytearray, bool]:
        """Chunk ``ref`` from owner ``peer``, following a fan-out redirect: the bytes,
        and whether they were verified already (a holder's are)."""
        hedging = self.tiers.hedging
        relay = self.tiers.relay
        me = self.tiers.self_addr if relay is not None else None
        named = {PEER_HEADER: me, PEER_LOAD_HEADER: str(relay.load())} \
            if me and relay is not None else None
        try:
            try:
                data = await self.tiers.peers.read_chunk(peer, ref, progress, headers=named)
            except Redirected as redirect:
                held = await self._from_holder(ref, peer, redirect.holder, progress)
                if held is not None:
                    return held, True
                _restart(progress)  # The holder failed: the owner serves us itself now.
                again = {**(named or {}), FAILED_HOLDER_HEADER: redirect.holder}
                data = await self.tiers.peers.read_chunk(peer, ref, progress, headers=again)
        except (TransferError, AuthError, Redirected) as err:
            self.stats.peer_failures += 1
            self._peer_failed.add((ref.index, peer))
            log.info("peer %s failed chunk %d of %s: %s", peer, ref.index, self.digest, err)
            if isinstance(err, Redirected):  # Redirected twice: the owner broke the protocol.
                raise TransferError(str(err)) from None
            raise
        if hedging is not None:
            hedging.observe(progress, len(data))
        return data, False

    async def _from_holder(self, ref: ChunkRef, owner: str, holder: str,
                           progress: ReadProgress) -> bytearray | None:
        """Chunk ``ref``'s verified bytes from the ``holder`` its owner redirected us to,
        or ``None`` when the holder failed in any way (the caller asks the owner again).

        ``progress`` (the owner request's, which the race watches) says "filling"
        meanwhile: the wait costs origin nothing, so it is not hedged to origin; the
        holder's own bounds (headers within :data:`HOLDER_ANSWER_FACTOR` peer timeouts)
        end a dead holder's wait.
        """
        assert self.tiers.relay is not None
        stats = self.tiers.relay.fanout_stats
        stats.redirects_followed += 1
        progress.answered("origin")
        watch = ReadProgress()
        peers = self.tiers.peers
        why: object = "its bytes failed the chunk's xxh3-128 check"
        try:
            data = await peers.read_chunk(holder, ref, watch, headers={REDIRECTED_HEADER: "1"},
                                          headers_within=HOLDER_ANSWER_FACTOR * peers.timeout)
            if await _digest_of(data) == ref.xxh3:
                stats.bytes_from_holders += len(data)
                if self.tiers.hedging is not None:
                    self.tiers.hedging.observe(watch, len(data))
                return data
            self.stats.corrupt_from_peers += 1
        except (TransferError, AuthError, Redirected) as err:
            why = err
        stats.redirects_failed += 1
        log.info("holder %s (named by owner %s) failed chunk %d of %s: %s; asking the owner",
                 holder, owner, ref.index, self.digest, why)
        return None

    async def _read_origin(self, ref: ChunkRef) -> bytearray:
        data = bytearray(ref.end - ref.start)
        got = 0
        async for piece in self.origin.open_range(ref.start, ref.end):
            n = len(piece)
            if got + n > len(data):
                raise TransferError(f"origin sent more than chunk {ref.index}'s {len(data)} bytes")
            data[got : got + n] = piece
            got += n
        if got != len(data):
            raise TransferError(f"origin sent {got} of chunk {ref.index}'s {len(data)} bytes")
        return data

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


HOLDER_ANSWER_FACTOR = 2.0
"""A holder's headers are due within this many peer timeouts. It answers them from
memory at once (:mod:`bdn.agent.relay`), so only a frozen or starved node is late;
a late holder costs this wait and a trip back to the owner, never origin."""


def _restart(progress: ReadProgress) -> None:
    """Make ``progress`` describe a request starting now (the owner is asked again),
    so the race judges that request by its own answer."""
    progress.started = time.monotonic()
    progress.answered_at = progress.body_at = progress.last_at = None
    progress.source = None
    progress.got = 0


HASH_OFF_LOOP_BYTES = 1024 * 1024
"""Chunks at least this large are hashed in a worker thread (xxh3 releases the GIL)."""


async def _digest_of(data: Buffer) -> str:
    """xxh3-128 hex of ``data``, off the event loop when it is large."""
    if len(data) < HASH_OFF_LOOP_BYTES:
        return xxh3_128_hex(data)
    return await asyncio.to_thread(xxh3_128_hex, data)
