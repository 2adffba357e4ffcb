"""The agent's configuration: bdn's small configs composed into one value.

The ``bdn agent`` entry point (:mod:`bdn.cli.agent`) reads flags and the
``BDN_*`` environment once and builds an :class:`AgentConfig`; nothing under
``agent/`` reads the environment or a file to configure itself (docs/DESIGN.md, "Conventions").
Addresses are parsed by :mod:`bdn.daemon.address`, as for the mirror service.

>>> parse_peer_list("10.0.0.2:7070, [::1]:7070,10.0.0.2:7070", field="--peers")
('10.0.0.2:7070', '[::1]:7070')
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bdn.agent.chunks import DEFAULT_CHUNK_CACHE_BYTES
from bdn.agent.trees import DEFAULT_TREES_DIR, check_roots
from bdn.config.settings import Settings
from bdn.daemon.address import format_hostport, is_loopback, is_wildcard, parse_hostport
from bdn.errors import ConfigError
from bdn.peer.fanout import DEFAULT_FANOUT
from bdn.pull import DEFAULT_PULL_OPTIONS, PullOptions
from bdn.ring import DEFAULT_RING_CONFIG, RingConfig

if TYPE_CHECKING:
    from bdn.hub.upstream import UpstreamConfig

DEFAULT_LISTEN = "127.0.0.1:7070"
"""Peer-facing address when none is given: loopback, so no token is needed."""

DEFAULT_SOCKET_NAME = "agent.sock"
"""The pod-facing socket's file name inside the cache directory."""

# sun_path is 108 bytes on Linux, including the terminating NUL; the socket is
# first bound under a temporary name a few characters longer (see server.py).
MAX_SOCKET_PATH = 90


@dataclass(frozen=True, slots=True)
class MembershipConfig:
    """How the agent finds its peers and decides which are alive.

    Attributes:
        static_peers: ``host:port`` of every agent (``--peers``); with
            ``dns_name`` unset this is the whole candidate list.
        dns_name: a headless Service name whose A/AAAA records are the agents
            (``--peers-dns``); re-resolved every ``dns_interval`` seconds.
        peer_port: the port peers listen on when found through DNS.
        dns_interval: seconds between DNS resolutions.
        probe_interval: seconds between ``/healthz`` probes of each candidate.
        probe_timeout: seconds a probe may take before it counts as missed.
        misses_to_leave: consecutive missed probes before a member leaves the
            ring. One slow probe must not evict a busy peer: every membership
            change moves ~1/N of the chunks to new owners, which read them from
            origin again (measured: a flapping ring took a 4-node herd from
            1.0x to 1.75x the model at origin).
        settle_timeout: the longest the start-up waits for every known
            candidate to answer before the pod socket opens, so agents started
            together agree on owners before their first pull (0: one round,
            no wait; :mod:`bdn.agent.membership`).
    """

    static_peers: tuple[str, ...] = ()
    dns_name: str | None = None
    peer_port: int = 7070
    dns_interval: float = 10.0
    probe_interval: float = 2.0
    probe_timeout: float = 2.0
    misses_to_leave: int = 3
    settle_timeout: float = 10.0


