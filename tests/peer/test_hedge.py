"""The hedge deadline estimator and the concurrent-hedge bound (bdn/peer/hedge.py)."""

from __future__ import annotations

import asyncio
import time

import pytest

from bdn.peer.hedge import (
    ALIVE_FACTOR,
    MIN_SAMPLE_BYTES,
    PRIOR_BYTES_PER_SECOND,
    DeadlineEstimator,
    HedgeBudget,
    HedgeConfig,
    Hedging,
    OriginHedgeBudget,
    p95,
)
from bdn.peer.progress import PeerLiveness, ReadProgress

MiB = 1024 * 1024


def test_without_enough_samples_the_prior_rate_is_used_within_floor_and_cap() -> None:
    est = DeadlineEstimator(HedgeConfig(floor=0.5, cap=10.0, min_samples=3))
    assert est.deadline(64 * MiB) == 64 * MiB / PRIOR_BYTES_PER_SECOND
    assert est.deadline(1024) == 0.5  # The floor.
    assert est.deadline(10_000 * MiB) == 10.0  # The cap.
    est.observe(0.1, 64 * MiB)
    est.observe(0.1, 64 * MiB)
    assert est.deadline(64 * MiB) == 64 * MiB / PRIOR_BYTES_PER_SECOND  # Still 2 of 3.


def test_the_learned_deadline_is_the_p95_rate_scaled_by_size_and_slack() -> None:
    est = DeadlineEstimator(HedgeConfig(floor=0.01, cap=100.0, slack=1.5, min_samples=5))
    for _ in range(19):
        est.observe(1.0, 64 * MiB)  # 64 MiB/s
    est.observe(8.0, 64 * MiB)  # One outlier in 20 is the p95 at most.
    assert est.deadline(64 * MiB) == pytest.approx(1.5 * 1.0)
    assert est.deadline(32 * MiB) == pytest.approx(1.5 * 0.5)  # Scaled by size.
    est.observe(8.0, 64 * MiB)  # Two in 21: now the p95.
    assert est.deadline(64 * MiB) == pytest.approx(1.5 * 8.0)


def test_small_reads_do_not_read_as_a_slow_rate() -> None:
    est = DeadlineEstimator(HedgeConfig(floor=0.01, cap=100.0, slack=1.0, min_samples=1))
    est.observe(0.01, 1024)  # Latency-bound: counted as MIN_SAMPLE_BYTES.
    assert est.deadline(MIN_SAMPLE_BYTES * 4) == pytest.approx(0.04)


def test_the_window_forgets_old_reads() -> None:
    est = DeadlineEstimator(HedgeConfig(floor=0.01, cap=100.0, slack=1.0, window=4,
                                        min_samples=1))
    for _ in range(4):
        est.observe(10.0, 64 * MiB)
    for _ in range(4):
        est.observe(1.0, 64 * MiB)
    assert est.samples == 4
    assert est.deadline(64 * MiB) == pytest.approx(1.0)


def test_p95_is_nearest_rank() -> None:
    assert p95([3.0]) == 3.0
    assert p95([float(i) for i in range(1, 101)]) == 95.0


def test_the_budget_allows_a_fraction_of_the_requests_in_flight_at_least_the_minimum() -> None:
    budget = HedgeBudget(fraction=0.25, min_hedges=1)
    assert budget.limit() == 1
    assert budget.try_hedge()
    assert not budget.try_hedge()  # One in flight at most with few requests.
    for _ in range(12):
        budget.started()
    assert budget.limit() == 3
    assert budget.try_hedge() and budget.try_hedge()
    assert not budget.try_hedge()
    budget.hedge_done()
    assert budget.try_hedge()
    for _ in range(12):
        budget.finished()
    assert budget.limit() == 1 and budget.hedging == 3  # Slots taken stay taken until done.


def test_the_budget_can_forbid_hedging() -> None:
    budget = HedgeBudget(fraction=0.0, min_hedges=0)
    budget.started()
    assert not budget.try_hedge()


