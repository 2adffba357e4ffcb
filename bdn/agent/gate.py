"""A fair, bounded admission gate for the owner's peer responses.

An owner answering every peer at once runs out of memory, file descriptors
and disk bandwidth together, and answers everyone slowly. The gate lets
``limit`` responses run; later ones wait in arrival order (FIFO: a freed slot
is handed to the oldest waiter, never taken by a newcomer), and once
``max_queued`` are waiting a new request is refused at once (:class:`GateFull`,
answered 503 with ``Retry-After``) so its requester reads origin instead of
queueing behind a backlog it cannot see.

An early answer (:data:`~bdn.agent.protocol.EARLY_ANSWER_HEADER`) sends its
headers before its chunk is ready, so it cannot wait in the FIFO meanwhile
(a chunk still being filled from origin would hold up every ready one behind
it). It takes a :class:`Place` at arrival instead: refused at once like a
queued request when the queue is full, counted as waiting while its chunk is
filled, and turned into a slot (:meth:`Place.slot`, FIFO from then on) only
once there is something to send.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

DEFAULT_MAX_RESPONSES = 32
"""Peer responses an owner runs at once. A response sends from disk (sendfile), so
the cap bounds open files and the origin fetches in flight, not chunk buffers."""

DEFAULT_MAX_QUEUED = 256
"""Peer requests that may wait for a slot; more are refused with 503 at once."""


class GateFull(Exception):
    """The gate's queue is full: the request should go elsewhere (origin)."""


@dataclass(slots=True)
class GateStats:
    """What a :class:`ResponseGate` does; exported as metrics by the agent.

    ``in_flight`` and ``queued`` are the current numbers (``queued`` counts the
    places of early answers still waiting for their chunk), ``peak_in_flight`` the
    most responses ever run at once (a test checks it against the limit).
    """

    in_flight: int = 0
    queued: int = 0
    peak_in_flight: int = 0
    admitted: int = 0
    rejected: int = 0


class ResponseGate:
    """At most ``limit`` holders at once, FIFO waiting, at most ``max_queued`` waiting.

    Use from one event loop. A waiter that is cancelled leaves the queue, and
    one cancelled just after it was handed a slot passes the slot on.
    """

    def __init__(self, limit: int = DEFAULT_MAX_RESPONSES,
                 max_queued: int = DEFAULT_MAX_QUEUED) -> None:
        if limit < 1 or max_queued < 0:
            raise ValueError("ResponseGate needs limit >= 1 and max_queued >= 0")
        self.limit = limit
        self.max_queued = max_queued
        self.stats = GateStats()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._placed = 0  # Places taken and not yet waiting for (or holding) a slot.

    def place(self) -> Place:
        """A place in the queue, taken now, for a request that is not ready to send yet.

        Raises:
            GateFull: ``max_queued`` requests are already waiting.
        """
        self._check_room()
        self._placed += 1
        self._count_queued()
        return Place(self)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the body of the ``async with``.

        Raises:
            GateFull: ``max_queued`` requests are already waiting.
        """
        await self._acquire()
        try:
            yield
        finally:
            self._release()

    def _check_room(self) -> None:
        s = self.stats
        if self._free():
            return
        if len(self._waiters) + self._placed >= self.max_queued:
            s.rejected += 1
            raise GateFull(f"{s.in_flight} responses running and "
                           f"{len(self._waiters) + self._placed} waiting")

    def _free(self) -> bool:
        return self.stats.in_flight < self.limit and not self._waiters

    def _count_queued(self) -> None:
        self.stats.queued = len(self._waiters) + self._placed

    def _unplace(self) -> None:
        self._placed -= 1
        self._count_queued()

    async def _acquire(self, *, placed: bool = False) -> None:
        """Wait for a slot; ``placed``: the caller's :class:`Place` already passed the
        room check (and was just given up), so it is not refused now."""
        s = self.stats
        if self._free():
            self._entered()
            return
        if not placed:
            self._check_room()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._count_queued()
        try:
            await waiter  # _release hands its slot over: in_flight already counts us.
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # Handed a slot we will not use: pass it on.
            else:
                self._forget(waiter)
            raise
        s.admitted += 1

    def _entered(self) -> None:
        s = self.stats
        s.in_flight += 1
        s.admitted += 1
        s.peak_in_flight = max(s.peak_in_flight, s.in_flight)

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            self._count_queued()
            if not waiter.done():
                waiter.set_result(None)  # The slot moves to the oldest waiter.
                return
        self.stats.in_flight -= 1

    def _forget(self, waiter: asyncio.Future[None]) -> None:
        with suppress(ValueError):
            self._waiters.remove(waiter)
        self._count_queued()


class Place:
    """A request's place in a :class:`ResponseGate`'s queue (from :meth:`ResponseGate.place`).

    Use :meth:`slot` once, when there is something to send, or :meth:`give_up`
    (idempotent; ``slot`` gives the place up itself) when there never will be.
    """

    def __init__(self, gate: ResponseGate) -> None:
        self._gate: ResponseGate | None = gate

    def give_up(self) -> None:
        """Leave the queue without a slot (the request failed or was cancelled)."""
        if self._gate is not None:
            self._gate._unplace()
            self._gate = None

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a slot of the gate for the body of the ``async with`` (FIFO among the
        requests ready to send; never refused: the place was granted)."""
        gate = self._gate
        if gate is None:
            raise RuntimeError("this place was given up already")
        self.give_up()
        await gate._acquire(placed=True)
        try:
            yield
        finally:
            gate._release()