DEFAULT_MEMBERSHIP_CONFIG = MembershipConfig()


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything ``bdn agent`` needs, resolved.

    Attributes:
        settings: store, node cache, budgets and secrets (``BDN_STORE``,
            ``BDN_CACHE_DIR``, ``BDN_CACHE_MAX_BYTES``, ``BDN_SECRETS_DIR``).
        listen: ``(host, port)`` of the peer-facing server.
        advertise: ``host:port`` peers use to reach this agent; also this
            agent's own name on the ring.
        socket_path: the pod-facing unix socket.
        token: the peer bearer token; ``None`` only on a loopback listen.
        membership: how peers are found and probed.
        ring: replication factor and vnodes of the chunk ring.
        pull: transfer limits of the agent's pulls. Its ``transfer.workers``
            left ``None`` is resolved at start from ``settings.workers``
            (``--workers`` / ``BDN_WORKERS``; default: the CPUs the agent may use).
        chunk_cache_bytes: byte budget of the owner-side chunk cache.
        background_fill_rate: bytes per second a pull requested with
            ``"background": true`` may take (``None``: no cap).
        peer_timeout: seconds a chunk request to a peer may take before the
            pull falls back to origin (docs/DESIGN.md, "Pull": a short peer timeout).
        hedge_after: the shortest wait before a slow chunk read from a peer is
            hedged (``None``: ``peer_timeout``); the deadline itself is learned
            (:mod:`bdn.peer.hedge`). ``hedge=False`` never hedges.
        drain_timeout: seconds a SIGTERM waits for in-flight pulls and
            responses before cancelling them.
        finished_pulls_kept: finished pulls remembered for ``GET /v1/pulls/{id}``.
        trees_roots: the directories pods may have trees materialized under
            (``--trees-root``; absolute, normalized); empty: only
            ``<cache>/trees`` (see :attr:`allowed_trees_roots`, :mod:`bdn.agent.trees`).
        hf_listen: ``(host, port)`` of the Hub-compatible read endpoint
            (``--hf-listen``, :mod:`bdn.hub`); ``None``: not served.
        hf_upstream: pull-through for that endpoint (``--hf-upstream``,
            :mod:`bdn.hub.upstream`); ``None``: off.
        fanout: K of :mod:`bdn.peer.fanout` (``--fanout``): requesters an owner
            sends each chunk to itself before redirecting to holders; 0: off.
    """

    settings: Settings
    listen: tuple[str, int]
    advertise: str
    socket_path: Path
    token: str | None = None
    membership: MembershipConfig = DEFAULT_MEMBERSHIP_CONFIG
    ring: RingConfig = DEFAULT_RING_CONFIG
    pull: PullOptions = DEFAULT_PULL_OPTIONS
    chunk_cache_bytes: int = DEFAULT_CHUNK_CACHE_BYTES
    background_fill_rate: float | None = None
    peer_timeout: float = 2.0
    hedge: bool = True
    hedge_after: float | None = None
    drain_timeout: float = 30.0
    finished_pulls_kept: int = 1000
    trees_roots: tuple[Path, ...] = ()
    hf_listen: tuple[str, int] | None = None
    hf_upstream: UpstreamConfig | None = None
    fanout: int = DEFAULT_FANOUT

    def __post_init__(self) -> None:
        check_config(self)

    @property
    def chunk_cache_dir(self) -> Path:
        """Where the owner-side chunk cache lives: beside the node cache's blobs."""
        return self.settings.cache_dir / "chunks"

    @property
    def allowed_trees_roots(self) -> tuple[Path, ...]:
        """Where pods' trees may go: ``trees_roots``, else ``<cache>/trees``."""
        return self.trees_roots or (
            Path(os.path.abspath(self.settings.cache_dir / DEFAULT_TREES_DIR)),)


def check_config(config: AgentConfig) -> None:
    """Refuse configurations that would be unsafe or could not work.

    Raises:
        ConfigError: a non-loopback listen address without a token, an
            unusable advertise address, a socket path too long for the OS, or
            a trees root that is unsafe (:func:`bdn.agent.trees.check_roots`).
    """
    host, port = config.listen
    if config.token is None and not is_loopback(host):
        raise ConfigError(
            f"{format_hostport(host, port)} is not a loopback address and no peer token is "
            "set; pass --token-file FILE (env BDN_TOKEN_FILE) so peers must authenticate",
            field="--listen",
        )
    if config.token is not None and not config.token:
        raise ConfigError("the peer token is empty; put a random secret in the token file",
                          field="--token-file")
    adv_host, _ = parse_hostport(config.advertise, field="--advertise")
    if is_wildcard(adv_host):
        raise ConfigError(
            f"{config.advertise} is a wildcard address peers cannot connect to; pass "
            "--advertise with this node's address, e.g. --advertise $(POD_IP):7070",
            field="--advertise",
        )
    if len(str(config.socket_path)) > MAX_SOCKET_PATH:
        raise ConfigError(
            f"{config.socket_path} is longer than {MAX_SOCKET_PATH} characters, too long for "
            "a unix socket; pass a shorter --socket PATH",
            field="--socket",
        )
    check_roots(config.allowed_trees_roots, config.settings.cache_dir, config.settings.store_uri)


def parse_peer_list(text: str, *, field: str) -> tuple[str, ...]:
    """``host:port,host:port`` into normalized ``host:port`` strings (order kept, deduplicated)."""
    peers: dict[str, None] = {}
    for item in text.split(","):
        if item.strip():
            peers[format_hostport(*parse_hostport(item, field=field))] = None
    return tuple(peers)
