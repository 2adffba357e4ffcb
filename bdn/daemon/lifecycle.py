"""The lifecycle every long-running BDN service shares: start, wait for a signal, drain, stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

log = logging.getLogger(__name__)

Closer = Callable[[], Awaitable[None]]
"""Closes one resource a daemon opened (a store, an HTTP client, a cache)."""


class Service(Protocol):
    """A daemon the lifecycle drives. ``drain`` returns early once ``force`` is set
    (a second signal); ``stop`` runs even when ``start`` failed half-way."""

    async def start(self) -> None: ...

    async def drain(self, force: asyncio.Event) -> object: ...

    async def stop(self) -> None: ...


async def serve_until_signalled(service: Service, name: str) -> int:
    """Run ``service`` until SIGTERM/SIGINT, drain it, stop it; returns the exit status (0).

    A second signal during the drain cuts it short, as an operator pressing
    Ctrl-C twice expects.
    """
    loop = asyncio.get_running_loop()
    stop, force = asyncio.Event(), asyncio.Event()

    def on_signal(signame: str) -> None:
        if stop.is_set():
            log.warning("second %s: cutting the drain short", signame)
            force.set()
        else:
            log.info("received %s", signame)
            stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    try:
        await service.start()
        await stop.wait()
        await service.drain(force)
    finally:
        await service.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
    log.info("%s stopped", name)
    return 0


async def cancel_and_wait(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait until each has ended, so nothing they hold outlives
    the caller's close; their cancellation is expected, not an error."""
    pending = list(tasks)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def start_or_stop(service: Service, start: Callable[[], Awaitable[None]]) -> None:
    """Run ``start()``; if it fails, ``service.stop()`` closes what it had opened and the
    failure is raised again, so a daemon that did not start holds nothing (no port,
    no socket, no open client)."""
    try:
        await start()
    except BaseException:
        await service.stop()
        raise


async def close_all(closers: list[Closer], logger: logging.Logger) -> None:
    """Run ``closers`` newest first (what was opened last may use what came before it),
    then empty the list. One failing close is logged on ``logger`` and does not keep
    the others from running: a leak there would outlive the daemon's stop."""
    for close in reversed(closers):
        try:
            await close()
        except Exception:  # One failing close must not leak the others.
            logger.exception("closing failed")
    closers.clear()
