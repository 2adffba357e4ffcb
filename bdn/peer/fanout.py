"""Fan-out: a chunk's owner sends it to a few requesters and redirects the rest to them.

The ring gives every chunk one owner (or R with replicas), its only origin
fetcher. Without fan-out every other node reads the chunk from that owner,
so one owner's link carries ``N - 1`` copies of each chunk it owns. With
fan-out (``--fanout K``) the owner is also the chunk's *tracker*
(:class:`FanoutTracker`): it sends the chunk itself to at most ``K``
requesters and answers later ones with a redirect to a *holder*, a node it
has already sent the chunk to (or redirected to someone), which passes the
chunk on once it has verified it. The chunk spreads as a ``K``-ary tree,
reaching N nodes in about ``log_K(N)`` store-and-forward hops, while origin
still serves it once. docs/DESIGN.md ("The node agent", "Fan-out") states the
policy in full; ``bdn simulate --policy fanout`` models the same one.

This module is the policy and the wire's names, no I/O: the owner's HTTP
side is :mod:`bdn.agent.server`, the holder's store
:mod:`bdn.agent.chunks`, the requester's side :mod:`bdn.peer.tiered`.

>>> t = FanoutTracker(2)
>>> [t.route("c", f"n{i}:1") for i in range(1, 8)]
[None, None, 'n1:1', 'n2:1', 'n1:1', 'n2:1', 'n3:1']
>>> t.route("c", "n8:1", failed="n3:1")  # n8's holder n3 failed: the owner serves n8
>>> t.stats.redirects_issued
5
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_FANOUT",
    "FAILED_HOLDER_HEADER",
    "PEER_HEADER",
    "PEER_LOAD_HEADER",
    "REDIRECTED_HEADER",
    "REDIRECT_HEADER",
    "FanoutStats",
    "FanoutTracker",
]

DEFAULT_FANOUT = 4
"""Requesters an owner sends each chunk to itself, and redirected requesters each
holder serves (``--fanout``; 0: off, every requester reads from the owner)."""

PEER_HEADER = "X-BDN-Peer"
"""Sent by a requester with fan-out on: its own ring address (``host:port``), so the
owner can send later requesters of the chunk to it."""

PEER_LOAD_HEADER = "X-BDN-Peer-Load"
"""Sent with :data:`PEER_HEADER`: how many redirected requests the requester is
answering as a holder right now (waiting for its own read or sending), so owners
spread new redirects over the whole fleet, not only over what each one sent."""

REDIRECT_HEADER = "X-BDN-Redirect"
"""On a ``307`` from an owner: the holder (``host:port``) to read the chunk from."""

REDIRECTED_HEADER = "X-BDN-Redirected"
"""Sent (``1``) on a request that follows a redirect: the holder answers only from
what it keeps or is receiving, never from origin or another peer (404 otherwise)."""

FAILED_HOLDER_HEADER = "X-BDN-Failed-Holder"
"""Sent on the request back to the owner after the holder it named failed
(``host:port``): the owner serves this requester itself and stops naming that holder."""

MAX_CHUNKS_TRACKED = 65_536
"""Chunks whose holders an owner remembers (least recently asked forgotten first)."""

SUSPECT_SECONDS = 30.0
"""After a requester reported a holder failed, the owner names it for no chunk for
this long: a frozen node would otherwise cost one peer timeout per chunk it holds."""


@dataclass(slots=True)
class FanoutStats:
    """What fan-out did on one node, for ``/metrics`` (one object, agent-wide).

    Owner side: ``redirects_issued``, ``bytes_as_owner`` (chunk bytes sent as the
    ring owner). Holder side: ``bytes_as_holder`` (sent to redirected requesters).
    Requester side: ``redirects_followed``, ``redirects_failed`` (the holder failed
    and the owner was asked again), ``bytes_from_holders``.
    """

    redirects_issued: int = 0
    redirects_followed: int = 0
    redirects_failed: int = 0
    bytes_as_owner: int = 0
    bytes_as_holder: int = 0
    bytes_from_holders: int = 0
    holder_refusals: int = 0
    """Redirected requests this node refused as a holder (not held, or at its cap)."""


@dataclass(slots=True)
class _Chunk:
    """One chunk's fan-out at its owner."""

    direct: int = 0  # Requesters the owner chose to serve itself.
    # Holder address -> [redirects assigned to it, its hops from the owner], oldest first.
    holders: dict[str, list[int]] = field(default_factory=dict)