@pytest.mark.parametrize(
    "kwargs", [{"floor": 0.0}, {"floor": 2.0, "cap": 1.0}, {"fraction": 1.5}, {"slack": 0.5},
               {"window": 0}]
)
def test_bad_configs_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        HedgeConfig(**kwargs)  # type: ignore[arg-type]


def test_defaults_follow_the_peer_timeout() -> None:
    # The floor is one peer timeout again (DEFAULT_FLOOR_TIMEOUTS): the quiet rule,
    # the successor and the origin-hedge budget keep it from becoming a herd.
    cfg = HedgeConfig.for_peer_timeout(2.0)
    assert (cfg.floor, cfg.cap) == (2.0, 10.0)
    cfg = HedgeConfig.for_peer_timeout(2.0, floor=0.2)
    assert (cfg.floor, cfg.cap) == (0.2, 10.0)


# -- when a read is hedged, from what its answer says (Hedging.hedge_at) -----------------


def _policy() -> Hedging:
    return Hedging(HedgeConfig(floor=1.0, cap=5.0, min_samples=1, slack=1.0))


def test_a_read_without_headers_is_hedged_at_the_floor() -> None:
    read = ReadProgress(started=100.0, tracked=True)
    assert _policy().hedge_at(read, MiB, to_origin=True) == 101.0


def test_an_owner_filling_from_origin_is_never_hedged_to_origin() -> None:
    read = ReadProgress(started=100.0, tracked=True, answered_at=100.01, source="origin")
    assert read.filling
    assert _policy().hedge_at(read, MiB, to_origin=True) is None
    # A replica may be asked, once the fill runs past the cap.
    assert _policy().hedge_at(read, MiB, to_origin=False) == 105.0


def test_a_body_is_hedged_when_it_stalls_or_runs_past_its_deadline() -> None:
    h = _policy()
    h.estimator.observe(2.0, 64 * MiB)  # 32 MiB/s: a 64 MiB chunk gets 2 s.
    read = ReadProgress(started=100.0, tracked=True, answered_at=100.0, source="cache")
    assert h.hedge_at(read, 64 * MiB, to_origin=True) == 101.0  # No byte yet: stalled at once.
    read.body_at, read.last_at, read.got = 100.5, 100.6, 1
    assert h.hedge_at(read, 64 * MiB, to_origin=True) == 101.6  # Stall bound from the last byte.
    read.last_at = 104.9
    # Flowing: to a replica past the learned deadline; to origin only past
    # ALIVE_FACTOR caps (its owner is alive, sending), if it would need a cap more.
    assert h.hedge_at(read, 64 * MiB, to_origin=False) == 102.0
    assert h.hedge_at(read, 64 * MiB, to_origin=True) == 105.9  # Only the stall bound.
    read.last_at = 130.0
    assert h.hedge_at(read, 64 * MiB, to_origin=True) == 100.0 + ALIVE_FACTOR * 5.0


def test_the_answer_deadline_follows_how_late_peers_answer_now() -> None:
    h = _policy()  # floor 1, cap 5, slack 1, min_samples 1
    read = ReadProgress(started=100.0, tracked=True)
    assert h.hedge_at(read, MiB, to_origin=True) == 101.0
    for latency in (0.1, 3.0):  # A loaded ring: answers come late for everyone.
        h.observe(ReadProgress(started=0.0, tracked=True, answered_at=latency), MiB)
    assert h.answer_deadline() == 3.0
    assert h.hedge_at(read, MiB, to_origin=True) == 103.0


def test_after_a_fill_the_deadline_counts_from_the_first_byte() -> None:
    h = _policy()
    read = ReadProgress(started=100.0, tracked=True, answered_at=100.0, source="origin",
                        body_at=130.0, last_at=130.0, got=1)
    assert not read.filling
    assert h.hedge_at(read, MiB, to_origin=True) == 131.0


def test_an_older_owners_answer_has_no_source_and_an_untracked_read_only_an_age() -> None:
    read = ReadProgress(tracked=True)
    read.answered("something-new")
    assert read.source is None and not read.filling
    untracked = ReadProgress(started=100.0)
    assert _policy().hedge_at(untracked, 64 * MiB, to_origin=True) == \
        100.0 + min(5.0, 64 * MiB / PRIOR_BYTES_PER_SECOND)


