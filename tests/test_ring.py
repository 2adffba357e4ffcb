"""The ring: balanced ownership, ~1/N movement on membership change, distinct replicas."""

from __future__ import annotations

from collections import Counter

import pytest

from bdn.digest import Digest
from bdn.ring import Ring, RingConfig

KEYS = [(Digest(f"{i:064x}"), j) for i in range(400) for j in range(10)]
MEMBERS = [f"10.0.0.{i}:7070" for i in range(1, 9)]


def _owners(ring: Ring) -> list[str | None]:
    return [ring.owner(d, j) for d, j in KEYS]


def test_every_member_owns_a_fair_share() -> None:
    share = Counter(_owners(Ring(MEMBERS)))
    assert set(share) == set(MEMBERS)
    fair = len(KEYS) / len(MEMBERS)
    assert all(0.6 * fair < n < 1.5 * fair for n in share.values()), share


@pytest.mark.parametrize("n", [2, 4, 8])
def test_a_member_joining_or_leaving_moves_about_one_nth(n: int) -> None:
    before = _owners(Ring(MEMBERS[:n]))
    joined = _owners(Ring([*MEMBERS[:n], "10.0.0.99:7070"]))
    moved = sum(a != b for a, b in zip(before, joined, strict=True)) / len(KEYS)
    assert 0.4 / (n + 1) < moved < 1.6 / (n + 1)
    # Keys that moved went to the newcomer, nowhere else.
    assert all(b == "10.0.0.99:7070" for a, b in zip(before, joined, strict=True) if a != b)
    # When a member leaves, only the keys it owned move.
    left = _owners(Ring(MEMBERS[1:n]))
    assert all(a == b for a, b in zip(before, left, strict=True) if a != MEMBERS[0])


def test_ownership_does_not_depend_on_member_order() -> None:
    assert _owners(Ring(MEMBERS)) == _owners(Ring(reversed(MEMBERS)))


def test_replicas_are_distinct_and_the_first_is_the_owner() -> None:
    ring = Ring(MEMBERS, RingConfig(replicas=3))
    single = Ring(MEMBERS)
    for d, j in KEYS[:200]:
        owners = ring.owners(d, j)
        assert len(owners) == len(set(owners)) == 3
        assert owners[0] == single.owner(d, j)
    assert len(Ring(MEMBERS[:2], RingConfig(replicas=3)).owners(*KEYS[0])) == 2


def test_empty_ring_owns_nothing() -> None:
    assert Ring([]).owner(*KEYS[0]) is None and Ring([]).owners(*KEYS[0]) == []
