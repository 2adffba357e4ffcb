"""Ring membership: static and DNS candidates, health probes, and the live ring view."""

from __future__ import annotations

import asyncio
import time

from bdn.agent.config import MembershipConfig
from bdn.agent.membership import (
    STARVED_EXCUSES,
    HealthProber,
    Membership,
    MembershipCollector,
    MembershipStats,
    resolve_dns,
)
from bdn.digest import Digest
from bdn.http import HttpClient, HttpConfig
from bdn.peer.progress import PeerLiveness
from bdn.ring import RingConfig
from tests.e2e.agents import free_ports
from tests.httpserver import FaultServer

SELF = "10.0.0.1:7070"


class FakeProber:
    """Healthy: ``alive``; answering but unhealthy: ``draining``; else silent
    (``silent_is_false``: unhealthy, as a prober that cannot tell)."""

    def __init__(self, alive: set[str], *, draining: set[str] | None = None,
                 silent_is_false: bool = True) -> None:
        self.alive = alive
        self.draining = draining or set()
        self.silent_is_false = silent_is_false
        self.asked: list[str] = []

    async def __call__(self, addr: str) -> bool | None:
        self.asked.append(addr)
        if addr in self.alive:
            return True
        if addr in self.draining or self.silent_is_false:
            return False
        return None


class ComingUp(FakeProber):
    """Candidates that start answering after they were probed ``rounds`` times
    each: agents still starting, with no clock involved."""

    def __init__(self, rounds: dict[str, int]) -> None:
        super().__init__(set(), silent_is_false=False)
        self.rounds = rounds

    async def __call__(self, addr: str) -> bool | None:
        if self.asked.count(addr) >= self.rounds.get(addr, 0):
            self.alive.add(addr)
        return await super().__call__(addr)


async def test_static_peers_that_fail_probes_stay_out_until_they_answer() -> None:
    peers = (SELF, "10.0.0.2:7070", "10.0.0.3:7070")
    prober = FakeProber({"10.0.0.2:7070"})
    changes: list[frozenset[str]] = []
    m = Membership(MembershipConfig(static_peers=peers), self_addr=SELF,
                   ring_config=RingConfig(), prober=prober,
                   on_change=lambda ring: changes.append(ring.members))
    await m.refresh()
    assert m.ring.members == {SELF, "10.0.0.2:7070"}
    assert SELF not in prober.asked, "an agent never probes itself"
    prober.alive.add("10.0.0.3:7070")
    await m.refresh()
    assert m.ring.members == set(peers)
    prober.alive.clear()
    # A member leaves only after misses_to_leave consecutive missed probes:
    # one slow answer from a busy peer must not move its chunks.
    for _ in range(m.config.misses_to_leave - 1):
        await m.refresh()
        assert m.ring.members == set(peers)
    await m.refresh()
    assert m.ring.members == {SELF}
    assert changes == [frozenset({SELF, "10.0.0.2:7070"}), frozenset(peers), frozenset({SELF})]


async def test_a_miss_between_answers_does_not_flap_the_ring() -> None:
    peers = (SELF, "10.0.0.2:7070")
    prober = FakeProber({"10.0.0.2:7070"})
    changes: list[frozenset[str]] = []
    m = Membership(MembershipConfig(static_peers=peers), self_addr=SELF,
                   ring_config=RingConfig(), prober=prober,
                   on_change=lambda ring: changes.append(ring.members))
    for alive in (True, False, True, False, False, True):
        prober.alive = {"10.0.0.2:7070"} if alive else set()
        await m.refresh()
    assert changes == [frozenset(peers)]  # Joined once, never left.


async def test_dns_candidates_are_re_resolved_and_a_failed_lookup_keeps_the_last() -> None:
    answers: list[set[str] | OSError] = [
        {"10.0.0.2:7070", SELF},
        OSError("temporary failure in name resolution"),
        {"10.0.0.4:7070"},
    ]

    async def resolver(name: str, port: int) -> set[str]:
        assert (name, port) == ("agents.bdn.svc", 7070)
        answer = answers.pop(0)
        if isinstance(answer, OSError):
            raise answer
        return answer

    m = Membership(
        MembershipConfig(dns_name="agents.bdn.svc", peer_port=7070, dns_interval=0),
        self_addr=SELF, ring_config=RingConfig(), prober=FakeProber({"10.0.0.2:7070",
                                                                     "10.0.0.4:7070"}),
        resolver=resolver,
    )
    await m.refresh()
    assert m.candidates == {"10.0.0.2:7070"}
    await m.refresh()
    assert m.ring.members == {SELF, "10.0.0.2:7070"}
    await m.refresh()
    assert m.ring.members == {SELF, "10.0.0.4:7070"}


async def test_the_current_ring_follows_membership_changes() -> None:
    # Pulls hold ``membership.current_ring`` (TierConfig.ring) and ask it per chunk.
    prober = FakeProber(set())
    m = Membership(MembershipConfig(static_peers=("a:1", "b:1", "c:1")), self_addr="a:1",
                   ring_config=RingConfig(), prober=prober)
    d = Digest("ab" * 32)
    await m.refresh()
    assert m.current_ring().members == {"a:1"}
    assert {m.current_ring().owner(d, i) for i in range(50)} == {"a:1"}
    prober.alive |= {"b:1", "c:1"}
    await m.refresh()
    assert m.current_ring().members == {"a:1", "b:1", "c:1"}
    assert {m.current_ring().owner(d, i) for i in range(50)} == {"a:1", "b:1", "c:1"}