# -- a silent owner against the others: frozen, or just a starved node -------------------


def _heard(live: PeerLiveness, **at: float) -> None:
    for peer, when in at.items():
        live.heard(peer, when)


def _read(live: PeerLiveness, peer: str = "owner", started: float = 100.0) -> ReadProgress:
    return ReadProgress(started=started, tracked=True, peer=peer, liveness=live)


def test_a_silent_owner_is_hedged_at_the_floor_while_other_peers_answer() -> None:
    h = _policy()  # floor 1, cap 5
    read = _read(h.liveness)
    # Before the floor: wait for it.
    assert h.hedge_at(read, MiB, to_origin=True, now=100.5) == 101.0
    _heard(h.liveness, other=100.2)  # Another peer answered after the request began.
    assert h.hedge_at(read, MiB, to_origin=True, now=101.2) == 101.0


def test_when_every_peer_is_quiet_the_read_waits_until_the_cap() -> None:
    h = _policy()
    read = _read(h.liveness)
    _heard(h.liveness, other=99.0)  # Heard only before the request: everyone is quiet now.
    assert h.hedge_at(read, MiB, to_origin=True, now=102.0) is None
    assert h.hedge_at(read, MiB, to_origin=True, now=105.0) == 105.0  # The cap holds anyway.


def test_an_owner_heard_on_another_request_is_not_quiet() -> None:
    h = _policy()
    read = _read(h.liveness)
    # The owner streams another chunk to this node: it is alive, only busy.
    _heard(h.liveness, owner=100.8, other=100.9)
    assert h.hedge_at(read, MiB, to_origin=True, now=101.2) == 101.8
    assert h.hedge_at(read, MiB, to_origin=True, now=101.9) == 101.8


def test_a_stalled_body_is_judged_by_the_same_quiet_rule() -> None:
    h = _policy()
    read = _read(h.liveness)
    read.answered("cache")
    read.answered_at = read.body_at = read.last_at = 100.0
    read.got = 1
    h.liveness.heard("owner", 100.0)
    assert h.hedge_at(read, MiB, to_origin=True, now=101.5) is None  # Nobody else heard.
    _heard(h.liveness, other=101.2)
    assert h.hedge_at(read, MiB, to_origin=True, now=101.5) == 101.0


def test_progress_records_what_it_hears_per_peer() -> None:
    live = PeerLiveness()
    read = _read(live, peer="a:1")
    assert live.last_heard("a:1") is None
    read.answered("cache")
    first = live.last_heard("a:1")
    assert first is not None
    read.received(10)
    assert live.last_heard("a:1") >= first  # type: ignore[operator]
    assert live.heard_other_since("b:1", 0.0) and not live.heard_other_since("a:1", 0.0)
    live.forget({"b:1"})
    assert live.last_heard("a:1") is None


def test_the_origin_hedge_budget_is_a_share_of_the_pull_over_the_members() -> None:
    budget = OriginHedgeBudget(share=0.05)
    budget.grow(400 * MiB, members=4)  # 5 MiB for this node's pull.
    assert not budget.take(8 * MiB)
    assert budget.take(4 * MiB)
    assert not budget.take(2 * MiB)  # 1 MiB left.
    budget.grow(0, members=0)  # No members (never happens) does not divide by zero.


def test_while_this_node_runs_late_a_silent_owner_is_not_hedged() -> None:
    h = _policy()  # floor 1: a timer 0.25 s late means starved, for 1 s.
    read = _read(h.liveness)
    _heard(h.liveness, other=100.5)
    h.note_wake(0.2, now=101.0)  # Late, but not by enough.
    assert h.hedge_at(read, MiB, to_origin=True, now=101.1) == 101.0
    h.note_wake(0.4, now=101.0)
    assert h.hedge_at(read, MiB, to_origin=True, now=101.1) is None
    assert h.hedge_at(read, MiB, to_origin=True, now=102.1) == 101.0  # A floor later.
    assert h.hedge_at(read, MiB, to_origin=True, now=105.0) == 105.0  # The cap holds.


