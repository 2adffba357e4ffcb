"""One chunk read, hedged: ask the sources in order, and a second one when the first is slow.

The tiered reader (:mod:`bdn.peer.tiered`) hands :class:`ChunkRace` the chunk's
sources in preference order: the owners on the ring not yet failed for that
chunk, then :data:`ORIGIN`. The first source is asked; a failure moves on to
the next. When the request is slow by :meth:`~bdn.peer.hedge.Hedging.hedge_at`
(no headers in time, a stalled or slow body; never a hedge to origin while
the owner fills the chunk from origin) and :class:`~bdn.peer.hedge.HedgeBudget`
has a slot, the next source is asked too (the hedge: at most one per chunk).
The tiered reader puts the chunk's successor on the ring before origin, and
marks it ``costly`` (it may have to read origin): a costly hedge obeys the
same rules as one to origin. A hedge straight to origin also needs the pull's
:class:`~bdn.peer.hedge.OriginHedgeBudget`.
An owner that said it is filling the chunk from origin and then ran out of
the request's answer bound (origin is slow, not the owner dead: it would have
left the ring) is asked once more before the next source, which would only
read origin a second time while the owner's fill is still coming (measured:
``bdn demo`` under heavy load, fills past the 30 s bound sent 1.9x the distinct
content to origin).

Each source's bytes are verified against the manifest before they count as
an answer, so the first *verified* answer wins and the other request is
cancelled. Without hedging (``TierConfig.hedging`` is ``None``) this is the
plain sequential fallback.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Collection
from typing import TYPE_CHECKING, Protocol

from bdn.agent.protocol import ChunkRef
from bdn.digest import Digest
from bdn.errors import BdnError, TransferError
from bdn.peer.hedge import Hedging, OriginHedgeBudget
from bdn.peer.progress import ReadProgress
from bdn.ring import Ring

if TYPE_CHECKING:
    Buffer = bytes | bytearray | memoryview

log = logging.getLogger(__name__)

ORIGIN = "origin"
"""The source name of the origin store (peer sources are ``host:port``)."""


def successor(ring: Ring, digest: Digest, index: int, owners: Collection[str]) -> str | None:
    """The member that would own chunk ``index`` of ``digest`` if ``owners`` left
    ``ring`` (``None``: no member is left). Every node with the same ring names
    the same one, so hedges from many requesters meet there (see the module)."""
    rest = _without(ring, frozenset(owners))
    return rest.owner(digest, index) if rest is not None else None


@functools.lru_cache(maxsize=32)
def _without(ring: Ring, owners: frozenset[str]) -> Ring | None:
    """``ring`` less ``owners`` (rings are immutable; a pull asks per chunk)."""
    members = ring.members - owners
    return ring.with_members(members) if members else None


class ChunkSources(Protocol):
    """What a race reads from: the tiered reader of one blob."""

    async def read_source(self, ref: ChunkRef, source: str,
                          progress: ReadProgress | None = None) -> Buffer:
        """``ref``'s verified bytes from ``source``; a peer read reports to ``progress``."""
        ...

    @property
    def hedging(self) -> Hedging | None: ...


