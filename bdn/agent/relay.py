"""The holder side of fan-out: keep the chunks this node read, and pass them on.

With fan-out on (:mod:`bdn.peer.fanout`) a chunk's owner may send a later
requester to this node as soon as this node has asked for the chunk. So this
node's pulls announce every chunk they read from a peer or origin
(:meth:`RelayStore.begin`) and hand over its verified bytes
(:meth:`RelayStore.keep`), which are written to the chunk cache under a key
that includes the chunk's xxh3-128: a redirected request is answered only
when it names the digest these bytes were verified against. A redirected
request that arrives while this node's own read is in flight waits for it.

What a holder serves is verified bytes only: chunks its own pull verified
(here), its node-cache blobs whose admission it accepts, and chunks in its
chunk cache (:meth:`bdn.agent.chunks.ChunkService.open_kept_now`). It never
reads origin or another peer for a redirected request.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from bdn.agent.protocol import ChunkRef
from bdn.peer.fanout import FanoutStats

if TYPE_CHECKING:
    from bdn.agent.chunks import OpenChunk

log = logging.getLogger(__name__)

Buffer = bytes | bytearray | memoryview

MAX_KEPT_NAMES = 65_536
"""Chunks whose keeping this node remembers in memory (to answer a redirected request's
headers without touching the disk first); a forgotten one is looked up on disk."""


def relay_key(ref: ChunkRef) -> str:
    """The chunk cache key of a chunk kept to pass on: names the digest it was verified
    against, so a request with another digest never gets these bytes."""
    return f"relay:{ref.key}:{ref.xxh3}"


class _Pieces:
    """A file-like reader over ``data`` (what the chunk cache reads a value from)."""

    def __init__(self, data: Buffer) -> None:
        self._view = memoryview(data)
        self._at = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._view) if n < 0 else min(len(self._view), self._at + n)
        piece = bytes(self._view[self._at:end])
        self._at = end
        return piece


class RelayStore:
    """One node's chunks kept to pass on; a :class:`~bdn.peer.chunks.RelayChunks`.

    Args:
        write: stores ``(key, reader)`` in the chunk cache (blocking; run in a thread).
        open_kept: opens ``ref`` from what this node keeps now, relay copies
            included (blocking), or returns ``None``.
        k: redirected requests one chunk is sent to at once (the holder's cap).

    Use from one event loop.
    """

    def __init__(self, write: Callable[[str, _Pieces], None],
                 open_kept: Callable[[ChunkRef], OpenChunk | None], k: int,
                 stats: FanoutStats) -> None:
        self._write = write
        self._open_kept = open_kept
        self.k = k
        self.stats = stats
        self._flights: dict[str, asyncio.Future[bool]] = {}
        self._kept: OrderedDict[str, None] = OrderedDict()
        self._sending: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def fanout_stats(self) -> FanoutStats:
        return self.stats

    # -- the pull side (RelayChunks) ------------------------------------------------------

    def wanted(self, members: int) -> bool:
        return members > self.k + 1

    def begin(self, ref: ChunkRef) -> None:
        key = relay_key(ref)
        if key not in self._flights:
            self._flights[key] = asyncio.get_running_loop().create_future()

    def keep(self, ref: ChunkRef, data: Buffer) -> None:
        task = asyncio.create_task(self._keep(ref, data), name="bdn-relay-keep")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def abandon(self, ref: ChunkRef) -> None:
        self._settle(relay_key(ref), False)

    async def _keep(self, ref: ChunkRef, data: Buffer) -> None:
        key, ok = relay_key(ref), False
        try:
            await asyncio.to_thread(self._write, key, _Pieces(data))
            ok = True
            self._kept[key] = None
            self._kept.move_to_end(key)
            if len(self._kept) > MAX_KEPT_NAMES:
                self._kept.popitem(last=False)
        except OSError as err:  # A full disk costs the copy, not the pull.
            log.warning("could not keep chunk %d of %s to pass on: %s", ref.index, ref.digest, err)
        finally:
            self._settle(key, ok)

    def _settle(self, key: str, ok: bool) -> None:
        future = self._flights.pop(key, None)
        if future is not None and not future.done():
            future.set_result(ok)

    # -- the serving side ---------------------------------------------------------------

    def in_flight(self, ref: ChunkRef) -> bool:
        """Whether this node's own read of ``ref`` is under way."""
        return relay_key(ref) in self._flights

    def known(self, ref: ChunkRef) -> bool:
        """Whether this node kept ``ref`` to pass on, or is reading it: known from
        memory alone, so a redirected request gets its headers at once (a busy
        node's worker threads can take seconds; a holder that slow looks dead)."""
        key = relay_key(ref)
        return key in self._flights or key in self._kept

    async def open_now(self, ref: ChunkRef) -> OpenChunk | None:
        """``ref`` from what this node keeps now, or ``None``."""
        return await asyncio.to_thread(self._open_kept, ref)

    async def open_when_read(self, ref: ChunkRef, timeout: float) -> OpenChunk | None:
        """``ref`` once this node's own read of it has ended (at most ``timeout``
        seconds), or ``None``: the read failed, or was not in flight and nothing is kept."""
        future = self._flights.get(relay_key(ref))
        if future is not None:
            try:
                if not await asyncio.wait_for(asyncio.shield(future), timeout):
                    return None
            except TimeoutError:
                return None
        return await self.open_now(ref)

    def load(self) -> int:
        """Redirected requests this node is answering now (waiting or sending)."""
        return sum(self._sending.values())

    def sending(self, ref: ChunkRef) -> Sending:
        """A slot to send ``ref`` to one redirected requester (check :attr:`Sending.ok`)."""
        return Sending(self._sending, ref.key, self.k)

    async def close(self) -> None:
        """Wait for copies being written (idempotent)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


class Sending:
    """Counts one send of a chunk to a redirected requester while it runs; ``ok`` is
    False (and nothing counted) when the chunk already has ``k`` such sends."""

    def __init__(self, counts: dict[str, int], key: str, k: int) -> None:
        self._counts = counts
        self._key = key
        self.ok = counts.get(key, 0) < k
        if self.ok:
            counts[key] = counts.get(key, 0) + 1

    def __enter__(self) -> Sending:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.ok:
            self.ok = False
            left = self._counts[self._key] - 1
            if left:
                self._counts[self._key] = left
            else:
                del self._counts[self._key]
