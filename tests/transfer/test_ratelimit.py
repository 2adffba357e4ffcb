"""The byte token bucket behind background fills, on a fake clock (no waiting)."""

from __future__ import annotations

import pytest

from bdn.transfer.ratelimit import RateLimiter


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_a_burst_of_one_second_passes_then_the_rate_holds() -> None:
    t = FakeTime()
    limiter = RateLimiter(1000.0, clock=t.clock, sleep=t.sleep)
    await limiter.consume(1000)  # The full bucket.
    assert t.slept == []
    for _ in range(10):
        await limiter.consume(500)
    # 5000 more bytes at 1000 B/s: five seconds of waiting in all.
    assert sum(t.slept) == pytest.approx(5.0)


async def test_idle_time_refills_up_to_the_burst_only() -> None:
    t = FakeTime()
    limiter = RateLimiter(100.0, clock=t.clock, sleep=t.sleep)
    await limiter.consume(100)
    t.now += 60.0  # Idle for a minute: the bucket holds one second, not sixty.
    await limiter.consume(300)
    assert sum(t.slept) == pytest.approx(2.0)


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0)