class FanoutTracker:
    """The owner's routing of chunk requests; see the module docstring.

    Not thread-safe; use from one event loop. ``k`` 0 routes nothing (every
    requester is served by the owner).
    """

    def __init__(self, k: int, *, max_chunks: int = MAX_CHUNKS_TRACKED,
                 clock: Callable[[], float] = time.monotonic,
                 stats: FanoutStats | None = None) -> None:
        if k < 0:
            raise ValueError("FanoutTracker needs k >= 0")
        self.k = k
        self.max_chunks = max_chunks
        self.stats = stats if stats is not None else FanoutStats()
        self._clock = clock
        self._chunks: OrderedDict[str, _Chunk] = OrderedDict()
        self._suspects: dict[str, float] = {}  # holder -> until when it is not named
        self._load: dict[str, int] = {}  # holder -> redirects sent to it, every chunk
        self._busy: dict[str, int] = {}  # holder -> redirected requests it last said it had

    def route(self, key: str, requester: str | None, *, failed: str | None = None,
              load: int | None = None) -> str | None:
        """Where the requester of chunk ``key`` should read it: ``None`` (from this
        owner) or a holder's ``host:port`` (a redirect).

        ``requester`` is the request's :data:`PEER_HEADER` (``None``: an older
        requester or fan-out off there: always served here). ``failed`` is its
        :data:`FAILED_HOLDER_HEADER`: the holder it was sent to failed, so it is
        served here, and that holder is named no more for a while. ``load`` is its
        :data:`PEER_LOAD_HEADER`.

        The owner serves the first ``k`` requesters of a chunk; each later one goes
        to a holder that has been assigned fewer than ``k``: of those, the fewest hops
        from the owner, where every ``k`` redirects this owner has sent the holder
        (all chunks) and every ``k`` redirected requests the holder last said it was
        answering count as one hop more (the tree fills breadth first, since a holder
        near the owner has the bytes sooner, but a node that asks first everywhere,
        and so is near the owner for every chunk, must not pass on every chunk), then
        the fewest redirects this owner sent it, then the oldest.
        When none has room, the owner serves it too. Every requester becomes a
        holder of the chunk (it will have the bytes once its read ends).
        """
        if self.k == 0 or requester is None:
            return None
        if load is not None:
            if len(self._busy) >= self.max_chunks:
                self._busy.clear()
            self._busy[requester] = load
        chunk = self._chunk(key)
        if failed is not None:
            chunk.holders.pop(failed, None)
            self._suspects[failed] = self._clock() + SUSPECT_SECONDS
        if failed is not None or requester in chunk.holders or chunk.direct < self.k:
            self._serve(chunk, requester)
            return None
        target = self._holder_with_room(chunk, requester)
        if target is None:
            self._serve(chunk, requester)
            return None
        held = chunk.holders[target]
        held[0] += 1
        chunk.holders.setdefault(requester, [0, held[1] + 1])
        if len(self._load) >= self.max_chunks:
            self._load.clear()  # Bounded: balance starts afresh, routing stays correct.
        self._load[target] = self._load.get(target, 0) + 1
        self.stats.redirects_issued += 1
        return target

    def _serve(self, chunk: _Chunk, requester: str) -> None:
        chunk.direct += 1
        chunk.holders.setdefault(requester, [0, 1])[1] = 1  # Served here: one hop.

    def _holder_with_room(self, chunk: _Chunk, requester: str) -> str | None:
        now = self._clock()
        best: tuple[int, int] | None = None
        choice = None
        for addr, (assigned, hops) in chunk.holders.items():
            if assigned >= self.k or addr == requester or self._suspects.get(addr, 0.0) > now:
                continue
            mine = self._load.get(addr, 0)
            rank = (hops + (self._busy.get(addr, 0) + mine) // self.k, mine)
            if best is None or rank < best:
                best, choice = rank, addr
        return choice

    def _chunk(self, key: str) -> _Chunk:
        chunk = self._chunks.get(key)
        if chunk is None:
            chunk = self._chunks[key] = _Chunk()
            while len(self._chunks) > self.max_chunks:
                self._chunks.popitem(last=False)
        else:
            self._chunks.move_to_end(key)
        now = self._clock()
        for addr in [a for a, until in self._suspects.items() if until <= now]:
            del self._suspects[addr]
        return chunk
