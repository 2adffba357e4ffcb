"""What ``bdn simulate`` is asked: the burst, the fleet's links and the policy.

A :class:`Scenario` is a frozen value with the issue's stated assumptions as
defaults (25 Gbit/s NICs, full duplex; 3 GB/s disks; 10 GB/s origin in total)
and a :meth:`Scenario.check` that names the first bad value in one line.
Rates are bytes per second; :func:`parse_rate` reads them as a user writes
them (``25Gbit/s``, ``3GB/s``).

>>> parse_rate("25Gbit/s"), parse_rate("3GB/s"), parse_rate("100MB/s")
(3125000000.0, 3000000000.0, 100000000.0)
>>> parse_rate("1Gbps"), parse_rate("512MiB/s")
(125000000.0, 536870912.0)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from bdn.config.units import parse_size
from bdn.errors import ConfigError

Policy = Literal["naive", "ring", "fanout"]
POLICY_NAMES: tuple[Policy, ...] = ("naive", "ring", "fanout")
"""In the order tables and plots list them."""

ChunkOrder = Literal["hashed", "in-order", "rotated"]
CHUNK_ORDERS: tuple[ChunkOrder, ...] = ("hashed", "in-order", "rotated")
"""``hashed``: each node starts at a chunk picked from its name and the blob, as
the agents do (``FileTask.first_chunk``); ``in-order``: every node fetches chunk 0
first; ``rotated``: node ``i`` of ``N`` starts at chunk ``i * M // N``. All wrap."""

MiB = 1024**2
GB = 10**9

DEFAULT_NIC = 25e9 / 8
"""25 Gbit/s per direction (full duplex: ingress and egress are separate capacities)."""

DEFAULT_DISK = 3 * GB
"""NVMe write rate per node, bytes/s."""

DEFAULT_ORIGIN = 10 * GB
"""Origin bandwidth in total, bytes/s, shared by every node reading from it."""

DEFAULT_CHUNK = 64 * MiB
"""The manifest's default chunk size: the unit a node fetches, verifies and serves on."""

DEFAULT_FANOUT = 4
"""Concurrent requesters one node serves one chunk to under ``fanout``."""

DEFAULT_PARALLEL = 16
"""Chunk fetches in flight per node: the transfer engine's ``max_connections``."""

DEFAULT_START_SPREAD_S = 0.05
"""Node start times are spread uniformly over this many seconds (by the seed)."""

DEFAULT_OWNER_SLOTS = 32
"""The agent's ``DEFAULT_MAX_RESPONSES`` (``bdn/agent/gate.py``; not imported:
the model stays below the daemon)."""

DEFAULT_OWNER_QUEUE = 256
"""The agent's ``DEFAULT_MAX_QUEUED``: more waiting requests are refused (503)."""

_RATE = re.compile(r"\s*(\d+(?:\.\d+)?\s*(?:[kKmMgGtT]i?)?)\s*(bits?|b|B|)\s*(/s|ps)?\s*")


def parse_rate(text: str, *, field: str | None = None) -> float:
    """Parse a link rate into bytes per second.

    A lower-case ``b`` or ``bit`` means bits (``25Gbit/s``, ``25Gb/s``,
    ``1Gbps``); ``B`` or no unit means bytes (``3GB/s``, ``3G``, ``512MiB/s``).

    Raises:
        ConfigError: not a rate, or not positive; the message shows the forms.
    """
    m = _RATE.fullmatch(text)
    hint = "use e.g. 25Gbit/s, 3GB/s or 100MB/s"
    if m is None:
        raise ConfigError(f"{text!r} is not a rate; {hint}", field=field)
    try:
        value = float(parse_size(m.group(1).replace(" ", ""), field=field))
    except ConfigError:
        raise ConfigError(f"{text!r} is not a rate; {hint}", field=field) from None
    if m.group(2) in ("b", "bit", "bits"):
        value /= 8
    if not value > 0:
        raise ConfigError(f"{text!r} is not a positive rate; {hint}", field=field)
    return value


