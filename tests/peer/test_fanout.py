"""The owner's fan-out routing (bdn.peer.fanout.FanoutTracker): pure policy, no I/O."""

from __future__ import annotations

import pytest

from bdn.peer.fanout import SUSPECT_SECONDS, FanoutTracker


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def routes(tracker: FanoutTracker, key: str, requesters: list[str]) -> list[str | None]:
    return [tracker.route(key, r) for r in requesters]


def test_the_owner_serves_k_then_fills_a_k_ary_tree_breadth_first() -> None:
    t = FanoutTracker(2)
    got = routes(t, "c", [f"n{i}" for i in range(1, 11)])
    # n1, n2 from the owner; n3..n6 from n1 and n2 in turn; then the next hop, each
    # holder given its first before any its second.
    assert got == [None, None, "n1", "n2", "n1", "n2", "n3", "n4", "n5", "n6"]
    assert t.stats.redirects_issued == 8


def test_no_holder_has_more_than_k_and_a_full_tree_falls_back_to_the_owner() -> None:
    t = FanoutTracker(1)
    assert routes(t, "c", ["a", "b", "c"]) == [None, "a", "b"]
    # Each chunk is its own tree; another chunk starts again at the owner.
    assert t.route("other", "b") is None
    # A tracker that forgot (bounded memory) serves the requester itself: still correct.
    small = FanoutTracker(1, max_chunks=1)
    assert small.route("x", "a") is None
    assert small.route("y", "a") is None
    assert small.route("x", "b") is None  # "x" was forgotten: b is served, not sent to a.


def test_a_node_first_everywhere_does_not_pass_on_every_chunk() -> None:
    t = FanoutTracker(2)
    # "fast" is the first requester of every chunk, "b" the second (both served by
    # the owner); "c" comes third: it goes to fast or b, whichever this owner has sent
    # fewer redirects so far, so fast passes on half the chunks, not all of them.
    for key in ("c1", "c2", "c3", "c4"):
        assert t.route(key, "fast") is None and t.route(key, "b") is None
    assert [t.route(key, "c") for key in ("c1", "c2", "c3", "c4")] == ["fast", "b"] * 2


def test_a_requester_asking_again_is_served_by_the_owner() -> None:
    t = FanoutTracker(1)
    assert routes(t, "c", ["a", "b"]) == [None, "a"]
    # b asks again (its first read failed verification, or it restarted): the owner serves.
    assert t.route("c", "b") is None
    assert t.route("c", "a") is None


def test_a_failed_holder_is_served_around_and_not_named_until_its_suspicion_ends() -> None:
    clock = Clock()
    t = FanoutTracker(2, clock=clock)
    assert routes(t, "c", ["a", "b", "x"]) == [None, None, "a"]
    # x comes back: a failed it. The owner serves x itself.
    assert t.route("c", "x", failed="a") is None
    # a is named for no chunk for a while: the next requesters go to b and x in turn.
    assert routes(t, "c", ["y", "z", "w"]) == ["b", "x", "b"]
    assert t.route("d", "a") is None and t.route("d", "e") is None
    assert t.route("d", "f") == "e"  # d's holders: a (suspect), e: e is named, not a.
    clock.now += SUSPECT_SECONDS + 1
    # a was dropped from c only: for d it is named again, load shared with e; then a
    # has been sent K redirects by this owner in all (one hop further), so i goes to f.
    assert routes(t, "d", ["g", "h", "i"]) == ["a", "e", "f"]


def test_fanout_off_or_an_anonymous_requester_is_always_served_by_the_owner() -> None:
    off = FanoutTracker(0)
    assert routes(off, "c", ["a", "b", "c", "d"]) == [None] * 4
    on = FanoutTracker(1)
    assert [on.route("c", None) for _ in range(3)] == [None] * 3
    assert on.route("c", "a") is None  # Anonymous requesters became no holders.
    assert on.stats.redirects_issued == 0
    with pytest.raises(ValueError):
        FanoutTracker(-1)


def test_a_holder_busy_passing_chunks_on_elsewhere_is_passed_over() -> None:
    t = FanoutTracker(2)
    # fast says (in its own request) it answers 4 redirected requests already: for
    # this owner it counts as two hops further away, so b and then b's and fast's
    # peers at two hops are named first.
    assert t.route("c", "fast", load=4) is None and t.route("c", "b", load=0) is None
    assert routes(t, "c", ["x", "y", "z"]) == ["b", "b", "x"]
    # Once fast says it is idle again, it is named like any holder near the owner.
    assert t.route("d", "fast", load=0) is None and t.route("d", "b", load=0) is None
    assert t.route("d", "w") == "fast"