def test_while_another_peer_is_late_too_a_silent_owner_is_not_hedged() -> None:
    h = _policy()  # floor 1
    read = _read(h.liveness)
    _heard(h.liveness, other=100.5)
    elsewhere = _read(h.liveness, peer="third", started=100.2)
    h.liveness.asking(elsewhere)  # No headers from "third" either, for 0.9 s by 101.1.
    h.liveness.asking(ReadProgress(started=100.0, peer="me"))  # Untracked (local): no say.
    assert h.hedge_at(read, MiB, to_origin=True, now=101.1) is None
    elsewhere.answered("cache")  # It answered: the owner is the only silent one.
    assert h.hedge_at(read, MiB, to_origin=True, now=101.1) == 101.0
    h.liveness.finished(elsewhere)
    assert h.liveness.waiting_elsewhere("owner", 101.1) == 0.0


def test_a_flowing_body_past_the_cap_is_hedged_only_if_it_would_take_a_cap_more() -> None:
    h = _policy()  # floor 1, cap 5: a body flows to origin's cost for ALIVE_FACTOR caps.
    read = ReadProgress(started=100.0, tracked=True, answered_at=100.0, source="cache",
                        body_at=100.0, last_at=109.9, got=4 * MiB)
    # Before then only the stall bound (a floor after its last piece) holds it.
    assert h.hedge_at(read, 64 * MiB, to_origin=True, now=110.0) == 110.9
    read.last_at = 120.9
    # 60 of 64 MiB in 21 s: 1.4 s to go, under the cap: finishing beats reading again.
    read.got = 60 * MiB
    assert h.hedge_at(read, 64 * MiB, to_origin=True, now=121.0) == 121.9
    read.got = 4 * MiB  # 4 of 64 MiB in 21 s: 315 s to go at this rate: hedge.
    assert h.hedge_at(read, 64 * MiB, to_origin=True, now=121.0) == 120.0


# -- the learned answer deadline, and a health probe before a costly hedge ----------------


def _learning(**kw: float) -> Hedging:
    cfg = {"floor": 2.0, "cap": 10.0, "min_samples": 3, "slack": 1.5, "min_deadline": 0.25,
           "window": 8, **kw}
    return Hedging(HedgeConfig(**cfg))  # type: ignore[arg-type]


def _answered(h: Hedging, *latencies: float) -> None:
    for latency in latencies:
        h.observe(ReadProgress(started=0.0, tracked=True, answered_at=latency), MiB)


def test_the_answer_deadline_is_learned_below_the_floor_and_within_its_bounds() -> None:
    h = _learning()
    assert h.answer_deadline() == 2.0  # Nothing seen yet: the floor is the prior.
    _answered(h, 0.01, 0.02)
    assert h.answer_deadline() == 2.0  # Not enough yet.
    _answered(h, 0.4)
    assert h.answer_deadline() == pytest.approx(0.6)  # 1.5 x p95, under the floor now.
    _answered(h, *[0.001] * 8)  # The window forgets the slow one; min_deadline holds.
    assert h.answer_deadline() == 0.25
    _answered(h, *[30.0] * 8)  # A ring that answers late everywhere: the cap holds.
    assert h.answer_deadline() == 10.0


def test_probe_round_trips_teach_the_deadline_before_any_chunk_answer() -> None:
    h = _learning()
    h.observe_probe("p:1", 0.2)
    assert h.answer_deadline() == 2.0  # No prober: no costly hedge waits on a probe.
    h.prober = _Prober(True)
    assert h.answer_deadline() == pytest.approx(0.3)  # One round trip is enough then.
    for rtt in (0.3, 0.4):
        h.observe_probe("p:1", rtt)
    assert h.answer_deadline() == pytest.approx(0.6)
    assert h.liveness.probe_state("p:1", since=0.0) == "alive"
    _answered(h, 0.1, 0.1, 0.1)  # Chunk answers, once enough, take over.
    assert h.answer_deadline() == 0.25


