"""Run one simulated burst: N nodes start, each fetches every chunk, the policy says from where.

Each node starts at a time drawn by the seed within ``start_spread_s``, then
keeps ``parallel`` chunk fetches in flight, in chunk order (as the transfer
engine does); a chunk has landed when its last byte is on the node's disk,
verified. A node's time-to-ready runs from its own start to its last chunk's
landing.

Owners come from the real consistent-hash ring (:class:`bdn.ring.Ring`, the
same keys and vnodes as the agents), over one blob whose digest the seed picks,
so the owner imbalance is the one a fleet sees.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Generator
from typing import Any

import numpy as np
import simpy

from bdn.digest import Digest, xxh3_128_hex
from bdn.ring import Ring, RingConfig
from bdn.simulate.network import FlowNetwork
from bdn.simulate.policies import POLICIES, Fleet
from bdn.simulate.report import Result
from bdn.simulate.scenario import Scenario

__all__ = ["ring_owners", "simulate"]


def ring_owners(scenario: Scenario) -> list[int]:
    """The first ring owner of every chunk, as a node index."""
    if scenario.nodes == 1:
        return [0] * scenario.chunks
    names = [f"node-{i}" for i in range(scenario.nodes)]
    index = {name: i for i, name in enumerate(names)}
    # Only the first owner is asked (replicas stand in on failure), so one is enough.
    ring = Ring(names, RingConfig(replicas=1))
    return [index[ring.owners(_digest(scenario), c)[0]] for c in range(scenario.chunks)]


def _first_chunk(scenario: Scenario, node: int) -> int:
    """Where ``node`` starts in the chunk list: 0 in order; spread evenly by node
    (rotated); or picked from the node's name and the blob, as the agents pick it
    (hashed, ``bdn.peer.tiered.PeerPull.first_chunk``)."""
    if scenario.chunk_order == "in-order":
        return 0
    if scenario.chunk_order == "rotated":
        return (node * scenario.chunks) // scenario.nodes
    return int(xxh3_128_hex(f"node-{node}/{_digest(scenario)}".encode())[:8], 16) \
        % scenario.chunks


def _digest(scenario: Scenario) -> Digest:
    """The simulated blob's digest (the seed picks it, and with it the ring's owners)."""
    return Digest(hashlib.sha256(f"bdn-simulate:{scenario.seed}".encode()).hexdigest())


def simulate(scenario: Scenario) -> Result:
    """Simulate one burst and return its figures.

    Raises:
        ConfigError: a value of ``scenario`` no simulation can use.
    """
    scenario.check()
    started = time.perf_counter()
    rng = random.Random(scenario.seed)
    env = simpy.Environment()
    net = FlowNetwork(env, Fleet.capacities(scenario), scenario.resolution)
    owners = ring_owners(scenario) if scenario.policy != "naive" else []
    fleet = Fleet(scenario, net, owners)
    policy = POLICIES[scenario.policy](fleet)
    starts = [rng.uniform(0.0, scenario.start_spread_s) for _ in range(scenario.nodes)]
    ready = [0.0] * scenario.nodes

    def worker(node: int, todo: list[int]) -> Generator[simpy.Event, Any, None]:
        yield env.timeout(starts[node])
        while todo:
            chunk = todo.pop()
            yield from policy.fetch(node, chunk)
            ready[node] = max(ready[node], float(env.now) - starts[node])

    for node in range(scenario.nodes):
        # Popped from the end: chunk 0 first (or this node's first, rotated).
        first = _first_chunk(scenario, node)
        order = [*range(first, scenario.chunks), *range(first)]
        todo = order[::-1]
        for _ in range(min(scenario.parallel, scenario.chunks)):
            env.process(worker(node, todo))
    env.run()
    times = np.array(ready)
    return Result(
        scenario=scenario,
        p50_s=float(np.percentile(times, 50)),
        p99_s=float(np.percentile(times, 99)),
        max_s=float(times.max()),
        mean_s=float(times.mean()),
        origin_bytes=fleet.origin_bytes,
        peak_egress_bytes_per_node=max(fleet.egress_bytes),
        mean_egress_bytes_per_node=sum(fleet.egress_bytes) / scenario.nodes,
        refused=fleet.refused,
        rate_solves=net.solves,
        compute_s=time.perf_counter() - started,
    )
