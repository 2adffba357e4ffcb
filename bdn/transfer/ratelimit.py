"""A token bucket for bytes: caps background fills so they do not starve inference I/O.

>>> limiter = RateLimiter(100.0)
>>> limiter.rate
100.0

A cap can be lifted while a transfer runs: give the engine a :class:`RateCap`
(``TransferConfig.rate_limit``) and call :meth:`RateCap.lift` (the node agent
does, when a pod starts waiting on a background pull).

>>> cap = RateCap(100.0)
>>> RateLimiter(cap).lifted, cap.lift(), RateLimiter(cap).lifted
(False, None, True)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class RateCap:
    """A cap in bytes per second that its owner can lift for good, while in use.

    An explicit object, passed as ``TransferConfig.rate_limit``: every
    :class:`RateLimiter` built from it stops limiting, and wakes its waiters,
    as soon as :meth:`lift` is called. Compared by identity (two pulls capped at
    the same rate are still lifted one by one). Use from one event loop.
    """

    __slots__ = ("_lifted", "_waiters", "bytes_per_second")

    def __init__(self, bytes_per_second: float) -> None:
        if bytes_per_second <= 0:
            raise ValueError("rate must be positive")
        self.bytes_per_second = float(bytes_per_second)
        self._lifted = False
        self._waiters: set[asyncio.Future[None]] = set()

    def __repr__(self) -> str:
        state = ", lifted" if self._lifted else ""
        return f"RateCap({self.bytes_per_second:g}{state})"

    @property
    def lifted(self) -> bool:
        return self._lifted

    def lift(self) -> None:
        """Stop limiting (idempotent): limiters built from this cap let everything through."""
        self._lifted = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait_lifted(self) -> None:
        """Return once :meth:`lift` has been called."""
        if self._lifted:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await waiter
        finally:
            self._waiters.discard(waiter)


class RateLimiter:
    """Lets ``rate`` bytes per second through on average, with a burst of one second.

    Shared by every task of one event loop: each ``consume(n)`` takes ``n``
    bytes' worth of tokens, sleeping first when the bucket is short. A request
    larger than the burst waits for its own debt; nothing is ever refused.
    ``clock`` and ``sleep`` are injectable so the arithmetic is testable
    without waiting. Built from a :class:`RateCap`, it stops limiting (and
    cuts any wait short) once that cap is lifted.
    """

    def __init__(
        self,
        rate: float | RateCap,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._liftable = rate if isinstance(rate, RateCap) else None
        value = rate.bytes_per_second if isinstance(rate, RateCap) else float(rate)
        if value <= 0:
            raise ValueError("rate must be positive")
        self.rate = value
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.rate  # A full bucket: one second's burst.
        self._stamp = clock()
        self._lock = asyncio.Lock()

    @property
    def lifted(self) -> bool:
        """True once this limiter's rate was lifted: it no longer limits."""
        return self._liftable is not None and self._liftable.lifted

    async def consume(self, nbytes: int) -> None:
        """Wait until ``nbytes`` may pass."""
        if nbytes <= 0 or self.lifted:
            return
        async with self._lock:  # FIFO: waiters are served in arrival order.
            if self.lifted:
                return
            now = self._clock()
            self._tokens = min(self.rate, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= nbytes
            if self._tokens < 0:
                await self._wait(-self._tokens / self.rate)

    async def _wait(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if the rate is lifted meanwhile."""
        if self._liftable is None:
            await self._sleep(seconds)
            return
        sleeping = asyncio.ensure_future(self._sleep(seconds))
        lifting = asyncio.ensure_future(self._liftable.wait_lifted())
        try:
            await asyncio.wait({sleeping, lifting}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeping, lifting):
                task.cancel()
            await asyncio.gather(sleeping, lifting, return_exceptions=True)
