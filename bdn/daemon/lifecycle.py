"""The lifecycle every long-running BDN service shares: start, wait for a signal, drain, stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterable
from typing import Protocol

log = logging.getLogger(__name__)


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