async def test_resolve_dns_and_the_health_prober_talk_to_real_things(
    fault_server: FaultServer,
) -> None:
    assert f"127.0.0.1:{fault_server.port}" in await resolve_dns("localhost", fault_server.port)
    http = HttpClient(HttpConfig(connect_timeout=1, stall_timeout=1))
    probe = HealthProber(http, timeout=1)
    try:
        fault_server.put("healthz", b'{"status": "ok"}')
        assert await probe(f"127.0.0.1:{fault_server.port}")
        fault_server.remove("healthz")
        # An answer that is not 200 is not healthy, but it is an answer (the
        # start-up wait is over for it); a closed port is no answer at all.
        assert await probe(f"127.0.0.1:{fault_server.port}") is False
        (closed,) = free_ports(1)
        assert await probe(f"127.0.0.1:{closed}") is None
    finally:
        await http.close()


async def test_start_waits_until_every_candidate_answers_so_the_first_ring_is_whole() -> None:
    peers = (SELF, "10.0.0.2:7070", "10.0.0.3:7070", "10.0.0.4:7070")
    prober = ComingUp({"10.0.0.2:7070": 0, "10.0.0.3:7070": 3, "10.0.0.4:7070": 5})
    m = Membership(MembershipConfig(static_peers=peers, settle_timeout=600), self_addr=SELF,
                   ring_config=RingConfig(), prober=prober)
    await m.start()
    try:
        # The first ring pulls see is every agent: nobody reads origin for another's chunk.
        assert m.current_ring().members == set(peers)
        assert m.stats.unanswered_at_start == 0
        assert m.stats.joined == m.stats.left == 0, "joins while settling are not changes"
    finally:
        await m.close()


async def test_a_draining_candidate_does_not_hold_up_the_start() -> None:
    peers = (SELF, "10.0.0.2:7070", "10.0.0.3:7070")
    prober = FakeProber({"10.0.0.2:7070"}, draining={"10.0.0.3:7070"}, silent_is_false=False)
    m = Membership(MembershipConfig(static_peers=peers, settle_timeout=600), self_addr=SELF,
                   ring_config=RingConfig(), prober=prober)
    await m.settle()
    assert m.ring.members == {SELF, "10.0.0.2:7070"}
    assert prober.asked.count("10.0.0.3:7070") == 1, "it answered: one round was enough"


async def test_the_start_up_wait_is_bounded_and_says_who_never_answered() -> None:
    peers = (SELF, "10.0.0.2:7070", "10.0.0.3:7070")
    prober = FakeProber({"10.0.0.2:7070"}, silent_is_false=False)
    m = Membership(MembershipConfig(static_peers=peers, settle_timeout=0.3), self_addr=SELF,
                   ring_config=RingConfig(), prober=prober)
    await m.settle()
    assert m.ring.members == {SELF, "10.0.0.2:7070"}
    assert m.unanswered == {"10.0.0.3:7070"}
    assert m.stats.unanswered_at_start == 1
    # It joins later like any peer, and that counts as a ring change.
    prober.alive.add("10.0.0.3:7070")
    await m.refresh()
    assert m.ring.members == set(peers) and m.stats.joined == 1


async def test_no_settle_timeout_means_one_round() -> None:
    prober = FakeProber(set(), silent_is_false=False)
    m = Membership(MembershipConfig(static_peers=("a:1", "b:1"), settle_timeout=0),
                   self_addr="a:1", ring_config=RingConfig(), prober=prober)
    await m.settle()
    assert prober.asked == ["b:1"] and m.ring.members == {"a:1"}


async def test_settling_re_resolves_dns_for_pods_that_appear_meanwhile() -> None:
    # n3's pod shows up in DNS while n2 is still starting: it is waited for too.
    answers = [{SELF, "10.0.0.2:7070"}, {SELF, "10.0.0.2:7070", "10.0.0.3:7070"}]

    async def resolver(name: str, port: int) -> set[str]:
        return answers.pop(0) if len(answers) > 1 else answers[0]

    prober = ComingUp({"10.0.0.2:7070": 2, "10.0.0.3:7070": 2})
    m = Membership(MembershipConfig(dns_name="agents", dns_interval=0, settle_timeout=600),
                   self_addr=SELF, ring_config=RingConfig(), prober=prober, resolver=resolver)
    await m.settle()
    assert m.ring.members == {SELF, "10.0.0.2:7070", "10.0.0.3:7070"}


