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

**Settling at start-up.** :meth:`Membership.start` does not stop at one round:
it probes every ``SETTLE_PROBE_INTERVAL`` until each known candidate has
answered (200, or any HTTP answer such as a draining 503) or
``settle_timeout`` has passed, and the agent opens its pod socket only then
(:mod:`bdn.agent.main`; its peer port is already open, so the others' waits
end too). Agents started together therefore agree on every chunk's owner
before the first pull begins; without the wait, each one that opened first
saw a ring of itself and read every chunk from origin (4 agents: 1.9-2.25x the
model at origin). Candidates unknown at start-up (a DNS answer that does not
list a pod yet) are not waited for; they join like any late peer.

**Not churning under CPU starvation.** A missed probe is not held against a
member when this agent heard from it lately anyway (any chunk answer or body
piece within ``probe_interval + probe_timeout``, ``heard``), nor in a round
when this agent's own event loop ran late (its sleep overshot, or the round
outlasted the probe timeout, by ``STARVED_LAG_FRACTION`` of the probe timeout):
on a CPU-starved node a probe times out because the prober is starved, not the
peer. Starved rounds are excused a bounded number of times (``STARVED_EXCUSES``),
so a peer that really died still leaves a node that stays starved. Measured on
2 cores, 8 agents: 7-19 ring changes per burst before.

Every join or leave after that moves about 1/N of the chunks to a new owner,
which reads from origin those already fetched elsewhere; ``bdn_ring_changes_total``
counts them by reason, and ``bdn_ring_start_unanswered`` the candidates a
start-up gave up on (docs/DESIGN.md, "The node agent": what a split view costs).