def test_defaults_learn_down_to_an_eighth_of_the_peer_timeout() -> None:
    cfg = HedgeConfig.for_peer_timeout(2.0)
    assert (cfg.floor, cfg.lowest) == (2.0, 0.25)
    assert HedgeConfig.for_peer_timeout(2.0, floor=0.1).lowest == 0.1  # Never above the floor.
    assert HedgeConfig(floor=1.0).lowest == 1.0  # Without min_deadline: the floor.


class _Prober:
    """Answers health probes as told (``None``: never, within any timeout)."""

    def __init__(self, answer: bool | None) -> None:
        self.answer = answer
        self.asked: list[tuple[str, float]] = []

    async def __call__(self, peer: str, timeout: float) -> bool:
        self.asked.append((peer, timeout))
        if self.answer is None:
            await asyncio.sleep(3600)
        return bool(self.answer)


async def _silent_owner_verdict(answer: bool | None) -> tuple[Hedging, _Prober, float | None]:
    """A silent owner past its learned deadline while another peer answers: what a
    costly hedge waits for once a health probe of it has had its say."""
    h = _learning()
    _answered(h, 0.1, 0.1, 0.1)  # Deadline 0.25 s.
    prober = _Prober(answer)
    h.prober = prober
    now = time.monotonic()
    read = _read(h.liveness, started=now - 0.5)
    _heard(h.liveness, other=now - 0.1)
    look = h.hedge_at(read, MiB, to_origin=True, now=now)
    assert look is not None and look > now  # Not yet: a probe was sent.
    for _ in range(5):
        await asyncio.sleep(0)
    assert [p for p, _ in prober.asked] == ["owner"]
    # The replica rule needs no probe.
    assert h.hedge_at(read, MiB, to_origin=False, now=now) == now - 0.25
    for _ in range(200):
        if not h._probing:
            break
        await asyncio.sleep(0.01)
    return h, prober, h.hedge_at(read, MiB, to_origin=True, now=time.monotonic())


async def test_a_silent_owner_that_answers_no_probe_is_hedged_at_once() -> None:
    h, prober, at = await _silent_owner_verdict(None)
    assert at is not None and at <= time.monotonic()
    assert prober.asked[0][1] == 0.25  # The probe had one answer deadline.
    assert (h.stats.unresponsive, h.stats.alive) == (1, 0)


async def test_a_silent_owner_that_answers_its_probe_is_waited_for_longer() -> None:
    h, prober, at = await _silent_owner_verdict(True)
    # Quiet since the read began (0.5 s before): max(floor 2, 4 x 0.25) from then.
    assert at is not None and at > time.monotonic() + 1.0
    assert (h.stats.alive, h.stats.unresponsive) == (1, 0)
    assert len(prober.asked) == 1  # Judged once; no probe per look.
    await h.close()


async def test_without_a_prober_a_silent_owner_is_hedged_on_the_quiet_rule_alone() -> None:
    h = _learning()
    _answered(h, 0.1, 0.1, 0.1)
    read = _read(h.liveness, started=100.0)
    _heard(h.liveness, other=100.2)
    assert h.hedge_at(read, MiB, to_origin=True, now=100.3) == 100.25


async def test_past_the_cap_with_every_peer_quiet_only_an_unresponsive_owner_is_hedged() -> None:
    for answer, hedged in ((True, False), (None, True)):
        h = _learning(cap=1.0, floor=1.0)
        h.prober = _Prober(answer)
        now = time.monotonic()
        read = _read(h.liveness, started=now - 2.0)  # Past the cap; no other peer heard.
        look = h.hedge_at(read, MiB, to_origin=True, now=now)
        assert look is not None and look > now  # A probe decides.
        for _ in range(300):
            await asyncio.sleep(0.01)
            if not h._probing:
                break
        at = h.hedge_at(read, MiB, to_origin=True)
        assert (at is not None and at <= time.monotonic()) is hedged, answer
        await h.close()
