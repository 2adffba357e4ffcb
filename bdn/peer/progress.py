"""What a requester knows about one chunk request and about its peers' voices.

:class:`ReadProgress` is written by the peer client as an answer arrives (headers,
then each body piece) and read by the race to decide on a hedge;
:class:`PeerLiveness` keeps when each peer was last heard from and what its last
health probe said (``ALIVE`` / ``UNRESPONSIVE``). The rules that judge them are
in :mod:`bdn.peer.hedge`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["ALIVE", "UNRESPONSIVE", "PeerLiveness", "ReadProgress"]


class PeerLiveness:
    """When each peer was last heard from: headers or a body piece of any chunk
    request. Hedging judges an owner's silence against it, and membership keeps a
    peer whose probes time out while its chunks still arrive.

    Not thread-safe; use from one event loop. Times are :func:`time.monotonic`.
    """

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._pending: dict[int, ReadProgress] = {}  # Requests in flight, by id().
        self._probe_ok: dict[str, float] = {}  # Peer -> when a health probe last answered.
        self._probe_failed: dict[str, float] = {}  # Peer -> when an unanswered probe was sent.

    def probe_answered(self, peer: str, at: float | None = None) -> None:
        """``peer`` answered a health probe (now, or at ``at``)."""
        self._probe_ok[peer] = time.monotonic() if at is None else at

    def probe_failed(self, peer: str, sent: float) -> None:
        """A health probe of ``peer`` sent at ``sent`` got no answer in time."""
        self._probe_failed[peer] = sent

    def probe_state(self, peer: str, since: float) -> str | None:
        """What health probes say of ``peer`` since ``since``: ``ALIVE`` (one was
        answered then), ``UNRESPONSIVE`` (one sent then got no answer), ``None``
        (none was sent then: ask)."""
        if self._probe_ok.get(peer, float("-inf")) >= since:
            return ALIVE
        if self._probe_failed.get(peer, float("-inf")) >= since:
            return UNRESPONSIVE
        return None

    def heard(self, peer: str, at: float | None = None) -> None:
        """``peer`` sent something (now, or at ``at``)."""
        self._last[peer] = time.monotonic() if at is None else at

    def last_heard(self, peer: str) -> float | None:
        """When ``peer`` was last heard from (``None``: never)."""
        return self._last.get(peer)

    def heard_other_since(self, peer: str, since: float) -> bool:
        """Whether any peer but ``peer`` was heard after ``since``."""
        return any(at > since for other, at in self._last.items() if other != peer)

    def asking(self, read: ReadProgress) -> None:
        """A request described by ``read`` is in flight (until :meth:`finished`)."""
        self._pending[id(read)] = read

    def finished(self, read: ReadProgress) -> None:
        self._pending.pop(id(read), None)

    def waiting_elsewhere(self, peer: str, now: float) -> float:
        """The longest any request in flight to a peer but ``peer`` has waited for
        its headers (0: none waits): when others are late too, it is load."""
        return max((now - r.started for r in self._pending.values()
                    if r.tracked and r.peer not in (None, peer) and r.answered_at is None),
                   default=0.0)

    def forget(self, keep: frozenset[str] | set[str]) -> None:
        """Drop peers not in ``keep`` (ring members), so the table stays small."""
        for table in (self._last, self._probe_ok, self._probe_failed):
            for peer in [p for p in table if p not in keep]:
                del table[peer]


ALIVE = "alive"
UNRESPONSIVE = "unresponsive"


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
    peer: str | None = None
    """The peer asked; with ``liveness``, what it sends is recorded there too."""
    liveness: PeerLiveness | None = None
    judged: str | None = None
    """What a health probe said of the silent owner, once counted (``ALIVE``...)."""

    def answered(self, source: str | None) -> None:
        """The headers arrived; ``source`` is ``X-BDN-Chunk-Source`` (``None``: absent)."""
        self.answered_at = time.monotonic()
        self.source = source if source in ("cache", "origin") else None
        self._heard(self.answered_at)

    def received(self, nbytes: int) -> None:
        """A body piece of ``nbytes`` arrived."""
        now = time.monotonic()
        if self.body_at is None:
            self.body_at = now
        self.last_at = now
        self.got += nbytes
        self._heard(now)

    def _heard(self, at: float) -> None:
        if self.liveness is not None and self.peer is not None:
            self.liveness.heard(self.peer, at)

    @property
    def filling(self) -> bool:
        """The owner said it is filling the chunk from origin and has sent nothing yet."""
        return self.source == "origin" and self.got == 0

    def describe(self) -> str:
        """Where the read stands, for a log line."""
        now = time.monotonic()
        if not self.tracked:
            return f"{now - self.started:.2f}s"
        probe = f", owner {self.judged}" if self.judged else ""
        if self.answered_at is None:
            return f"no answer after {now - self.started:.2f}s{probe}"
        quiet = now - (self.last_at or self.answered_at)
        return (f"answered in {self.answered_at - self.started:.2f}s from "
                f"{self.source or 'an older owner'}, {self.got} bytes, quiet {quiet:.2f}s{probe}")

    def body_seconds(self) -> float:
        """Seconds the body took, from when the owner had the bytes (the headers, or
        the first piece after a fill) to now: the peer's rate, not origin's."""
        begun = self.body_at if self.source == "origin" else self.answered_at
        return time.monotonic() - (begun if begun is not None else self.started)