@dataclass(frozen=True, slots=True)
class Scenario:
    """One simulated burst: every node cold-pulls the same model at once.

    Attributes:
        nodes: nodes that pull.
        model_bytes: size of the model.
        chunk_bytes: the manifest's chunk size (the last chunk may be shorter).
        policy: ``naive`` (every node reads everything from origin), ``ring``
            (every node reads each chunk from its ring owner, which reads it
            from origin once) or ``fanout`` (the owner reads it from origin
            once and, as the chunk's tracker, sends later requesters to nodes
            that already hold it; each holder serves it to ``fanout`` at a time).
        replicas: ring owners per chunk; requesters ask the first (the others
            stand in when it fails, which the model does not simulate).
        fanout: under ``fanout``, requesters one holder serves one chunk to at once.
        nic: per-node NIC rate per direction, bytes/s.
        disk: per-node disk write rate, bytes/s.
        origin_total: origin bandwidth shared by all nodes, bytes/s.
        origin_per_node: each node's own link to origin, bytes/s (``inf``: none).
        origin_via_nic: origin traffic also crosses the node's NIC ingress (a
            real node); ``False`` when origin comes over its own link, as in
            ``bdn bench herd --netns``.
        cpu_per_gb: agent CPU seconds per GB received (verify, copy, write);
            caps a node's intake at ``1 / cpu_per_gb`` GB/s (one core's worth);
            ``0``: no cap.
        parallel: chunk fetches in flight per node.
        seed: spreads start times and breaks ties among equal holders.
        start_spread_s: node start times are uniform over ``[0, start_spread_s]``.
        owner_slots: peer responses one node sends at once (its gate).
        owner_queue: peer requests that may wait at one node; more are refused
            and read origin.
        chunk_order: which chunk each node fetches first (:data:`CHUNK_ORDERS`).
        resolution_s: flows that finish within this long of each other finish
            together (one rate update instead of many); ``None``: 1/50 of a
            chunk's time at NIC rate.
    """

    nodes: int
    model_bytes: int
    policy: Policy
    chunk_bytes: int = DEFAULT_CHUNK
    replicas: int = 1
    fanout: int = DEFAULT_FANOUT
    nic: float = DEFAULT_NIC
    disk: float = DEFAULT_DISK
    origin_total: float = DEFAULT_ORIGIN
    origin_per_node: float = math.inf
    origin_via_nic: bool = True
    cpu_per_gb: float = 0.0
    parallel: int = DEFAULT_PARALLEL
    seed: int = 0
    start_spread_s: float = DEFAULT_START_SPREAD_S
    resolution_s: float | None = None
    chunk_order: ChunkOrder = "hashed"
    owner_slots: int = DEFAULT_OWNER_SLOTS
    owner_queue: int = DEFAULT_OWNER_QUEUE

    @property
    def chunks(self) -> int:
        """Chunks of the model (the last may be shorter)."""
        return -(-self.model_bytes // self.chunk_bytes)

    def chunk_size(self, index: int) -> int:
        """Bytes of chunk ``index``."""
        return min(self.chunk_bytes, self.model_bytes - index * self.chunk_bytes)

    @property
    def intake(self) -> float:
        """What one node can land per second: disk, and CPU when a cost is given."""
        cpu = GB / self.cpu_per_gb if self.cpu_per_gb > 0 else math.inf
        return min(self.disk, cpu)

    @property
    def resolution(self) -> float:
        """Seconds within which flow completions are batched."""
        if self.resolution_s is not None:
            return self.resolution_s
        return self.chunk_bytes / self.nic / 50

    def check(self) -> None:
        """Raise ``ConfigError`` naming the first value no simulation can use."""
        if self.policy not in POLICY_NAMES:
            raise ConfigError(f"{self.policy!r} is not a policy; use one of "
                              f"{', '.join(POLICY_NAMES)}", field="--policy")
        for name, low in (("nodes", 1), ("replicas", 1), ("fanout", 1), ("parallel", 1),
                          ("owner_slots", 1), ("owner_queue", 0),
                          ("model_bytes", 1), ("chunk_bytes", 1)):
            if getattr(self, name) < low:
                flag = {"model_bytes": "model-size", "chunk_bytes": "chunk-size"}.get(name, name)
                raise ConfigError(f"must be at least {low}", field=f"--{flag}")
        if self.nodes > MAX_NODES:
            raise ConfigError(f"at most {MAX_NODES} nodes are simulated", field="--nodes")
        if self.chunks > MAX_CHUNKS:
            raise ConfigError(f"the model has {self.chunks} chunks; at most {MAX_CHUNKS} "
                              "are simulated, use a bigger --chunk-size", field="--chunk-size")
        for name in ("nic", "disk", "origin_total"):
            if not (getattr(self, name) > 0 and math.isfinite(getattr(self, name))):
                raise ConfigError("must be a positive, finite rate", field=_RATE_FLAGS[name])
        if not self.origin_per_node > 0:
            raise ConfigError("must be a positive rate", field="--origin-per-node")
        if not (self.cpu_per_gb >= 0 and math.isfinite(self.cpu_per_gb)):
            raise ConfigError("must be 0 (no cap) or a positive number of seconds",
                              field="--cpu-per-gb")
        if self.chunk_order not in CHUNK_ORDERS:
            raise ConfigError(f"{self.chunk_order!r} is not a chunk order; use one of "
                              f"{', '.join(CHUNK_ORDERS)}", field="--chunk-order")
        if not self.start_spread_s >= 0:
            raise ConfigError("must be 0 or more seconds", field="start_spread_s")


MAX_NODES = 100_000
"""Beyond this a run takes too long to be useful."""

MAX_CHUNKS = 100_000
"""The same bound on chunks (a 6 TiB model in 64 MiB chunks)."""

_RATE_FLAGS = {"nic": "--nic", "disk": "--disk", "origin_total": "--origin-bandwidth"}
