"""The agent fleets of ``bdn bench herd``, on loopback or in network namespaces.

- :class:`Node`, :func:`loopback_nodes`, :func:`netns_nodes`: where each agent
  listens and finds origin, on loopback or in :mod:`bench.netns` namespaces;
- :func:`start_agents` starts them through :mod:`bdn.fleet` (the launcher
  ``bdn demo`` and the tests use too), as a ring or each alone;
- the coroutines that talk to the agents over their unix sockets (which cross
  network namespaces): readiness, the simultaneous pulls, the agents' own
  origin counters.

The counting origin lives in :mod:`bench.herd_origin`.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bdn import fleet
from bdn.agent.client import AgentClient, request_for
from bdn.errors import BdnError
from bdn.fleet import AgentSpec, FleetAgent, FleetError, agent_env, free_ports
from bench.harness import ToolFailed
from bench.netns import NetnsPlan, exec_argv

Variant = Literal["ring", "fanout", "naive", "frozen", "slow"]
"""``ring``: every agent lists all in ``--peers``, fan-out off (``--fanout 0``);
``fanout``: the same ring with ``--fanout K`` (:mod:`bdn.peer.fanout`); ``naive``:
each agent alone; ``frozen``, ``slow``: the ring with its first agent stopped
(SIGSTOP) or its chunk answers delayed (``--owner-fault``)."""


def in_ring(variant: Variant) -> bool:
    """Whether the agents of ``variant`` list each other in ``--peers``."""
    return variant != "naive"


def variant_flags(variant: Variant, fanout: int) -> tuple[str, ...]:
    """The agent flags that make ``variant``: fan-out off but in the fanout case."""
    return ("--fanout", str(fanout if variant == "fanout" else 0))

AGENT_PORT_NETNS = 7070
"""Peer port of every agent in the shaped run (each has its own namespace)."""

ORIGIN_PORT_NETNS = 8080
"""nginx's port on every origin link of the shaped run."""

POLL_INTERVAL_S = 0.05
"""Progress polls of each pull: the wall clock's resolution."""

AGENT_FLAGS = ("--drain-timeout", "10")
"""Flags of every bench agent. Membership timings stay at their defaults, as
deployed: faster probes would find a ring sooner but also drop busy peers from
it more often."""


@dataclass(frozen=True, slots=True)
class Node:
    """One agent's place: its peer address, its origin URL, how to start it there."""

    name: str
    listen: str
    store: str
    argv_prefix: tuple[str, ...] = ()
    advertise: str | None = None
    """The address peers reach it at, when not ``listen`` (a relay in front of it)."""

    @property
    def address(self) -> str:
        return self.advertise or self.listen

    def spec(self, area: Path, sockets: Path) -> AgentSpec:
        """The agent of this node in case directory ``area`` (its socket in ``sockets``)."""
        return AgentSpec(self.name, self.listen, self.store, area / self.name,
                         sockets / f"{area.name}-{self.name}.sock", self.argv_prefix,
                         advertise=self.advertise)


def loopback_nodes(n: int, origin: str) -> list[Node]:
    """``n`` agents on 127.0.0.1, each on a port free now, all reading ``origin``."""
    return [Node(f"n{i}", f"127.0.0.1:{port}", origin) for i, port in enumerate(free_ports(n))]


def netns_nodes(n: int, plan: NetnsPlan) -> list[Node]:
    """The first ``n`` nodes of ``plan``: each in its own namespace, with its own origin link."""
    return [
        Node(
            f"n{i}",
            f"{plan.peer_addr(i)}:{AGENT_PORT_NETNS}",
            f"http://{plan.origin_addr(i)}:{ORIGIN_PORT_NETNS}",
            tuple(exec_argv(plan.node_ns(i), [])),
        )
        for i in range(n)
    ]


def agent_argv(spec: AgentSpec, variant: Variant, peers: Sequence[str],
               token_file: Path, extra: Sequence[str] = ()) -> list[str]:
    """The command line of one agent (a ring member, or alone for ``naive``);
    ``extra``: more flags (``--hedge-after``)."""
    return fleet.agent_argv(spec, peers=peers if in_ring(variant) else (),
                            token_file=token_file, extra=[*AGENT_FLAGS, *extra])


def mount(agent: FleetAgent) -> Path:
    """Where a bench agent materializes the model."""
    return agent.spec.root / "mount"


def ring_changes_since(agent: FleetAgent, since: float) -> int:
    """How often ``agent``'s ring changed after Unix time ``since`` and after its
    start-up wait ended (its JSON log; joins while the ring forms are not changes).

    Once a ring has formed, a change mid-burst means a probe of a busy peer
    failed and the peer's chunks moved: the way a ring reads origin twice.
    """
    count = 0
    lines = agent.logs().splitlines()
    settled = not any('"ring settled' in line for line in lines)  # Older logs: count all.
    for line in lines:
        settled = settled or '"ring settled' in line
        if not settled or '"ring membership changed"' not in line:
            continue
        try:
            when = datetime.datetime.fromisoformat(json.loads(line)["ts"]).timestamp()
        except (ValueError, KeyError, TypeError):
            continue
        count += when >= since
    return count