def test_membership_metrics_say_why_origin_served_more() -> None:
    stats = MembershipStats(joined=2, left=1, unanswered_at_start=1, settle_seconds=0.5,
                            excused=3)
    samples = {(s.name, tuple(s.labels.items())): s.value
               for family in MembershipCollector(lambda: stats).collect()
               for s in family.samples}
    assert samples[("bdn_ring_changes_total", (("reason", "joined"),))] == 2
    assert samples[("bdn_ring_changes_total", (("reason", "left"),))] == 1
    assert samples[("bdn_ring_start_unanswered", ())] == 1
    assert samples[("bdn_ring_probe_misses_excused_total", ())] == 3


# -- not churning when this node, or the peer, is starved of CPU ---------------------------

PEER = "10.0.0.2:7070"


async def test_a_member_heard_from_lately_keeps_its_place_when_probes_time_out() -> None:
    live = PeerLiveness()
    prober = FakeProber({PEER}, silent_is_false=False)
    m = Membership(MembershipConfig(static_peers=(SELF, PEER)), self_addr=SELF,
                   ring_config=RingConfig(), prober=prober, heard=live.last_heard)
    await m.refresh()
    assert PEER in m.ring.members
    prober.alive.clear()  # Its probes time out, but its chunks keep arriving.
    for _ in range(2 * m.config.misses_to_leave):
        live.heard(PEER)
        await m.refresh()
    assert PEER in m.ring.members
    assert m.stats.excused == 2 * m.config.misses_to_leave and m.stats.left == 0
    # Not heard any more (its last chunk long ago): misses count again, and it leaves.
    live.heard(PEER, time.monotonic() - 3600)
    for _ in range(m.config.misses_to_leave):
        await m.refresh()
    assert m.ring.members == {SELF}


class StarvingProber(FakeProber):
    """Silent peers, probed by a node whose own loop is blocked (CPU starvation):
    the round outlasts the probe timeout for this node's sake, not the peer's."""

    def __init__(self, block: float) -> None:
        super().__init__(set(), silent_is_false=False)
        self.block = block

    async def __call__(self, addr: str) -> bool | None:
        time.sleep(self.block)  # Blocks the event loop, as a starved process does.
        return await super().__call__(addr)


async def test_missed_probes_in_a_round_run_by_a_starved_loop_are_not_counted() -> None:
    cfg = MembershipConfig(static_peers=(SELF, PEER), probe_timeout=0.05)
    prober = StarvingProber(block=0.0)
    prober.alive.add(PEER)
    m = Membership(cfg, self_addr=SELF, ring_config=RingConfig(), prober=prober)
    await m.refresh()
    prober.alive.clear()
    prober.block = 0.2  # Far past the probe timeout: this node was not running.
    for _ in range(cfg.misses_to_leave + 1):
        await m.refresh()
    assert PEER in m.ring.members and m.stats.excused == cfg.misses_to_leave + 1
    # A round that began late (the sleep before it overshot) is excused too.
    prober.block = 0.0
    await m.refresh(late=1.0)
    assert PEER in m.ring.members
    # On time, quick, and silent: these misses count.
    for _ in range(cfg.misses_to_leave):
        await m.refresh()
    assert m.ring.members == {SELF}


async def test_a_node_starved_for_good_still_drops_a_dead_peer() -> None:
    cfg = MembershipConfig(static_peers=(SELF, PEER))
    prober = FakeProber({PEER}, silent_is_false=False)
    m = Membership(cfg, self_addr=SELF, ring_config=RingConfig(), prober=prober)
    await m.refresh()
    prober.alive.clear()  # Dead, and every round from now on runs late.
    rounds = 0
    while PEER in m.ring.members:
        await m.refresh(late=60.0)
        rounds += 1
        assert rounds <= (STARVED_EXCUSES + 1) * cfg.misses_to_leave
    assert rounds == (STARVED_EXCUSES + 1) * cfg.misses_to_leave


class StuckProber(FakeProber):
    """Like :class:`FakeProber`, but a probe of ``stuck`` never ends by itself (a
    frozen peer that accepted the connection)."""

    def __init__(self, alive: set[str], stuck: str) -> None:
        super().__init__(alive)
        self.stuck = stuck
        self.forever = asyncio.Event()

    async def __call__(self, addr: str) -> bool | None:
        if addr == self.stuck:
            await self.forever.wait()
        return await super().__call__(addr)


async def test_answered_probes_are_reported_and_hedging_can_ask_one_with_its_own_bound() -> None:
    peers = (SELF, "10.0.0.2:7070", "10.0.0.3:7070")
    prober = StuckProber({"10.0.0.2:7070"}, stuck="10.0.0.9:7070")
    m = Membership(MembershipConfig(static_peers=peers), self_addr=SELF,
                   ring_config=RingConfig(), prober=prober)
    answered: list[tuple[str, float]] = []
    m.on_answer = lambda peer, rtt: answered.append((peer, rtt))
    await m.refresh()
    # Only the answer is reported (a silent candidate says nothing about round trips).
    assert [p for p, _ in answered] == ["10.0.0.2:7070"] and answered[0][1] >= 0
    assert await m.probe("10.0.0.2:7070", 5.0)
    assert not await m.probe("10.0.0.3:7070", 5.0)  # It answers: unhealthy.
    # A peer that never answers is given up on at the caller's bound, not the prober's.
    assert not await m.probe("10.0.0.9:7070", 0.01)
