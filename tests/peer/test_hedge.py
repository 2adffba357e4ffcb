"""The hedge deadline estimator and the concurrent-hedge bound (bdn/peer/hedge.py)."""

from __future__ import annotations

import pytest

from bdn.peer.hedge import (
    MIN_SAMPLE_BYTES,
    PRIOR_BYTES_PER_SECOND,
    DeadlineEstimator,
    HedgeBudget,
    HedgeConfig,
    Hedging,
    OriginHedgeBudget,
    PeerLiveness,
    ReadProgress,
    p95,
)

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
    # Flowing: to a replica past the learned deadline; to origin only past the cap.
    assert h.hedge_at(read, 64 * MiB, to_origin=False) == 102.0
    assert h.hedge_at(read, 64 * MiB, to_origin=True) == 105.0


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
    h = _policy()  # floor 1, cap 5
    read = ReadProgress(started=100.0, tracked=True, answered_at=100.0, source="cache",
                        body_at=100.0, last_at=105.9, got=40 * MiB)
    # 40 of 64 MiB in 6 s: 3.6 s to go, under the cap: finishing beats reading again.
    # Only the stall bound (a floor after its last piece) holds it now.
    assert h.hedge_at(read, 64 * MiB, to_origin=True, now=106.0) == 106.9
    read.got = 4 * MiB  # 4 of 64 MiB in 6 s: 90 s to go at this rate: hedge.
    assert h.hedge_at(read, 64 * MiB, to_origin=True, now=106.0) == 105.0