def start_agents(nodes: Sequence[Node], variant: Variant, area: Path, sockets: Path,
                 token_file: Path, extra: Sequence[str] = ()) -> list[FleetAgent]:
    """Start one agent per node, with flags ``extra`` too; the caller must
    :func:`bdn.fleet.stop_agents` them (even on failure)."""
    peers = [node.address for node in nodes] if in_ring(variant) else []
    agents: list[FleetAgent] = []
    for node in nodes:
        spec = node.spec(area, sockets)
        spec.root.mkdir(parents=True)
        agents.append(fleet.start_agent(spec, peers=peers, token_file=token_file,
                                        extra=[*AGENT_FLAGS, *extra],
                                        env=agent_env(spec.root),
                                        cwd=spec.root))
    return agents


# ---------------------------------------------------------------------------
# Talking to the agents (over their unix sockets, which cross namespaces)


async def wait_ready(agents: Sequence[FleetAgent], members: int, timeout: float) -> None:
    """Until every agent's ``/healthz`` lists ``members`` ring members.

    Raises:
        ToolFailed: an agent exited, or the ring did not form in ``timeout`` seconds.
    """
    try:
        await fleet.wait_ready(agents, members=members, timeout=timeout, interval=0.1)
    except FleetError as err:
        raise ToolFailed(str(err)) from err


async def _get(sock: Path, path: str, *, timeout: float = 5) -> tuple[int, str]:
    connector = aiohttp.UnixConnector(path=str(sock))
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)
    ) as session, session.get("http://bdn-agent" + path) as resp:
        return resp.status, await resp.text()


COUNTERS = {
    "origin_bytes": "bdn_origin_bytes_total",
    "peer_failures": "bdn_peer_failures_total",
    "corrupt_from_peers": "bdn_corrupt_chunks_from_peers_total",
}
"""Agent counters the bench reads after a burst (our name -> Prometheus sample name)."""

HEDGES = "bdn_peer_hedges_total"
"""Read by outcome too: ``hedges_<outcome>`` in :func:`agent_counters`' answer."""

EGRESS = "bdn_peer_bytes_served_total"
"""Chunk bytes each agent sent to peers: its largest is ``peak_egress``."""

FANOUT = {
    ("bdn_fanout_redirects_total", "side", "issued"): "redirects",
    ("bdn_fanout_bytes_served_total", "role", "holder"): "holder_bytes",
}
"""Fan-out counters, summed (sample name, label, value -> our name)."""


async def agent_counters(agents: Sequence[FleetAgent]) -> dict[str, int]:
    """Each of :data:`COUNTERS`, summed over ``agents`` (from ``/metrics`` on their sockets).

    ``origin_bytes`` is what the agents say they read from origin: a cross-check of
    the origin's own count; ``peer_failures`` says why a ring read origin more than once;
    ``hedges_<outcome>``: :data:`HEDGES` by outcome; ``peak_egress``: the most chunk bytes
    one agent sent to peers; ``redirects``, ``holder_bytes``: :data:`FANOUT`.
    """
    wanted = {sample: key for key, sample in COUNTERS.items()}
    totals = dict.fromkeys([*COUNTERS, "peak_egress", *FANOUT.values()], 0.0)
    for a in agents:
        status, text = await _get(a.socket, "/metrics")
        if status != 200:
            raise ToolFailed(f"agent {a.name} /metrics answered {status}")
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in wanted:
                    totals[wanted[sample.name]] += sample.value
                elif sample.name == HEDGES:
                    key = f"hedges_{sample.labels.get('outcome')}"
                    totals[key] = totals.get(key, 0.0) + sample.value
                elif sample.name == EGRESS:
                    totals["peak_egress"] = max(totals["peak_egress"], sample.value)
                for (name, label, value), key in FANOUT.items():
                    if sample.name == name and sample.labels.get(label) == value:
                        totals[key] += sample.value
    return {key: int(value) for key, value in totals.items()}


async def pull_all(
    agents: Sequence[FleetAgent], manifest_id: str, timeout: float,
    *, when_open: float | None = None,
) -> tuple[float, list[dict[str, Any]]]:
    """All agents pull ``manifest_id`` into their mounts at once.

    With ``when_open`` (the ``time.perf_counter()`` at which the agents were
    launched), each pull is sent the moment its agent's pod socket answers,
    and the time runs from ``when_open`` (``--start together``).

    Returns:
        Seconds from the first request (or ``when_open``) to the last
        completion, and each agent's final progress object.

    Raises:
        ToolFailed: an agent exited, a pull failed, or they did not all finish in ``timeout``.
    """

    async def one(a: FleetAgent) -> tuple[float, dict[str, Any]]:
        if when_open is not None:
            await fleet.wait_answering(a, timeout=timeout, interval=0.01)
        client = AgentClient(a.address, poll_interval=POLL_INTERVAL_S)
        status = await client.pull(request_for(manifest_id, mount(a)))
        return time.perf_counter(), status

    start = time.perf_counter() if when_open is None else when_open
    try:
        # asyncio.timeout, not wait_for: when SIGTERM cancels everything, wait_for
        # leaves the gather's CancelledError unretrieved and asyncio logs it.
        async with asyncio.timeout(timeout):
            done = await asyncio.gather(*(one(a) for a in agents))
    except TimeoutError:
        raise ToolFailed(f"the pulls did not finish within {timeout:.0f}s") from None
    except (BdnError, OSError) as err:  # FleetError is a BdnError
        raise ToolFailed(f"a pull failed: {err}") from err
    return max(end for end, _ in done) - start, [status for _, status in done]

