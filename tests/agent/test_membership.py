"""Ring membership: static and DNS candidates, health probes, and the live ring view."""

from __future__ import annotations

from bdn.agent.config import MembershipConfig
from bdn.agent.membership import HealthProber, Membership, resolve_dns
from bdn.digest import Digest
from bdn.http import HttpClient, HttpConfig
from bdn.ring import RingConfig
from tests.e2e.agents import free_ports
from tests.httpserver import FaultServer

SELF = "10.0.0.1:7070"


class FakeProber:
    def __init__(self, alive: set[str]) -> None:
        self.alive = alive
        self.asked: list[str] = []

    async def __call__(self, addr: str) -> bool:
        self.asked.append(addr)
        return addr in self.alive


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
        assert not await probe(f"127.0.0.1:{fault_server.port}")
        (closed,) = free_ports(1)
        assert not await probe(f"127.0.0.1:{closed}")
    finally:
        await http.close()
