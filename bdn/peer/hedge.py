"""Hedged chunk reads: when to send a second request for a slow chunk, and how many.

A chunk request to its owner that runs past a *deadline* gets one second
request (a *hedge*): to the next owner on the ring when there are replicas,
else to origin. The first verified answer wins and the other is cancelled
(:mod:`bdn.peer.race` runs the race).

The owner answers a request's headers at once (an *early answer*, see
:data:`~bdn.agent.protocol.EARLY_ANSWER_HEADER`) and says whether it holds the
chunk or is filling it from origin; the requester's :class:`ReadProgress`
records that and every body piece, and :meth:`Hedging.hedge_at` decides on it:

- no headers within the answer deadline: ``floor`` (``--hedge-after``), or
  ``slack`` times the p95 of recent answers when that is longer (a loaded
  node answers everyone late; a frozen owner is the one that does not): the
  owner is frozen, overloaded or behind a slow network (or older, and
  filling): hedge;
- filling from origin, nothing sent yet: never hedge to origin, which would
  only read the same bytes from origin a second time (in a cold burst every
  owner is filling, and hedges to origin were the herd); a replica may be
  asked once the fill runs past ``cap``. The request's own bound (the
  client's answer timeout) ends a fill that never finishes;
- sending: hedge to origin only when the body stalls for ``floor`` or runs
  past ``cap`` (a body that flows is nearly always cheaper to finish than to
  read again from origin; measured on a loaded 2-core herd, the hedges a
  learned deadline sent were for bodies 80-95% done); hedge to a replica
  also when it runs past the learned deadline for its size.

Two pieces keep hedges cheap:

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

:class:`HedgeStats` counts outcomes for ``/metrics``: ``won`` (the hedge
answered first), ``lost`` (the first request did, or the hedge failed).
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_HEDGE_FRACTION",
    "PRIOR_BYTES_PER_SECOND",
    "DeadlineEstimator",
    "HedgeBudget",
    "HedgeConfig",
    "HedgeStats",
    "Hedging",
    "ReadProgress",
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


DEFAULT_FLOOR_TIMEOUTS = 5.0
"""The default hedge floor, in peer timeouts. A live owner on a CPU-starved node
can take seconds to send its first byte; hedging such a read to origin repeats
the origin read the ring exists to avoid. With the floor at one peer timeout,
``bdn demo`` on a 2-core machine read 1.4x-1.9x the distinct content from
origin, against 1.00x with hedging off; at five, a frozen owner still costs
about one floor per chunk, not the answer timeout. ``--hedge-after`` lowers it
where nodes have headroom."""


@dataclass(frozen=True, slots=True)
class HedgeConfig:
    """When chunk reads are hedged.

    Attributes:
        floor: the shortest deadline, in seconds (``--hedge-after``).
        cap: the longest deadline, in seconds: a read slower than this is
            hedged however slow the ring has been lately.
        slack: multiplier on the learned p95 time, so ordinary jitter is not hedged.
        window: successful reads remembered.
        min_samples: reads needed before the learned rate replaces the prior.
        fraction: concurrent hedges per chunk request in flight.
        min_hedges: concurrent hedges always allowed (one stuck owner must be
            routed around even when few requests run).
    """

    floor: float = 2.0
    cap: float = 10.0
    slack: float = 1.5
    window: int = 64
    min_samples: int = 5
    fraction: float = DEFAULT_HEDGE_FRACTION
    min_hedges: int = 2

    def __post_init__(self) -> None:
        if not 0 < self.floor <= self.cap:
            raise ValueError("HedgeConfig needs 0 < floor <= cap")
        if self.window < 1 or self.min_samples < 1 or self.min_hedges < 0:
            raise ValueError("HedgeConfig.window and min_samples must be >= 1, min_hedges >= 0")
        if not 0 <= self.fraction <= 1 or self.slack < 1:
            raise ValueError("HedgeConfig needs 0 <= fraction <= 1 and slack >= 1")

    @classmethod
    def for_peer_timeout(cls, peer_timeout: float, floor: float | None = None) -> HedgeConfig:
        """Defaults scaled to ``--peer-timeout``: floor = ``DEFAULT_FLOOR_TIMEOUTS`` times it
        (or ``floor``), cap = 5x it (or the floor, if higher)."""
        low = DEFAULT_FLOOR_TIMEOUTS * peer_timeout if floor is None else floor
        return cls(floor=low, cap=max(low, 5 * peer_timeout))


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


@dataclass(slots=True)
class ReadProgress:
    """How far one chunk request has got; :class:`~bdn.peer.client.PeerClient` writes
    it as the answer arrives, the race reads it to decide on a hedge.

    Times are :func:`time.monotonic`. ``tracked`` is set by a reader that reports
    progress (a peer request); an untracked read is judged on its age alone.
    """

    started: float = field(default_factory=time.monotonic)
    tracked: bool = False
    answered_at: float | None = None
    source: str | None = None
    body_at: float | None = None
    last_at: float | None = None
    got: int = 0

    def answered(self, source: str | None) -> None:
        """The headers arrived; ``source`` is ``X-BDN-Chunk-Source`` (``None``: absent)."""
        self.answered_at = time.monotonic()
        self.source = source if source in ("cache", "origin") else None

    def received(self, nbytes: int) -> None:
        """A body piece of ``nbytes`` arrived."""
        now = time.monotonic()
        if self.body_at is None:
            self.body_at = now
        self.last_at = now
        self.got += nbytes

    @property
    def filling(self) -> bool:
        """The owner said it is filling the chunk from origin and has sent nothing yet."""
        return self.source == "origin" and self.got == 0

    def describe(self) -> str:
        """Where the read stands, for a log line."""
        now = time.monotonic()
        if not self.tracked:
            return f"{now - self.started:.2f}s"
        if self.answered_at is None:
            return f"no answer after {now - self.started:.2f}s"
        quiet = now - (self.last_at or self.answered_at)
        return (f"answered in {self.answered_at - self.started:.2f}s from "
                f"{self.source or 'an older owner'}, {self.got} bytes, quiet {quiet:.2f}s")

    def body_seconds(self) -> float:
        """Seconds the body took, from when the owner had the bytes (the headers, or
        the first piece after a fill) to now: the peer's rate, not origin's."""
        begun = self.body_at if self.source == "origin" else self.answered_at
        return time.monotonic() - (begun if begun is not None else self.started)


@dataclass(slots=True)
class Hedging:
    """One node's hedging state, shared by all its pulls."""

    config: HedgeConfig
    estimator: DeadlineEstimator = field(init=False)
    budget: HedgeBudget = field(init=False)
    stats: HedgeStats = field(default_factory=HedgeStats)

    answers: deque[float] = field(init=False)

    def __post_init__(self) -> None:
        self.estimator = DeadlineEstimator(self.config)
        self.budget = HedgeBudget(self.config.fraction, self.config.min_hedges)
        self.answers = deque(maxlen=self.config.window)

    def observe(self, read: ReadProgress, nbytes: int) -> None:
        """Learn from a successful peer read: its answer latency and its body's rate."""
        if read.answered_at is not None:
            self.answers.append(read.answered_at - read.started)
        self.estimator.observe(read.body_seconds(), nbytes)

    def answer_deadline(self) -> float:
        """Seconds a peer may take to send its headers before it is hedged."""
        cfg = self.config
        if len(self.answers) < cfg.min_samples:
            return cfg.floor
        return min(cfg.cap, max(cfg.floor, cfg.slack * p95(self.answers)))

    def hedge_at(self, read: ReadProgress, nbytes: int, *, to_origin: bool) -> float | None:
        """When (monotonic) the read of ``nbytes`` that ``read`` describes should be
        hedged, the hedge going to origin if ``to_origin`` else to a replica;
        ``None``: not by time, as things stand (see the module docstring).
        """
        cfg = self.config
        if not read.tracked:
            return read.started + self.estimator.deadline(nbytes)
        if read.answered_at is None:
            return read.started + self.answer_deadline()
        if read.filling:
            return None if to_origin else read.started + cfg.cap
        begun = read.body_at if read.source == "origin" else read.answered_at
        assert begun is not None
        last = read.last_at if read.last_at is not None else begun
        slow = cfg.cap if to_origin else self.estimator.deadline(nbytes)
        return min(begun + slow, last + cfg.floor)