Leaving a failed peer out only makes later chunks cheaper: a pull that asks a
dead owner already falls back to origin after the short peer timeout
(:mod:`bdn.peer.tiered`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from bdn.agent.config import MembershipConfig
from bdn.agent.protocol import HEALTH_PATH
from bdn.daemon.address import format_hostport
from bdn.errors import AuthError, BdnError, HTTPStatusError, NotFound
from bdn.http import NO_RETRY, HttpClient
from bdn.ring import Ring, RingConfig

log = logging.getLogger(__name__)

SETTLE_PROBE_INTERVAL = 0.1
"""Seconds between probe rounds while the start-up waits for candidates (a refused
connection answers at once, so a round is cheap)."""

STARVED_LAG_FRACTION = 0.25
"""A probe round that starts (or ends) later than this share of the probe timeout
was run by a starved event loop: its missed probes say nothing about the peers."""

STARVED_EXCUSES = 2
"""Starved rounds excused per member since its last answer, in ``misses_to_leave``
units: a node starved for good still drops a peer that died (3x later)."""

SETTLE_DNS_INTERVAL = 1.0
"""Seconds between DNS resolutions while the start-up waits: pods of a scale-up
appear in the answer within seconds of each other."""

Resolver = Callable[[str, int], Awaitable[set[str]]]
"""``resolve(name, port)`` -> ``{"ip:port", ...}``; raises ``OSError`` when DNS fails."""

Heard = Callable[[str], float | None]
"""``heard(addr)``: when (:func:`time.monotonic`) this agent last
heard from ``addr`` outside the probes; ``None``: never."""


class Prober(Protocol):
    """Whether the agent at ``host:port`` is healthy (never raises): ``True``;
    ``False`` when it answered but is not (a draining 503); ``None`` when
    nothing answered (not listening yet, gone, or too slow)."""

    async def __call__(self, addr: str) -> bool | None: ...


@dataclass(slots=True)
class MembershipStats:
    """What membership did since start-up, for ``/metrics``.

    Attributes:
        joined: members that joined the ring after the start-up wait.
        left: members that left it after the start-up wait.
        unanswered_at_start: candidates that had not answered when the start-up
            wait ended (its timeout passed); until they join, pulls here and
            there disagree on the owners of ~1/N of the chunks.
        settle_seconds: how long the start-up wait took.
        excused: missed probes not counted against a member: it was heard
            from lately, or this agent's own loop ran late.
    """

    joined: int = 0
    left: int = 0
    excused: int = 0
    unanswered_at_start: int = 0
    settle_seconds: float = 0.0


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

    async def __call__(self, addr: str) -> bool | None:
        try:
            await asyncio.wait_for(
                self._http.get_bytes(f"http://{addr}{HEALTH_PATH}", policy=NO_RETRY), self._timeout
            )
        except (HTTPStatusError, NotFound, AuthError):
            return False  # It answered: up, but not serving (draining, or not an agent).
        except (BdnError, OSError, TimeoutError):
            return None
        return True


class Membership:
    """The live ring of this agent; see the module docstring.

    Coroutine-safe within one event loop. :attr:`ring` is replaced (never
    mutated) when the live member set changes; :meth:`current_ring` always
    answers with the current one.

    Args:
        config: candidates and timings.
        self_addr: this agent's advertise ``host:port`` (always a member).
        ring_config: replicas and vnodes of every ring built here.
        prober: health check of one candidate.
        resolver: DNS lookup for ``config.dns_name`` (default :func:`resolve_dns`).
        on_change: called with the new ring after each membership change.
        heard: when a peer was last heard from outside the probes (chunk
            traffic); a member heard lately is not charged a missed probe.
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
        heard: Heard | None = None,
    ) -> None:
        self.config = config
        self.self_addr = self_addr
        self.stats = MembershipStats()
        self._prober = prober
        self._resolver = resolver
        self._on_change = on_change
        self._heard = heard
        self.on_answer: Callable[[str, float], None] | None = None
        """Called with a peer and the round trip of each probe it answered (hedging
        learns its deadline from them before any chunk was read)."""
        self._candidates: set[str] = set(config.static_peers)
        self._alive: set[str] = set()
        self._silent: set[str] = set()  # Candidates whose last probe got no answer.
        self._misses: dict[str, int] = {}
        self._starved_excuses: dict[str, int] = {}  # Since the member last answered.
        self._settled = False
        self.ring = Ring([self_addr], ring_config)
        self._task: asyncio.Task[None] | None = None
        self._last_dns = float("-inf")

    @property
    def candidates(self) -> frozenset[str]:
        """Every peer known from the flags or DNS, alive or not (without self)."""
        return frozenset(self._candidates - {self.self_addr})

    @property
    def unanswered(self) -> frozenset[str]:
        """Candidates whose last probe got no answer at all (not up yet, or gone)."""
        return frozenset(self._silent)

    def current_ring(self) -> Ring:
        """The ring over the members alive now. Pulls call it per chunk (it is
        ``TierConfig.ring``), so a peer that dies mid-pull stops costing a timeout
        per chunk and a joining peer starts sharing the load at once."""
        return self.ring

    async def start(self) -> None:
        """:meth:`settle`, then keep probing every ``probe_interval`` in the background.

        Call it once this agent's own peer port answers: the other agents'
        start-ups wait for that answer as this one waits for theirs.
        """
        await self.settle()
        self._task = asyncio.create_task(self._loop(), name="bdn-membership")

    async def settle(self) -> None:
        """Probe until every known candidate has answered, at most ``settle_timeout``.

        Bounded: at least one round; then a round every ``SETTLE_PROBE_INTERVAL``
        (DNS re-resolved every ``SETTLE_DNS_INTERVAL``) while a candidate is
        silent and the deadline has not passed. A round may overrun the
        deadline by one ``probe_timeout``.
        """
        loop = asyncio.get_running_loop()
        began = loop.time()
        deadline = began + self.config.settle_timeout
        dns_every = min(self.config.dns_interval, SETTLE_DNS_INTERVAL)
        await self.refresh(dns_interval=dns_every)
        while self._silent and loop.time() < deadline:
            await asyncio.sleep(min(SETTLE_PROBE_INTERVAL, deadline - loop.time()))
            await self.refresh(dns_interval=dns_every)
        self._settled = True
        self.stats.settle_seconds = loop.time() - began
        self.stats.unanswered_at_start = len(self._silent)
        extra = {"members": sorted(self.ring.members), "seconds": round(loop.time() - began, 3)}
        if not self.candidates:
            return  # A ring of one: nothing was waited for.
        if self._silent:
            log.warning("ring settled without every candidate",
                        extra={**extra, "unanswered": sorted(self._silent)})
        else:
            log.info("ring settled", extra=extra)

    async def close(self) -> None:
        """Stop probing (idempotent)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def refresh(self, *, dns_interval: float | None = None, late: float = 0.0) -> None:
        """One round: re-resolve DNS when due (every ``dns_interval``, default the
        config's), probe every candidate, update the ring. ``late``: how much later
        than planned the round began (its caller's sleep overshot)."""
        await self._resolve_if_due(self.config.dns_interval if dns_interval is None
                                   else dns_interval)
        loop = asyncio.get_running_loop()
        began = loop.time()
        peers = sorted(self.candidates)
        answers = await asyncio.gather(*(self._timed_probe(p) for p in peers))
        took = loop.time() - began
        tolerance = STARVED_LAG_FRACTION * self.config.probe_timeout
        starved = late > tolerance or took > self.config.probe_timeout + tolerance
        alive = set()
        self._silent = {peer for peer, answer in zip(peers, answers, strict=True)
                        if answer is None}
        for peer, answer in zip(peers, answers, strict=True):
            ok = answer is True
            if answer is None and peer in self._alive and self._excuse(peer, starved):
                self.stats.excused += 1  # The probe says more about this node than the peer.
                alive.add(peer)
                continue
            if ok:
                self._starved_excuses.pop(peer, None)
            self._misses[peer] = 0 if ok else self._misses.get(peer, 0) + 1
            staying = peer in self._alive and self._misses[peer] < self.config.misses_to_leave
            if ok or staying:
                alive.add(peer)
        for gone in set(self._misses) - set(peers):
            del self._misses[gone]
            self._starved_excuses.pop(gone, None)
        self._set_alive(alive)

    async def _timed_probe(self, peer: str) -> bool | None:
        """One probe of ``peer``; an answer and its round trip go to :attr:`on_answer`."""
        began = time.monotonic()
        answer = await self._prober(peer)
        if answer is True and self.on_answer is not None:
            self.on_answer(peer, time.monotonic() - began)
        return answer

    async def probe(self, peer: str, timeout: float) -> bool:
        """Whether ``peer`` answers a health probe within ``timeout`` seconds (hedging
        asks a silent chunk owner this, :mod:`bdn.peer.hedge`)."""
        try:
            return await asyncio.wait_for(self._prober(peer), timeout) is True
        except TimeoutError:
            return False

    def _excuse(self, peer: str, starved: bool) -> bool:
        """Whether a missed probe of member ``peer`` is not held against it: it was
        heard lately, or this round was starved (at most ``STARVED_EXCUSES`` times
        ``misses_to_leave`` rounds in a row, so a dead peer still leaves a node that
        stays starved)."""
        if self._heard_lately(peer):
            return True
        used = self._starved_excuses.get(peer, 0)
        if not starved or used >= STARVED_EXCUSES * self.config.misses_to_leave:
            return False
        self._starved_excuses[peer] = used + 1
        return True

    def _heard_lately(self, peer: str) -> bool:
        """Chunk traffic from ``peer`` within the last probe interval and timeout."""
        at = self._heard(peer) if self._heard is not None else None
        window = self.config.probe_interval + self.config.probe_timeout
        return at is not None and time.monotonic() - at <= window

    async def _resolve_if_due(self, interval: float) -> None:
        loop = asyncio.get_running_loop()
        if not self.config.dns_name or loop.time() - self._last_dns < interval:
            return
        self._last_dns = loop.time()
        try:
            found = await self._resolver(self.config.dns_name, self.config.peer_port)
        except OSError as err:
            # Keep the last answer: a DNS hiccup must not empty the ring.
            log.warning("resolving peers %s failed: %s", self.config.dns_name, err)
        else:
            self._candidates = found | set(self.config.static_peers)

    def _set_alive(self, alive: Iterable[str]) -> None:
        now = set(alive)
        if now == self._alive:
            return
        joined, left = sorted(now - self._alive), sorted(self._alive - now)
        self._alive = now
        if self._settled:
            self.stats.joined += len(joined)
            self.stats.left += len(left)
        self.ring = self.ring.with_members({self.self_addr, *now})
        log.info(
            "ring membership changed",
            extra={"joined": joined, "left": left, "members": sorted(self.ring.members)},
        )
        if self._on_change is not None:
            self._on_change(self.ring)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            await asyncio.sleep(self.config.probe_interval)
            late = loop.time() - asked - self.config.probe_interval
            try:
                await self.refresh(late=late)
            except Exception:  # A bug in one round must not stop membership for good.
                log.exception("membership refresh failed")


class MembershipCollector(Collector):
    """Exports :class:`MembershipStats` at scrape time (register it on the agent's registry)."""

    def __init__(self, stats: Callable[[], MembershipStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        s = self._stats()
        changes = CounterMetricFamily(
            "bdn_ring_changes",
            "Members that joined or left this agent's ring after its start-up wait, by "
            "reason. Each moves ~1/N of the chunks to a new owner, which reads from origin "
            "those already fetched by the old one: why origin can serve more than 1x.",
            labels=["reason"],
        )
        changes.add_metric(["joined"], s.joined)
        changes.add_metric(["left"], s.left)
        yield changes
        yield GaugeMetricFamily(
            "bdn_ring_start_unanswered",
            "Known candidates that had not answered when the start-up wait gave up "
            "(--settle-timeout); until they join, this agent and they disagree on owners.",
            value=s.unanswered_at_start,
        )
        yield CounterMetricFamily(
            "bdn_ring_probe_misses_excused",
            "Missed health probes not counted against a member: it was heard from "
            "lately (chunk traffic), or this agent's own event loop ran late (starved).",
            value=s.excused,
        )
        yield GaugeMetricFamily(
            "bdn_ring_settle_seconds",
            "Seconds the start-up waited for the known candidates to answer.",
            value=s.settle_seconds,
        )
