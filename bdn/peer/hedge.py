"""Hedged chunk reads: when to send a second request for a slow chunk, and how many.

A chunk request to its owner that runs past a *deadline* gets one second
request (a *hedge*): to the next owner on the ring when there are replicas,
else to origin. The first verified answer wins and the other is cancelled
(:mod:`bdn.peer.race` runs the race).

The owner answers a request's headers at once (an *early answer*, see
:data:`~bdn.agent.protocol.EARLY_ANSWER_HEADER`) and says whether it holds the
chunk or is filling it from origin; the requester's :class:`~bdn.peer.progress.ReadProgress`
records that and every body piece, and :meth:`Hedging.hedge_at` decides on it:

- no headers within the answer deadline, learned (:meth:`Hedging.answer_deadline`):
  ``slack`` times the p95 of recent answer latencies (chunk headers, else health
  probes), within ``[min_deadline, cap]``, and ``floor`` (``--hedge-after``)
  until enough were seen (a loaded node answers everyone late; a frozen owner
  is the one that does not): the
  owner is frozen, overloaded or behind a slow network (or older, and
  filling): hedge, *if* the owner has been quiet that long while other peers
  were heard and no request to another peer has waited half as long for its
  headers (:class:`~bdn.peer.progress.PeerLiveness`). A frozen or stuck owner is the only
  silent one; on a CPU-starved node every peer (or this node's own loop) is
  late, and a hedge would only read origin again, so the read waits, up to
  ``cap``. Any answer or body piece from the owner, on any request, resets its
  quiet time: a starved owner that is streaming something is alive. And while
  this node's own loop runs late (a hedge timer fired more than
  ``STARVED_LAG_FRACTION`` of the floor, at least ``MIN_STARVED_LAG``, after it
  was due, within the last floor), nothing is hedged for silence: the answers
  may be in its sockets, unread, and a shared machine starves everyone.
  A hedge that may cost an origin read (``to_origin``) for silence needs one
  more proof, from a health probe sent once the owner went quiet (the agent's
  membership prober, :attr:`Hedging.prober`): an owner that does not answer
  it within the answer deadline is *unresponsive* (frozen, dead) and hedged at
  once; one that answers is *alive*, only slow (a starved loop or a queue of
  disk work), and waits ``max(floor, ALIVE_FACTOR x deadline)`` from when it
  went quiet, bounded by ``cap``: its bytes are coming, and the hedge would
  read them from origin again. So a learned deadline can be short (a frozen
  owner costs one deadline and one probe) without turning starved-but-live
  owners into origin reads;
- filling from origin, nothing sent yet: never hedge to origin, which would
  only read the same bytes from origin a second time (in a cold burst every
  owner is filling, and hedges to origin were the herd); a replica may be
  asked once the fill runs past ``cap``. The request's own bound (the
  client's answer timeout) ends a fill that never finishes;
- sending: hedge to origin only when the body stalls for ``floor`` (judged
  the same way: quiet while others are heard, and a health probe) or runs past
  ``ALIVE_FACTOR`` caps and, at its rate so far, would need more than ``cap``
  again to finish: its owner is alive, sending (``bdn demo`` under
  heavy load hedged 64 MiB bodies 20-90% done past the cap, each one more origin
  read at the successor) (a body
  that flows is nearly always cheaper to finish than to read again from
  origin; measured on a loaded 2-core herd, the hedges a learned deadline
  sent were for bodies 80-95% done); hedge to a replica also when it runs
  past the learned deadline for its size.

These pieces keep hedges cheap:

- :class:`DeadlineEstimator` learns the deadline from recent successful peer
  reads: the p95 of their seconds per byte, times the chunk's size, times a
  slack factor, clamped to ``[floor, cap]``. Before it has seen enough reads it
  assumes a modest rate (:data:`PRIOR_BYTES_PER_SECOND`). A chunk is therefore
  hedged only when it is slow compared with what this node's peers usually
  deliver, not by a fixed guess.
- :class:`HedgeBudget` caps concurrent hedges at a fraction of the chunk
  requests in flight (at least ``min_hedges``). Every hedge to origin is a
  request the ring exists to save, so a ring that is slow everywhere (a cold
  herd whose owners all wait on origin) must not turn into a second herd.
  The tiered reader adds the other bound: at most one hedge per chunk.
- A hedge goes to the chunk's *successor* before origin: the node that would
  own the chunk if its owner left the ring (``costly`` in :meth:`Hedging.hedge_at`:
  it may have to read origin). Every requester computes the same successor,
  which coalesces their hedges into one origin read of the chunk (none when the
  frozen owner never read it), and holds the chunk once membership drops the
  owner. A hedge straight to origin (no successor left) draws on the pull's
  :class:`OriginHedgeBudget`: ``ORIGIN_HEDGE_SHARE`` of the pull's bytes over
  the ring's members, so the whole ring's direct hedges stay under that share
  of the model (docs/DESIGN.md, "Hedged reads": the worst case).

:class:`HedgeStats` counts outcomes for ``/metrics``: ``won`` (the hedge
answered first), ``lost`` (the first request did, or the hedge failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bdn.peer.progress import ALIVE, UNRESPONSIVE, PeerLiveness, ReadProgress

__all__ = [
    "ALIVE_FACTOR",
    "DEFAULT_HEDGE_FRACTION",
    "ORIGIN_HEDGE_SHARE",
    "PRIOR_BYTES_PER_SECOND",
    "DeadlineEstimator",
    "HedgeBudget",
    "HedgeConfig",
    "HedgeStats",
    "Hedging",
    "OriginHedgeBudget",
    "Prober",
]

MiB = 1024 * 1024

PRIOR_BYTES_PER_SECOND = 32 * MiB
"""Rate assumed before enough reads were seen: a 64 MiB chunk gets 2 s (an owner
that first reads the chunk from origin is not hedged at once)."""

DEFAULT_HEDGE_FRACTION = 0.25
"""Concurrent hedges allowed per chunk request in flight."""

MIN_SAMPLE_BYTES = 4 * MiB
"""Reads are normalised to at least this many bytes, so the fixed latency of a
small (last) chunk does not read as a slow rate for full-size ones."""


MIN_DEADLINE_TIMEOUTS = 0.125
"""The lowest learned answer deadline, in peer timeouts (0.25 s at 2 s): below it,
ordinary scheduling jitter of a busy node would read as silence."""

ALIVE_FACTOR = 4.0
"""An owner that answers a health probe while silent on a chunk is hedged at a
cost to origin only after this many answer deadlines (at least ``floor``)."""

DEFAULT_FLOOR_TIMEOUTS = 1.0
"""The default hedge floor, in peer timeouts. A live owner on a CPU-starved node
can take seconds to send its first byte, and hedging such a read repeats the
origin read the ring exists to avoid: with this floor and origin as the hedge
target, ``bdn demo`` on a 2-core machine read 1.4x-1.9x the distinct content
from origin. What keeps the floor eager now is the quiet rule (a read is hedged
for silence only while other peers are heard), the successor as the hedge
target, and :class:`OriginHedgeBudget`; see the module docstring."""

STARVED_LAG_FRACTION = 0.25
"""A hedge timer firing this share of the floor late means this node is starved."""

MIN_STARVED_LAG = 0.1
"""Seconds: no timer lateness below this counts as starvation (tiny floors in tests)."""

ORIGIN_HEDGE_SHARE = 0.05
"""Bytes a pull may hedge straight to origin, as a share of its bytes divided by
the ring's members: N pulls of one model on N nodes hedge at most this share of
it to origin together."""


@dataclass(frozen=True, slots=True)
class HedgeConfig:
    """When chunk reads are hedged.

    Attributes:
        floor: the deadline before enough latencies were seen, and the shortest
            wait for a body stall or an alive owner, in seconds (``--hedge-after``).
        min_deadline: the shortest learned answer deadline (``None``: ``floor``;
            above ``floor`` it is ``floor``).
        cap: the longest deadline, in seconds: a read slower than this is
            hedged however slow the ring has been lately.
        slack: multiplier on the learned p95 time, so ordinary jitter is not hedged.
        window: successful reads remembered.
        min_samples: reads needed before the learned rate replaces the prior.
        fraction: concurrent hedges per chunk request in flight.
        min_hedges: concurrent hedges always allowed (one stuck owner must be
            routed around even when few requests run: a frozen owner of a
            quarter of one pull's chunks, measured at 2, hedged them two by two).
    """

    floor: float = 2.0
    cap: float = 10.0
    slack: float = 1.5
    window: int = 64
    min_samples: int = 5
    fraction: float = DEFAULT_HEDGE_FRACTION
    min_hedges: int = 4
    min_deadline: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.floor <= self.cap:
            raise ValueError("HedgeConfig needs 0 < floor <= cap")
        if self.min_deadline is not None and not self.min_deadline > 0:
            raise ValueError("HedgeConfig.min_deadline must be > 0")
        if self.window < 1 or self.min_samples < 1 or self.min_hedges < 0:
            raise ValueError("HedgeConfig.window and min_samples must be >= 1, min_hedges >= 0")
        if not 0 <= self.fraction <= 1 or self.slack < 1:
            raise ValueError("HedgeConfig needs 0 <= fraction <= 1 and slack >= 1")

    @property
    def lowest(self) -> float:
        """The shortest learned answer deadline (``min_deadline``, at most ``floor``)."""
        return self.floor if self.min_deadline is None else min(self.min_deadline, self.floor)

    @classmethod
    def for_peer_timeout(cls, peer_timeout: float, floor: float | None = None) -> HedgeConfig:
        """Defaults scaled to ``--peer-timeout``: floor = ``DEFAULT_FLOOR_TIMEOUTS`` times it
        (or ``floor``), cap = 5x it (or the floor, if higher), the lowest learned
        deadline ``MIN_DEADLINE_TIMEOUTS`` times it."""
        low = DEFAULT_FLOOR_TIMEOUTS * peer_timeout if floor is None else floor
        return cls(floor=low, cap=max(low, 5 * peer_timeout),
                   min_deadline=MIN_DEADLINE_TIMEOUTS * peer_timeout)


class DeadlineEstimator:
    """Learns how long a chunk read from a peer should take; see the module docstring.

    Not thread-safe; use from one event loop.
    """

    def __init__(self, config: HedgeConfig) -> None:
        self.config = config
        self._per_byte: deque[float] = deque(maxlen=config.window)

    def observe(self, seconds: float, nbytes: int) -> None:
        """Record one successful read of ``nbytes`` that took ``seconds``."""
        if seconds >= 0 and nbytes > 0:
            self._per_byte.append(seconds / max(nbytes, MIN_SAMPLE_BYTES))

    @property
    def samples(self) -> int:
        return len(self._per_byte)

    def deadline(self, nbytes: int) -> float:
        """Seconds after which a read of ``nbytes`` is hedged."""
        cfg = self.config
        if len(self._per_byte) < cfg.min_samples:
            guess = nbytes / PRIOR_BYTES_PER_SECOND
        else:
            guess = cfg.slack * p95(self._per_byte) * max(nbytes, MIN_SAMPLE_BYTES)
        return min(cfg.cap, max(cfg.floor, guess))


def p95(values: deque[float] | list[float]) -> float:
    """The 95th percentile (nearest rank) of a non-empty collection."""
    ordered = sorted(values)
    rank = max(1, math.ceil(0.95 * len(ordered)))
    return ordered[rank - 1]


@dataclass(slots=True)
class HedgeBudget:
    """How many hedges may run at once, given the chunk requests in flight.

    Call :meth:`started`/:meth:`finished` around every chunk request (hedges
    included) and :meth:`try_hedge`/:meth:`hedge_done` around a hedge.
    """

    fraction: float
    min_hedges: int
    in_flight: int = 0
    hedging: int = 0

    def limit(self) -> int:
        """Hedges allowed now: ``max(min_hedges, floor(fraction * in_flight))``."""
        return max(self.min_hedges, int(self.fraction * self.in_flight))

    def started(self) -> None:
        self.in_flight += 1

    def finished(self) -> None:
        self.in_flight -= 1

    def try_hedge(self) -> bool:
        """Take a hedge slot if one is free (the caller then calls :meth:`hedge_done`)."""
        if self.hedging >= self.limit():
            return False
        self.hedging += 1
        return True

    def hedge_done(self) -> None:
        self.hedging -= 1


@dataclass(slots=True)
class HedgeStats:
    """Hedges sent by this node's pulls, by outcome (agent-wide, for ``/metrics``)."""

    won: int = 0
    lost: int = 0
    denied: int = 0
    withheld: int = 0
    """Chunks not hedged to origin past their deadline because the owner was
    filling them from origin (counted once per chunk)."""
    quiet: int = 0
    """Chunks whose owner was silent past the deadline but not hedged then,
    because no other peer was heard either (a starved node; once per chunk)."""
    over_budget: int = 0
    """Chunks not hedged straight to origin: the pull's origin-hedge budget was
    spent (once per chunk)."""
    alive: int = 0
    """Silent owners that answered a health probe, so a hedge that could cost an
    origin read waited longer for them (once per read)."""
    unresponsive: int = 0
    """Silent owners that did not answer a health probe either: hedged at once
    (once per read)."""



Prober = Callable[[str, float], Awaitable[bool]]
"""``prober(peer, timeout)``: whether ``peer`` answers a health probe within ``timeout``."""


@dataclass(slots=True)
class OriginHedgeBudget:
    """Bytes one pull may still hedge straight to origin; see the module docstring.

    :meth:`grow` adds ``ORIGIN_HEDGE_SHARE`` of each blob the pull reads through
    the peer tier, divided by the ring's members then; :meth:`take` spends it.
    """

    share: float = ORIGIN_HEDGE_SHARE
    left: float = 0.0

    def grow(self, nbytes: int, members: int) -> None:
        self.left += self.share * nbytes / max(1, members)

    def take(self, nbytes: int) -> bool:
        """Spend ``nbytes`` if that much is left; False (nothing spent) otherwise."""
        if nbytes > self.left:
            return False
        self.left -= nbytes
        return True


@dataclass(slots=True)
class Hedging:
    """One node's hedging state, shared by all its pulls."""

    config: HedgeConfig
    estimator: DeadlineEstimator = field(init=False)
    budget: HedgeBudget = field(init=False)
    stats: HedgeStats = field(default_factory=HedgeStats)
    liveness: PeerLiveness = field(default_factory=PeerLiveness)
    lagged_at: float = float("-inf")
    """When a hedge timer of this node last fired late enough to call it starved."""

    answers: deque[float] = field(init=False)
    """Recent chunk answer latencies (headers), seconds: what the deadline learns."""
    probe_rtts: deque[float] = field(init=False)
    """Recent health-probe round trips: the deadline's evidence before chunk answers."""
    prober: Prober | None = None
    """Asks a silent owner's health before a hedge that may cost an origin read
    (the agent sets it to its membership's prober; ``None``: no such check)."""
    _probing: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.estimator = DeadlineEstimator(self.config)
        self.budget = HedgeBudget(self.config.fraction, self.config.min_hedges)
        self.answers = deque(maxlen=self.config.window)
        self.probe_rtts = deque(maxlen=self.config.window)

    def observe_probe(self, peer: str, seconds: float, at: float | None = None) -> None:
        """``peer`` answered a health probe in ``seconds`` (its answer came at ``at``)."""
        if seconds >= 0:
            self.probe_rtts.append(seconds)
        self.liveness.probe_answered(peer, at)

    def observe(self, read: ReadProgress, nbytes: int) -> None:
        """Learn from a successful peer read: its answer latency and its body's rate."""
        if read.answered_at is not None:
            self.answers.append(read.answered_at - read.started)
        self.estimator.observe(read.body_seconds(), nbytes)

    def answer_deadline(self) -> float:
        """Seconds a peer may take to send its headers before it is hedged: ``slack``
        times the p95 of the last ``window`` chunk answers (else of health-probe
        round trips, any number of them once a prober is set), within ``[lowest, cap]``;
        ``floor`` before either."""
        cfg = self.config
        if len(self.answers) >= cfg.min_samples:
            seen = self.answers
        elif self.probe_rtts and self.prober is not None:
            # Any probe will do: a costly hedge needs a failed probe anyway, so a
            # deadline learned from few costs at most a probe more (a ring that just
            # settled has answered a round or two, and its first chunks are the ones
            # a frozen owner holds up).
            seen = self.probe_rtts
        else:
            return cfg.floor
        return min(cfg.cap, max(cfg.lowest, cfg.slack * p95(seen)))

    def note_wake(self, late: float, now: float | None = None) -> None:
        """A hedge timer fired ``late`` seconds after it was due (see the module)."""
        if late > max(MIN_STARVED_LAG, STARVED_LAG_FRACTION * self.config.floor):
            self.lagged_at = time.monotonic() if now is None else now

    def starved(self, now: float) -> bool:
        """Whether this node's loop ran late within the last floor."""
        return now - self.lagged_at < self.config.floor

    def hedge_at(self, read: ReadProgress, nbytes: int, *, to_origin: bool,
                 now: float | None = None) -> float | None:
        """When (monotonic) the read of ``nbytes`` that ``read`` describes should be
        hedged; ``to_origin``: the hedge may cost an origin read (origin itself, or
        a successor that does not hold the chunk), else it goes to a replica owner.
        ``None``: not by time, as things stand (see the module docstring); ``now``
        defaults to the clock.
        """
        cfg = self.config
        if not read.tracked:
            return read.started + self.estimator.deadline(nbytes)
        if read.answered_at is None:
            # Past the cap a costly hedge still needs the owner to be the odd one out:
            # when every peer is silent this node is starved (measured: bdn demo under
            # load hedged four chunks at once at the cap, 11 s with no peer heard).
            return self._when_quiet(read, read.started, self.answer_deadline(),
                                    read.started + cfg.cap, now, costly=to_origin,
                                    hard_cap=not to_origin)
        if read.filling:
            return None if to_origin else read.started + cfg.cap
        begun = read.body_at if read.source == "origin" else read.answered_at
        assert begun is not None
        last = read.last_at if read.last_at is not None else begun
        if not to_origin:
            return min(begun + self.estimator.deadline(nbytes), last + cfg.floor)
        now = time.monotonic() if now is None else now
        latest = begun + ALIVE_FACTOR * cfg.cap
        if read.got and now >= latest:
            rest = (now - begun) * (nbytes - read.got) / read.got  # At its rate so far.
            if rest <= cfg.cap:
                latest = now + cfg.floor  # Flowing, and soon done: look again later.
        return self._when_quiet(read, last, cfg.floor, latest, now, costly=True)

    def _when_quiet(self, read: ReadProgress, since: float, wait: float, latest: float,
                    now: float | None, *, costly: bool = False,
                    hard_cap: bool = True) -> float | None:
        """Hedge once the owner has been quiet ``wait`` seconds from ``since`` while
        another peer was heard and this node was not starved; ``None`` while everyone
        is quiet (or this node starved); ``latest`` in any case (``hard_cap``), else
        ``latest`` only once the owner is the odd one out. A ``costly`` hedge also
        asks a health probe (:meth:`_probed`).

        A read that names no peer (or has no liveness) is judged on its own times.
        """
        live = read.liveness
        if read.peer is None or live is None:
            return min(since + wait, latest)
        heard = live.last_heard(read.peer)
        quiet = since if heard is None else max(since, heard)
        due = min(quiet + wait, latest)
        now = time.monotonic() if now is None else now
        probing = costly and self.prober is not None
        if now >= latest and (hard_cap or not probing):
            return latest
        if now < due:
            return due
        odd_one_out = not (self.starved(now) or not live.heard_other_since(read.peer, quiet)
                           or live.waiting_elsewhere(read.peer, now) > wait / 2)
        if not probing:
            return due if odd_one_out else None
        if not odd_one_out and (now < latest or self.starved(now)):
            return None
        # The owner is the odd one out, or past the cap while every peer is quiet:
        # a probe decides (there, an alive owner is waited for: this node is starved).
        return self._probed(read, read.peer, live, quiet, wait, latest, now,
                            wait_if_alive=not odd_one_out)

    def _probed(self, read: ReadProgress, peer: str, live: PeerLiveness, quiet: float,
                wait: float, latest: float, now: float, *,
                wait_if_alive: bool = False) -> float | None:
        """When a silent owner's costly hedge is due, going by a health probe sent
        after it went quiet at ``quiet``: now if it did not answer, after
        ``max(floor, ALIVE_FACTOR * wait)`` if it did (never, ``wait_if_alive``),
        and while none was sent, one is sent and the read looks again once it has
        had its time to answer."""
        state = live.probe_state(peer, quiet)
        if state is not None and read.judged != state:
            read.judged = state
            if state == ALIVE:
                self.stats.alive += 1
            else:
                self.stats.unresponsive += 1
        if state == UNRESPONSIVE:
            return min(now, latest)
        if state == ALIVE:
            if wait_if_alive:
                return None
            return min(quiet + max(self.config.floor, ALIVE_FACTOR * wait), latest)
        timeout = self.probe_timeout(wait)
        self._probe(peer, timeout)
        return now + timeout + PROBE_LOOK_AGAIN

    def probe_timeout(self, wait: float) -> float:
        """How long a silent owner's health probe may take: the answer deadline
        ``wait``, or ``PROBE_SLACK`` times the p95 of recent probe round trips when
        that is longer (a loaded node answers probes late too), at most ``floor``."""
        if len(self.probe_rtts) < self.config.min_samples:
            return wait
        return max(wait, min(self.config.floor, PROBE_SLACK * p95(self.probe_rtts)))

    def _probe(self, peer: str, timeout: float) -> None:
        """Send ``peer`` one health probe unless one is in flight; its outcome lands
        in :attr:`liveness` (:meth:`PeerLiveness.probe_state`)."""
        if peer in self._probing or self.prober is None:
            return
        self._probing[peer] = asyncio.ensure_future(self._run_probe(peer, self.prober, timeout))

    async def _run_probe(self, peer: str, prober: Prober, timeout: float) -> None:
        sent = time.monotonic()
        ok = False
        try:
            with contextlib.suppress(Exception):
                ok = await asyncio.wait_for(prober(peer, timeout), timeout)
            if ok:
                self.observe_probe(peer, time.monotonic() - sent)
            else:
                self.liveness.probe_failed(peer, sent)
        finally:
            self._probing.pop(peer, None)

    async def close(self) -> None:
        """Cancel the health probes in flight (idempotent)."""
        tasks = list(self._probing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


PROBE_LOOK_AGAIN = 0.01
"""Seconds after a probe's own timeout that a read looks again at what it said."""

PROBE_SLACK = 3.0
"""A silent owner's probe may take this many p95 probe round trips (see
:meth:`Hedging.probe_timeout`)."""
