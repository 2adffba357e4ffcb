"""Where a node gets each chunk: naive (origin), ring (the owner) or fanout (the owner's tree).

Each policy is a generator a node's fetch worker runs per chunk (a simpy
process step); :data:`POLICIES` maps the policy name to its class, so adding
one is a row, not a branch.

- **naive**: every node reads every chunk from origin.
- **ring**: the chunk's first ring owner reads it from origin once (the first
  request, its own or a peer's, starts that read; the rest wait for it) and
  then sends it to every other node that asks. It serves only after the whole
  chunk has landed and been verified (store and forward, per chunk).

Every node answers peers through its response gate (``bdn/agent/gate.py``):
32 responses at once, 256 waiting; a request beyond that is refused (503)
and its requester reads the chunk from origin itself.
- **fanout** (:mod:`bdn.peer.fanout`): the owner reads it from origin once,
  as in ring, and is its tracker. It serves the first ``fanout`` requesters
  itself and redirects each later one to the oldest requester that has been
  given fewer than ``fanout`` redirects, so the chunk spreads as a
  breadth-first ``fanout``-ary tree. Every requester becomes a holder as it
  asks; a holder passes the chunk on only once its own copy has landed and
  been verified (store and forward, per chunk).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import simpy

from bdn.simulate.network import UNUSED, FlowNetwork
from bdn.simulate.scenario import Policy, Scenario

__all__ = ["POLICIES", "Fanout", "Fleet", "Naive", "Ring"]

Fetch = Generator[simpy.Event, Any, None]


@dataclass(slots=True)
class _Gate:
    """A node's response gate, as ``bdn/agent/gate.py``: ``slots`` responses run at
    once, later ones wait FIFO; a request arriving while ``max_queued`` already wait
    (for a slot or for the chunk's fill) is refused, and its requester reads origin."""

    slots: int
    max_queued: int
    waiting: int = 0
    queue: deque[simpy.Event] = field(default_factory=deque)

    def place(self) -> bool:
        """Take a place in the queue (``False``: refused, the 503)."""
        if self.waiting >= self.max_queued:
            return False
        self.waiting += 1
        return True

    def slot(self, env: simpy.Environment) -> simpy.Event:
        """Turn the place into a sending slot once one is free (FIFO)."""
        granted = env.event()
        self.queue.append(granted)
        self._hand_out()
        return granted

    def release(self) -> None:
        self.slots += 1
        self._hand_out()

    def _hand_out(self) -> None:
        while self.slots and self.queue:
            self.slots -= 1
            self.waiting -= 1
            self.queue.popleft().succeed()


@dataclass(slots=True)
class Fleet:
    """The resources of every node and the origin, and the burst's byte counters.

    Resource indices (``0`` is the network's unused slot): origin total ``1``;
    for node ``i`` egress ``2 + 4i``, NIC ingress ``3 + 4i``, intake (disk and
    CPU) ``4 + 4i``, origin link ``5 + 4i``.
    """

    scenario: Scenario
    net: FlowNetwork
    owners: list[int]
    origin_bytes: int = 0
    egress_bytes: list[int] = field(default_factory=list)
    refused: int = 0
    gates: list[_Gate] = field(default_factory=list)
    _origin_reads: dict[tuple[int, int], simpy.Event] = field(default_factory=dict)

    ORIGIN = 1

    def __post_init__(self) -> None:
        s = self.scenario
        self.egress_bytes = [0] * s.nodes
        self.gates = [_Gate(s.owner_slots, s.owner_queue) for _ in range(s.nodes)]

    @staticmethod
    def capacities(s: Scenario) -> list[float]:
        """Capacities of resources ``1..`` in the order the indices above give."""
        per_node = [s.nic, s.nic, s.intake, s.origin_per_node]
        return [s.origin_total, *(per_node * s.nodes)]

    def from_origin(self, node: int, size: int) -> simpy.Event:
        """A flow from origin to ``node`` (counted as origin bytes)."""
        self.origin_bytes += size
        nic_in = 3 + 4 * node if self.scenario.origin_via_nic else UNUSED
        return self.net.transfer((self.ORIGIN, nic_in, 4 + 4 * node, 5 + 4 * node), size)

    def between(self, src: int, dst: int, size: int) -> simpy.Event:
        """A flow from peer ``src`` to ``dst`` (counted as ``src``'s egress)."""
        self.egress_bytes[src] += size
        return self.net.transfer((2 + 4 * src, 3 + 4 * dst, 4 + 4 * dst), size)

    def serve(self, src: int, dst: int, chunk: int, ready: simpy.Event) -> Fetch:
        """``dst`` asks ``src`` for ``chunk``, which ``src`` has once ``ready`` fires:
        through ``src``'s gate (a place while it waits, then a slot to send), or,
        refused, from origin."""
        size = self.scenario.chunk_size(chunk)
        gate = self.gates[src]
        if not gate.place():
            self.refused += 1
            yield self.from_origin(dst, size)
            return
        yield ready
        yield gate.slot(self.net.env)
        yield self.between(src, dst, size)
        gate.release()

    def origin_read(self, node: int, chunk: int) -> simpy.Event:
        """``node``'s one read of ``chunk`` from origin: the first call starts it, all share it."""
        key = (node, chunk)
        read = self._origin_reads.get(key)
        if read is None:
            read = self._origin_reads[key] = self.from_origin(node, self.scenario.chunk_size(chunk))
        return read


class Naive:
    """Every node reads every chunk from origin."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def fetch(self, node: int, chunk: int) -> Fetch:
        yield self.fleet.from_origin(node, self.fleet.scenario.chunk_size(chunk))


class Ring:
    """Every node reads each chunk from its first ring owner; the owner reads origin once."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def fetch(self, node: int, chunk: int) -> Fetch:
        owner = self.fleet.owners[chunk]
        read = self.fleet.origin_read(owner, chunk)
        if owner == node:
            yield read
        else:
            yield from self.fleet.serve(owner, node, chunk, read)


@dataclass(slots=True)
class _Tracker:
    """The owner's routing of one chunk, as :class:`bdn.peer.fanout.FanoutTracker` does it.

    ``holders`` are the requesters in arrival order, with the redirects each
    has been given; ``room`` is the oldest that may still get one (counts only
    grow, so it only moves forward).
    """

    direct: int = 0
    holders: list[int] = field(default_factory=list)
    assigned: list[int] = field(default_factory=list)
    room: int = 0


class Fanout:
    """The owner reads origin once, serves ``fanout`` requesters and redirects the rest."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.limit = fleet.scenario.fanout
        self.trackers: dict[int, _Tracker] = {}
        self.landed: dict[tuple[int, int], simpy.Event] = {}

    def fetch(self, node: int, chunk: int) -> Fetch:
        fleet = self.fleet
        owner = fleet.owners[chunk]
        read = fleet.origin_read(owner, chunk)
        if owner == node:
            yield read
            return
        source = self._route(chunk, node)
        # A holder passes the chunk on once it has verified it (store and forward).
        ready = read if source == owner else self.landed[(source, chunk)]
        yield from fleet.serve(source, node, chunk, ready)
        self.landed[(node, chunk)].succeed()

    def _route(self, chunk: int, node: int) -> int:
        """Where ``node`` reads ``chunk``: the owner for the first ``fanout``
        requesters, then the oldest holder with fewer than ``fanout`` redirects
        (breadth first). Every requester becomes a holder as it asks."""
        tracker = self.trackers.setdefault(chunk, _Tracker())
        self.landed[(node, chunk)] = self.fleet.net.env.event()
        tracker.holders.append(node)
        tracker.assigned.append(0)
        if tracker.direct < self.limit:
            tracker.direct += 1
            return self.fleet.owners[chunk]
        while tracker.assigned[tracker.room] >= self.limit:
            tracker.room += 1
        if tracker.room == len(tracker.holders) - 1:
            # Only the requester itself has room (cannot happen for K >= 1, as
            # K-ary trees always have room): the owner serves, as the agent's does.
            tracker.direct += 1
            return self.fleet.owners[chunk]
        tracker.assigned[tracker.room] += 1
        return tracker.holders[tracker.room]


POLICIES: dict[Policy, Callable[[Fleet], Naive | Ring | Fanout]] = {
    "naive": Naive,
    "ring": Ring,
    "fanout": Fanout,
}
"""Policy name to the class that decides where a node's chunk comes from."""
