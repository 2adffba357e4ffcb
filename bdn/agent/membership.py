"""Peer membership: which agents are on the chunk ring right now.

Candidates come from ``--peers host:port,...`` or from the A/AAAA records of
``--peers-dns NAME`` (a headless Service), re-resolved every
``dns_interval`` seconds. Every ``probe_interval`` seconds each candidate's
``GET /healthz`` is probed. A candidate joins the ring at its first answer
(200 within ``probe_timeout``); a member leaves after ``misses_to_leave``
consecutive missed probes, so one slow answer from a busy peer does not move
its chunks (and send them back to origin). A draining agent answers 503, so it
leaves its peers' rings before it stops. This agent's own advertise address is
always a member.

Leaving a failed peer out only makes later chunks cheaper: a pull that asks a
dead owner already falls back to origin after the short peer timeout
(:mod:`bdn.peer.tiered`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from bdn.agent.config import MembershipConfig
from bdn.agent.protocol import HEALTH_PATH
from bdn.daemon.address import format_hostport
from bdn.errors import BdnError
from bdn.http import NO_RETRY, HttpClient
from bdn.ring import Ring, RingConfig

log = logging.getLogger(__name__)

Resolver = Callable[[str, int], Awaitable[set[str]]]
"""``resolve(name, port)`` -> ``{"ip:port", ...}``; raises ``OSError`` when DNS fails."""


class Prober(Protocol):
    """Answers whether the agent at ``host:port`` is healthy (never raises)."""

    async def __call__(self, addr: str) -> bool: ...


async def resolve_dns(name: str, port: int) -> set[str]:
    """Every address ``name`` resolves to, as ``ip:port`` (IPv6 bracketed)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    return {format_hostport(str(info[4][0]), port) for info in infos}


class HealthProber:
    """Probes ``http://<addr>/healthz`` through the shared HTTP layer, one attempt."""

    def __init__(self, http: HttpClient, timeout: float) -> None:
        self._http = http
        self._timeout = timeout

    async def __call__(self, addr: str) -> bool:
        try:
            await asyncio.wait_for(
                self._http.get_bytes(f"http://{addr}{HEALTH_PATH}", policy=NO_RETRY), self._timeout
            )
        except (BdnError, OSError, TimeoutError):
            return False
        return True


class Membership:
    """The live ring of this agent; see the module docstring.

    Coroutine-safe within one event loop. :attr:`ring` is replaced (never
    mutated) when the live member set changes; :meth:`live_ring` is a view
    that always answers with the current one.

    Args:
        config: candidates and timings.
        self_addr: this agent's advertise ``host:port`` (always a member).
        ring_config: replicas and vnodes of every ring built here.
        prober: health check of one candidate.
        resolver: DNS lookup for ``config.dns_name`` (default :func:`resolve_dns`).
        on_change: called with the new ring after each membership change.
    """

    def __init__(
        self,
        config: MembershipConfig,
        *,
        self_addr: str,
        ring_config: RingConfig,
        prober: Prober,
        resolver: Resolver = resolve_dns,
        on_change: Callable[[Ring], None] | None = None,
    ) -> None:
        self.config = config
        self.self_addr = self_addr
        self._prober = prober
        self._resolver = resolver
        self._on_change = on_change
        self._candidates: set[str] = set(config.static_peers)
        self._alive: set[str] = set()
        self._misses: dict[str, int] = {}
        self.ring = Ring([self_addr], ring_config)
        self._task: asyncio.Task[None] | None = None
        self._last_dns = float("-inf")

    @property
    def candidates(self) -> frozenset[str]:
        """Every peer known from the flags or DNS, alive or not (without self)."""
        return frozenset(self._candidates - {self.self_addr})

    def current_ring(self) -> Ring:
        """The ring over the members alive now. Pulls call it per chunk (it is
        ``TierConfig.ring``), so a peer that dies mid-pull stops costing a timeout
        per chunk and a joining peer starts sharing the load at once."""
        return self.ring

    async def start(self) -> None:
        """Resolve and probe once (so the first pulls see the peers up now), then keep going."""
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="bdn-membership")

    async def close(self) -> None:
        """Stop probing (idempotent)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def refresh(self) -> None:
        """One round: re-resolve DNS when due, probe every candidate, update the ring."""
        loop = asyncio.get_running_loop()
        if self.config.dns_name and loop.time() - self._last_dns >= self.config.dns_interval:
            self._last_dns = loop.time()
            try:
                found = await self._resolver(self.config.dns_name, self.config.peer_port)
            except OSError as err:
                # Keep the last answer: a DNS hiccup must not empty the ring.
                log.warning("resolving peers %s failed: %s", self.config.dns_name, err)
            else:
                self._candidates = found | set(self.config.static_peers)
        peers = sorted(self.candidates)
        answers = await asyncio.gather(*(self._prober(p) for p in peers))
        alive = set()
        for peer, ok in zip(peers, answers, strict=True):
            self._misses[peer] = 0 if ok else self._misses.get(peer, 0) + 1
            staying = peer in self._alive and self._misses[peer] < self.config.misses_to_leave
            if ok or staying:
                alive.add(peer)
        for gone in set(self._misses) - set(peers):
            del self._misses[gone]
        self._set_alive(alive)

    def _set_alive(self, alive: Iterable[str]) -> None:
        now = set(alive)
        if now == self._alive:
            return
        joined, left = sorted(now - self._alive), sorted(self._alive - now)
        self._alive = now
        self.ring = self.ring.with_members({self.self_addr, *now})
        log.info(
            "ring membership changed",
            extra={"joined": joined, "left": left, "members": sorted(self.ring.members)},
        )
        if self._on_change is not None:
            self._on_change(self.ring)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.probe_interval)
            try:
                await self.refresh()
            except Exception:  # A bug in one round must not stop membership for good.
                log.exception("membership refresh failed")