class ChunkRace:
    """Reads one chunk from ``sources`` (in order, last is usually ORIGIN); see the module.

    ``costly``: the sources a hedge to which may cost an origin read (origin, and a
    successor that is not an owner). ``origin_budget``: what a hedge straight to
    ORIGIN spends (``None``: unbounded but for the concurrent-hedge cap).
    """

    def __init__(self, reader: ChunkSources, ref: ChunkRef, sources: list[str], *,
                 costly: Collection[str] = (ORIGIN,),
                 origin_budget: OriginHedgeBudget | None = None) -> None:
        self.reader = reader
        self.ref = ref
        self._costly = frozenset(costly) | {ORIGIN}
        self._origin_budget = origin_budget
        self._queue = deque(sources)
        self._running: dict[asyncio.Task[Buffer], str] = {}
        self._progress: dict[asyncio.Task[Buffer], ReadProgress] = {}
        self._hedge: str | None = None  # The source asked as a hedge, once one was.
        self._hedged = False
        self._holds_slot = False
        self._denied = False
        self._withheld = False
        self._quiet = False
        self._over_budget = False
        self._asked_again = False  # A filling owner that timed out was asked again.
        self._retry_at = 0.0  # After a denied hedge: when to ask the budget again.

    async def run(self) -> tuple[Buffer, str]:
        """The first verified answer and its source.

        Raises:
            the last source's error, when every source failed.
        """
        hedging = self.reader.hedging
        try:
            return await self._run(hedging)
        finally:
            await self._cancel_all()
            if self._holds_slot and hedging is not None:
                hedging.budget.hedge_done()

    async def _run(self, hedging: Hedging | None) -> tuple[Buffer, str]:
        last_err: BaseException | None = None
        while True:
            if not self._running:
                if not self._queue:
                    raise last_err or BdnError(f"no source for chunk {self.ref.index}")
                self._start(self._queue.popleft())
                # Let the request begin first: a peer read says it reports progress
                # (ReadProgress.tracked) only then, and an untracked read is judged on
                # its age against the floor (a frozen owner's chunk waited out 2 s).
                await asyncio.sleep(0)
            wait = self._wait(hedging) if hedging is not None else None
            due = time.monotonic() + wait if wait is not None else 0.0
            done, _ = await asyncio.wait(
                self._running, timeout=wait, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                assert hedging is not None
                hedging.note_wake(time.monotonic() - due)  # A late timer: a starved node.
                # On a busy loop the timer may fire before an answer already in the
                # socket is parsed: let ready callbacks run once, then judge.
                await asyncio.sleep(0)
                self._consider_hedge(hedging)
                continue
            for task in done:
                source = self._running.pop(task)
                progress = self._progress.pop(task, None)
                err = task.exception()
                if err is None:
                    self._count_outcome(hedging, source)
                    return task.result(), source
                if not isinstance(err, Exception):
                    raise err
                log.info("chunk %d of %s from %s failed: %r", self.ref.index, self.ref.digest,
                         source, err)
                last_err = err
                if self._ask_again(source, progress, err):
                    self._start(source)

    def _ask_again(self, source: str, progress: ReadProgress | None,
                   err: BaseException) -> bool:
        """Whether ``source`` failed only waiting on its own fill from origin (see the
        module): once per chunk, while nothing else runs, and only on a plain
        TransferError (not a peer that left the ring, refused or sent bad bytes)."""
        if (self._asked_again or self._running or progress is None or not progress.filling
                or type(err) is not TransferError):
            return False
        self._asked_again = True
        log.info("chunk %d of %s: owner %s is still filling it from origin; asking it again",
                 self.ref.index, self.ref.digest, source)
        return True

    def _hedge_at(self, hedging: Hedging) -> float | None:
        """When the one request running should be hedged (``None``: not by time now)."""
        (progress,) = self._progress.values()
        size = self.ref.end - self.ref.start
        return hedging.hedge_at(progress, size, to_origin=self._queue[0] in self._costly)

    def _wait(self, hedging: Hedging) -> float | None:
        """Seconds until the hedge should be considered again (``None``: never)."""
        if self._hedged or not self._queue:
            return None
        now = time.monotonic()
        at = self._hedge_at(hedging)
        # Not by time now: look again soon, the answer (or whether other peers
        # are heard) may have changed by then (bounded by the request's own timeouts).
        # Soon is a fraction of the learned deadline: at a quarter of the floor, a
        # frozen owner's chunk waited out 0.5 s steps after a 0.25 s deadline.
        again = min(hedging.config.floor / 4, hedging.answer_deadline() / 2)
        at = max(now + again if at is None else at, self._retry_at)
        return max(0.0, at - now)

    def _consider_hedge(self, hedging: Hedging) -> None:
        """A wait ran out: hedge if the request is slow now, and the budget has a slot."""
        if self._hedged or not self._queue:
            return
        at = self._hedge_at(hedging)
        if at is None:
            (progress,) = self._progress.values()
            if progress.filling and not self._withheld:
                self._withheld = True  # The owner is filling: origin would read it twice.
                hedging.stats.withheld += 1
            elif not progress.filling and not self._quiet:
                self._quiet = True  # Silent, but so is every other peer: a starved node.
                hedging.stats.quiet += 1
            return
        if at <= time.monotonic() and not self._try_hedge(hedging):
            # No slot now: look again shortly (bounded by the first request's own timeouts).
            self._retry_at = time.monotonic() + hedging.config.floor / 2

    def _try_hedge(self, hedging: Hedging) -> bool:
        """The request is slow: ask the next source too, if the budget has a slot.

        Returns False when it has none (counted once per chunk); the caller asks again later.
        """
        if not hedging.budget.try_hedge():
            if not self._denied:
                self._denied = True
                hedging.stats.denied += 1
            return False
        size = self.ref.end - self.ref.start
        if (self._queue[0] == ORIGIN and self._origin_budget is not None
                and not self._origin_budget.take(size)):
            hedging.budget.hedge_done()
            if not self._over_budget:
                self._over_budget = True
                hedging.stats.over_budget += 1
            return False
        self._hedged = True  # At most one hedge per chunk.
        self._holds_slot = True
        self._hedge = self._queue.popleft()
        (progress,) = self._progress.values()
        log.info("chunk %d of %s is slow (%s); hedging to %s", self.ref.index, self.ref.digest,
                 progress.describe(), self._hedge)
        self._start(self._hedge)
        return True

    def _count_outcome(self, hedging: Hedging | None, winner: str) -> None:
        if hedging is None or self._hedge is None:
            return
        if winner == self._hedge:
            hedging.stats.won += 1
        else:
            hedging.stats.lost += 1

    def _start(self, source: str) -> None:
        hedging = self.reader.hedging
        progress = ReadProgress(
            peer=None if source == ORIGIN else source,
            liveness=hedging.liveness if hedging is not None else None,
        )
        task = asyncio.ensure_future(self._attempt(source, progress))
        self._running[task] = source
        self._progress[task] = progress

    async def _attempt(self, source: str, progress: ReadProgress) -> Buffer:
        hedging = self.reader.hedging
        if hedging is not None:
            hedging.budget.started()
            hedging.liveness.asking(progress)
        try:
            return await self.reader.read_source(self.ref, source, progress)
        finally:
            if hedging is not None:
                hedging.budget.finished()
                hedging.liveness.finished(progress)

    async def _cancel_all(self) -> None:
        """Cancel the requests still running (the loser, or all when the pull is cancelled)."""
        tasks = list(self._running)
        self._running.clear()
        self._progress.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
