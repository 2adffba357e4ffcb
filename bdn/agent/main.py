"""Wiring and lifecycle of the node agent: start, serve, drain, stop.

:class:`Agent` composes bdn's parts from one :class:`~bdn.agent.config.AgentConfig`:
the store (wrapped to count origin requests), the node cache, the owner-side
:class:`~bdn.agent.chunks.ChunkService`, peer membership and its ring, the
pull registry, and the two servers. :func:`run` adds signals.

Shutdown (SIGTERM or SIGINT) drains, each phase bounded by ``drain_timeout``:

1. ``/healthz`` answers 503, so peers take this node off their rings, and new
   pulls are refused with 503; progress requests and chunk requests are still
   answered.
2. Running pulls get until the deadline to finish; those still running then
   are cancelled (their verified chunks stay on disk for the next pull).
3. Both servers stop listening and let in-flight responses finish.
4. Everything is closed and the socket file removed.

A second signal skips the wait of step 2.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from prometheus_client import disable_created_metrics

from bdn.agent.chunks import ChunkService
from bdn.agent.config import AgentConfig
from bdn.agent.membership import HealthProber, Heard, Membership, MembershipCollector
from bdn.agent.metrics import AgentMetrics, CountingStore
from bdn.agent.pulls import PullContext, PullJob, PullRegistry
from bdn.agent.server import (
    ServerContext,
    UnixSocket,
    bind_unix_socket,
    peer_app,
    pod_app,
    remove_unix_socket,
)
from bdn.agent.trees import protected_dirs
from bdn.backends import store_for
from bdn.cache import NodeCache
from bdn.daemon.address import format_hostport
from bdn.daemon.jsonlog import JsonFormatter as JsonFormatter
from bdn.daemon.jsonlog import setup_json_logging as setup_json_logging
from bdn.daemon.lifecycle import (
    Closer,
    cancel_and_wait,
    close_all,
    serve_until_signalled,
    start_or_stop,
)
from bdn.daemon.sites import listen_tcp
from bdn.errors import ConfigError
from bdn.http import HttpClient, HttpConfig
from bdn.hub.app import HubContext, hub_app
from bdn.peer.client import PeerClient
from bdn.peer.hedge import HedgeConfig, Hedging
from bdn.peer.tiered import TierConfig
from bdn.pull import PullOptions
from bdn.ring import Ring

log = logging.getLogger("agent")

CACHE_SCAN_INTERVAL = 15.0
"""Seconds between measurements of the caches for ``/metrics``."""

LINGER_AFTER_DRAIN = 0.75
"""Seconds the pod socket stays up after the last pull ends during a drain, so
clients polling every 100-250 ms read the final state instead of a refused connection."""


class Agent:
    """One node agent. ``await start()``, then ``await drain()`` and ``await stop()``.

    Not reusable after :meth:`stop`. Use from one event loop.
    """

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.metrics = AgentMetrics()
        self.draining = False
        self._runners: list[web.AppRunner] = []
        self._socket: UnixSocket | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closers: list[Closer] = []
        # Set by start(); None before, and after a start that failed early.
        self.cache: NodeCache | None = None
        self.chunks: ChunkService | None = None
        self.membership: Membership | None = None
        self.pulls: PullRegistry | None = None
        self.peer_client: PeerClient | None = None
        self.hedging: Hedging | None = None

    async def start(self) -> None:
        """Open everything and start serving; on failure, close what was opened and raise."""
        await start_or_stop(self, self._start)

    async def _start(self) -> None:
        cfg, s = self.config, self.config.settings
        peer_http, probe_http = self._open_http_clients()
        store = CountingStore(store_for(s), self.metrics)
        self._closers.append(store.close)
        cache, chunks = self._open_caches(store)
        hedging = (Hedging(HedgeConfig.for_peer_timeout(cfg.peer_timeout, cfg.hedge_after))
                   if cfg.hedge else None)
        # Chunk traffic a peer sends counts as its liveness too: probes share a
        # starved loop with everything else (bdn.agent.membership).
        membership = self._open_membership(
            probe_http, hedging.liveness.last_heard if hedging is not None else None)
        self.peer_client = PeerClient(peer_http, cfg.token, timeout=cfg.peer_timeout)
        self.hedging = hedging
        if hedging is not None:
            self.metrics.watch_hedges(lambda: hedging.stats)
            # A silent owner's health decides a costly hedge; probes teach the deadline.
            hedging.prober, membership.on_answer = membership.probe, hedging.observe_probe
            self._closers.append(hedging.close)
        tiers = TierConfig(ring=membership.current_ring, self_addr=cfg.advertise,
                           peers=self.peer_client, local=chunks, hedging=hedging,
                           relay=chunks.relay)
        options = self._pull_options(store.uri)
        self.pulls = pulls = PullRegistry(
            PullContext(store, cache, s.secrets(), options,
                        tiers, cfg.background_fill_rate,
                        trees_roots=cfg.allowed_trees_roots,
                        protected=protected_dirs(s.cache_dir, s.store_uri)),
            self.metrics,
            keep=cfg.finished_pulls_kept,
            on_finish=self._pull_finished,
        )
        ctx = ServerContext(pulls, chunks, self.metrics, cfg.token, self.health)
        await self._serve_peers(ctx)
        # The peer port answers now, so agents starting with this one can see it;
        # the pod socket opens once they agree on the ring (bdn.agent.membership).
        await membership.start()
        await self._serve_pods(ctx)
        await self._serve_hub(store, cache, tiers, options)
        self._tasks.append(asyncio.create_task(self._scan_caches_forever(), name="bdn-scan"))
        self._log_started(store.uri, membership, options)

    def _open_http_clients(self) -> tuple[HttpClient, HttpClient]:
        """The HTTP clients for peers and for health probes. The store has its own,
        so a slow origin cannot starve peers or probes of connections."""
        cfg = self.config
        peer_http = HttpClient(
            HttpConfig(max_connections=64, connect_timeout=cfg.peer_timeout,
                       stall_timeout=max(5.0, 2 * cfg.peer_timeout))
        )
        probe_http = HttpClient(
            HttpConfig(connect_timeout=cfg.membership.probe_timeout,
                       stall_timeout=cfg.membership.probe_timeout)
        )
        self._closers += [peer_http.close, probe_http.close]
        return peer_http, probe_http

    def _open_caches(self, store: CountingStore) -> tuple[NodeCache, ChunkService]:
        """The node cache, and the chunk service that owns this node's chunks over it."""
        cfg, s = self.config, self.config.settings
        self.cache = cache = NodeCache(s.cache_dir, max_bytes=s.cache_max_bytes)
        self._closers.append(self._close_cache)
        # Chunks are served from node-cache blobs only as the agent's own pulls
        # would use them: admitted by proof, or on its store's (or a trusted one's) word.
        self.chunks = chunks = ChunkService(
            cache, store, chunk_cache_dir=cfg.chunk_cache_dir,
            chunk_cache_bytes=cfg.chunk_cache_bytes,
            trust=cfg.pull.trusting(s.trusted_stores, store.uri).trust_for(store.uri),
            fanout=cfg.fanout,
        )
        self._closers.append(chunks.close)
        self.metrics.watch_chunk_service(lambda: chunks.stats)
        return cache, chunks

    def _open_membership(self, probe_http: HttpClient, heard: Heard | None) -> Membership:
        """Peer membership, not started yet; the ring starts as this agent alone.
        ``heard``: when a peer last sent chunk traffic (excuses a missed probe)."""
        cfg = self.config
        self.membership = membership = Membership(
            cfg.membership,
            self_addr=cfg.advertise,
            ring_config=cfg.ring,
            prober=HealthProber(probe_http, cfg.membership.probe_timeout),
            on_change=self._ring_changed,
            heard=heard,
        )
        self._closers.append(membership.close)
        self.metrics.ring_members.set(1)
        self.metrics.registry.register(MembershipCollector(lambda: membership.stats))
        return membership

    def _log_started(self, store_uri: str, membership: Membership,
                     options: PullOptions) -> None:
        cfg = self.config
        log.info(
            "agent started",
            extra={
                "listen": format_hostport(*cfg.listen),
                "advertise": cfg.advertise,
                "socket": str(cfg.socket_path),
                "store": store_uri,
                "cache": str(cfg.settings.cache_dir),
                "members": sorted(membership.ring.members),
                "workers": options.transfer.workers,
            },
        )

    async def _serve_peers(self, ctx: ServerContext) -> None:
        """Listen on the peer port (before the pod socket: once a pod can connect, the
        agent is already reachable by its peers)."""
        await listen_tcp(await self._runner(peer_app(ctx)), self.config.listen)

    async def _serve_pods(self, ctx: ServerContext) -> None:
        """Listen on the pod socket."""
        cfg = self.config
        try:
            self._socket = bind_unix_socket(cfg.socket_path)
        except OSError as err:
            raise ConfigError(
                f"cannot create the socket {cfg.socket_path}: {err.strerror or err}; "
                "pass a writable --socket PATH", field="--socket",
            ) from err
        pod_runner = await self._runner(pod_app(ctx))
        await web.SockSite(pod_runner, self._socket.sock).start()

    def _pull_options(self, store_uri: str) -> PullOptions:
        """The options of every pull the agent runs (pods' and the Hub endpoint's): the
        configured ones, trusting the agent's store, with the data-plane worker count
        resolved once (``--workers`` / ``BDN_WORKERS``, default: the CPUs it may use)."""
        s = self.config.settings
        return self.config.pull.trusting(s.trusted_stores, store_uri).with_workers(s.workers)

    async def _serve_hub(self, store: CountingStore, cache: NodeCache, tiers: TierConfig,
                         options: PullOptions) -> None:
        """The Hub-compatible read endpoint (:mod:`bdn.hub`) on ``--hf-listen``, if set, with
        the pulls' store, cache, options and peer tier, so its bytes take the pulls' path."""
        cfg, s = self.config, self.config.settings
        if cfg.hf_listen is None:
            return
        app = hub_app(HubContext(store, cache, s.secrets(), options, tiers,
                                 upstream=cfg.hf_upstream))
        await listen_tcp(await self._runner(app), cfg.hf_listen, flag="--hf-listen")

    async def _runner(self, app: web.Application) -> web.AppRunner:
        # No access log: every chunk request would be a line; metrics count them.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=self.config.drain_timeout)
        await runner.setup()
        self._runners.append(runner)
        return runner

    def health(self) -> dict[str, Any]:
        """The ``/healthz`` body: status, this node's name, the live ring, running pulls."""
        membership, pulls = self.membership, self.pulls
        return {
            "status": "draining" if self.draining else "ok",
            "advertise": self.config.advertise,
            "members": sorted(membership.ring.members) if membership else [],
            "pulls_running": len(pulls.running) if pulls else 0,
        }

    async def drain(self, force: asyncio.Event | None = None) -> None:
        """Steps 1-3 of the module docstring; ``force`` cuts the wait for pulls short."""
        self.draining = True
        self.metrics.draining.set(1)
        pulls = self.pulls
        running = len(pulls.running) if pulls else 0
        log.info("draining", extra={"pulls_running": running,
                                    "deadline_s": self.config.drain_timeout})
        if pulls is not None and running:
            waiter = asyncio.create_task(pulls.wait(self.config.drain_timeout))
            stopper = asyncio.create_task((force or asyncio.Event()).wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            waiter.cancel()
            if pulls.running:
                log.warning("drain deadline reached; cancelling pulls",
                            extra={"pulls_running": len(pulls.running)})
                await pulls.cancel_all()
            await asyncio.sleep(LINGER_AFTER_DRAIN)
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    async def stop(self) -> None:
        """Close everything (idempotent); removes the socket file."""
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        if self.pulls is not None:
            await self.pulls.cancel_all()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        if self._socket is not None:
            remove_unix_socket(self._socket)
            self._socket = None
        await close_all(self._closers, log)

    async def _close_cache(self) -> None:
        if self.cache is not None:
            self.cache.close()

    def _ring_changed(self, ring: Ring) -> None:
        self.metrics.ring_members.set(len(ring.members))
        if self.peer_client is not None:
            # Requests in flight to a peer that left fall back now, not at their timeout.
            self.peer_client.drop_peers(ring.members)
        if self.hedging is not None:
            self.hedging.liveness.forget(ring.members)

    def _pull_finished(self, job: PullJob) -> None:
        self._tasks.append(asyncio.create_task(self._scan_caches(), name="bdn-scan-once"))
        self._tasks = [t for t in self._tasks if not t.done()]

    async def _scan_caches(self) -> None:
        if self.cache is None:
            return
        try:
            await asyncio.to_thread(
                self.metrics.scan_caches, self.cache, self.config.chunk_cache_dir
            )
        except Exception as err:  # Metrics are best effort; the next scan tries again.
            log.warning("measuring the caches failed: %s", err)

    async def _scan_caches_forever(self) -> None:
        while True:
            await self._scan_caches()
            await asyncio.sleep(CACHE_SCAN_INTERVAL)


async def serve(config: AgentConfig) -> int:
    """Run an agent until SIGTERM/SIGINT, drain it, stop it; returns the exit status (0)."""
    return await serve_until_signalled(Agent(config), "agent")


def run(config: AgentConfig) -> int:
    """The ``bdn agent`` process: serve until a signal (call :func:`setup_json_logging` first)."""
    # The ``*_created`` series double every counter's lines and nothing here reads them.
    disable_created_metrics()
    return asyncio.run(serve(config))
