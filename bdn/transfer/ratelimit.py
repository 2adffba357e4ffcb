"""A token bucket for bytes: caps background fills so they do not starve inference I/O.

>>> limiter = RateLimiter(100.0)
>>> limiter.rate
100.0
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class RateLimiter:
    """Lets ``rate`` bytes per second through on average, with a burst of one second.

    Shared by every task of one event loop: each ``consume(n)`` takes ``n``
    bytes' worth of tokens, sleeping first when the bucket is short. A request
    larger than the burst waits for its own debt; nothing is ever refused.
    ``clock`` and ``sleep`` are injectable so the arithmetic is testable
    without waiting.
    """

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.rate  # A full bucket: one second's burst.
        self._stamp = clock()
        self._lock = asyncio.Lock()

    async def consume(self, nbytes: int) -> None:
        """Wait until ``nbytes`` may pass."""
        if nbytes <= 0:
            return
        async with self._lock:  # FIFO: waiters are served in arrival order.
            now = self._clock()
            self._tokens = min(self.rate, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= nbytes
            if self._tokens < 0:
                await self._sleep(-self._tokens / self.rate)
