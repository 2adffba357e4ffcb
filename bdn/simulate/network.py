"""Chunk transfers as fluid flows that share link capacity max-min fairly, on a simpy clock.

Every transfer is a flow of a known number of bytes across up to four
*resources* (a node's NIC egress, a node's NIC ingress, a node's intake, its
origin link, the origin in total), each with a capacity in bytes per second.
Between events every flow moves at a constant rate; when a flow starts or
finishes, the rates of all flows are solved again as the max-min fair
allocation (processor sharing on every resource, leftovers going to flows that
can use them), the way many TCP flows settle on shared links.

The solve is vectorised (numpy) and runs at most once per instant: starts and
completions at the same simulated time are gathered first, by an event that
fires after every other event of that instant (:class:`_Late`). Completions
that fall within ``resolution`` seconds of each other (or within half a percent
of the flow's own duration, for long flows) are taken together, so a burst of
near-simultaneous finishes costs one solve, not thousands; each of them lands
at most that much early.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import simpy
from simpy.events import NORMAL, EventPriority

__all__ = ["UNUSED", "FlowNetwork"]

_LATE = EventPriority(NORMAL + 1)
"""Priority below every ordinary event: fires once the instant has settled."""

_REL_TOL = 1e-9
"""Shares this close are equal (floating-point noise between equal flows)."""

_WIDTH = 4
"""Resources per flow; unused ones point at :data:`UNUSED`."""

UNUSED = 0
"""Resource index 0 has infinite capacity and stands for 'no resource'."""

DEFAULT_RELATIVE = 0.005
"""A flow may land this fraction of its age early, batched with others (see below)."""


class _Late(simpy.Event):
    """An event that fires after ``delay``, behind every ordinary event of that instant."""

    def __init__(self, env: simpy.Environment, delay: float) -> None:
        super().__init__(env)
        # As simpy's own Timeout does: triggered at creation, processed at its time.
        self._ok = True
        self._value = None
        env.schedule(self, priority=_LATE, delay=delay)


class FlowNetwork:
    """Flows over capacity-limited resources; :meth:`transfer` returns when one has landed.

    Not thread-safe (a simpy model runs in one thread). Resource 0 is
    :data:`UNUSED` (infinite); the others are given at construction.

    Args:
        env: the simulation clock.
        capacities: bytes/s of resources ``1..``; ``math.inf`` for no limit.
        resolution: completions this close together (seconds) are batched.
        relative: ... and so are those within this fraction of their own flow's
            age: a flow that has run for 200 s may land 1 s early, one that has
            run for 0.2 s only ``resolution`` early.
    """

    def __init__(self, env: simpy.Environment, capacities: Sequence[float],
                 resolution: float, relative: float = DEFAULT_RELATIVE) -> None:
        self.env = env
        self.capacity = np.array([math.inf, *capacities], dtype=np.float64)
        self.resolution = resolution
        self.relative = relative
        self.solves = 0
        self._res = np.zeros((0, _WIDTH), dtype=np.int64)
        self._remaining = np.zeros(0)
        self._started = np.zeros(0)
        self._rate = np.zeros(0)
        self._active = np.zeros(0, dtype=bool)
        self._events: list[simpy.Event | None] = []
        self._free: list[int] = []
        self._last = 0.0
        self._settle_pending = False
        self._generation = 0

    def transfer(self, resources: Sequence[int], size: float) -> simpy.Event:
        """Start a flow of ``size`` bytes over ``resources``; the event fires when it lands.

        Raises:
            ValueError: no resource of the flow has a finite capacity.
        """
        if not any(math.isfinite(self.capacity[r]) for r in resources):
            raise ValueError("a flow needs at least one resource of finite capacity")
        slot = self._take_slot()
        self._res[slot] = UNUSED
        self._res[slot, : len(resources)] = resources
        self._remaining[slot] = size
        self._started[slot] = float(self.env.now)
        self._rate[slot] = 0.0
        self._active[slot] = True
        done = self.env.event()
        self._events[slot] = done
        self._request_settle()
        return done

    # -- time -------------------------------------------------------------

    def _request_settle(self) -> None:
        if not self._settle_pending:
            self._settle_pending = True
            _Late(self.env, 0.0).callbacks.append(self._settle)

    def _settle(self, _event: simpy.Event | None = None) -> None:
        """Advance flows to now, land the finished ones, else solve rates and set the timer."""
        self._settle_pending = False
        now = float(self.env.now)
        active = np.flatnonzero(self._active)
        if now > self._last and active.size:
            self._remaining[active] -= self._rate[active] * (now - self._last)
        self._last = now
        if active.size == 0:
            return
        rate = self._rate[active]
        window = np.maximum(self.resolution, self.relative * (now - self._started[active]))
        done = active[self._remaining[active] <= rate * window + 1e-6]
        if done.size:
            for slot in done.tolist():
                event = self._events[slot]
                self._events[slot] = None
                self._active[slot] = False
                self._free.append(slot)
                assert event is not None
                event.succeed()
            # The waiters resume in this instant and may start flows: solve after them.
            self._request_settle()
            return
        self._solve(active)
        rate = self._rate[active]
        moving = rate > 0
        if not moving.any():
            raise RuntimeError("no flow can move: every active flow has a zero rate")
        wait = float(np.min(self._remaining[active][moving] / rate[moving]))
        self._generation += 1
        generation = self._generation
        _Late(self.env, max(wait, 0.0)).callbacks.append(
            lambda ev: self._settle(ev) if generation == self._generation else None
        )

    # -- rates ------------------------------------------------------------

    def _solve(self, active: np.ndarray) -> None:
        """Max-min fair rates of the active flows (water-filling, many bottlenecks per round).

        A resource whose fair share is the smallest share of every flow crossing
        it is a bottleneck: its flows can get no more than that share in the
        max-min allocation, and need no less. Each round fixes every such
        resource's flows at once and removes what they use.
        """
        self.solves += 1
        res = self._res[active]
        cap = self.capacity.copy()
        n_res = cap.size
        rate = np.zeros(active.size)
        live = np.arange(active.size)
        while live.size:
            lres = res[live]
            flat = lres.ravel()
            count = np.bincount(flat, minlength=n_res)
            with np.errstate(divide="ignore", invalid="ignore"):
                share = np.where(count > 0, cap / np.maximum(count, 1), math.inf)
            shares = share[lres]
            level = shares.min(axis=1)
            above = shares > level[:, None] * (1 + _REL_TOL)
            not_binding = np.bincount(flat, weights=above.ravel(), minlength=n_res) > 0
            bottleneck = (count > 0) & ~not_binding & np.isfinite(share)
            fixed = bottleneck[lres].any(axis=1)
            if not fixed.any():  # Only floating-point noise gets here: take the lowest.
                fixed = level <= level.min() * (1 + _REL_TOL)
            rate[live[fixed]] = level[fixed]
            used = np.bincount(lres[fixed].ravel(), weights=np.repeat(level[fixed], _WIDTH),
                               minlength=n_res)
            cap = np.maximum(cap - used, 0.0)
            cap[UNUSED] = math.inf
            live = live[~fixed]
        self._rate[active] = rate

    def _take_slot(self) -> int:
        if not self._free:
            old = self._active.size
            new = max(1024, 2 * old)
            self._res = np.resize(self._res, (new, _WIDTH))
            self._remaining = np.resize(self._remaining, new)
            self._started = np.resize(self._started, new)
            self._rate = np.resize(self._rate, new)
            active = np.zeros(new, dtype=bool)
            active[:old] = self._active
            self._active = active
            self._events.extend([None] * (new - old))
            self._free.extend(range(new - 1, old - 1, -1))
        return self._free.pop()
