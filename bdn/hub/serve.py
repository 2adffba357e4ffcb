"""``bdn serve``: the Hub endpoint on one machine, with no agent (in-process node cache).

Opens the store and the node cache named by :class:`~bdn.config.settings.Settings`,
mounts :func:`bdn.hub.app.hub_app` on ``listen`` and serves until SIGTERM or
SIGINT (:func:`bdn.daemon.lifecycle.serve_until_signalled`). Blobs come from the
node cache, else from the store (origin); there is no peer tier here.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiohttp import web

from bdn.backends import store_for
from bdn.cache import NodeCache
from bdn.config.settings import Settings
from bdn.daemon.address import format_hostport
from bdn.daemon.lifecycle import Closer, close_all, serve_until_signalled, start_or_stop
from bdn.daemon.sites import listen_tcp
from bdn.hub.app import PREFIX, HubContext, hub_app
from bdn.hub.upstream import UpstreamConfig

__all__ = ["DEFAULT_SERVE_LISTEN", "HubServer", "ServeConfig", "UpstreamConfig", "run"]
from bdn.pull import DEFAULT_PULL_OPTIONS, PullOptions

log = logging.getLogger("serve")

DEFAULT_SERVE_LISTEN = "127.0.0.1:8080"
"""Where ``bdn serve`` listens when not told: loopback."""


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """Everything ``bdn serve`` needs: settings (store, cache, secrets), the listen
    address, the pull options of its fills and pull-through (``None``: off)."""

    settings: Settings
    listen: tuple[str, int]
    pull: PullOptions = DEFAULT_PULL_OPTIONS
    drain_timeout: float = 10.0
    upstream: UpstreamConfig | None = None


class HubServer:
    """The endpoint as a service: ``start``, ``drain``, ``stop`` (:mod:`bdn.daemon.lifecycle`)."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self._closers: list[Closer] = []
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        await start_or_stop(self, self._start)

    async def _start(self) -> None:
        cfg, s = self.config, self.config.settings
        store = store_for(s)
        self._closers.append(store.close)
        cache = NodeCache(s.cache_dir, max_bytes=s.cache_max_bytes)

        async def close_cache() -> None:
            cache.close()

        self._closers.append(close_cache)
        options = cfg.pull.trusting(s.trusted_stores, store.uri)
        app = hub_app(HubContext(store, cache, s.secrets(), options, upstream=cfg.upstream))
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=cfg.drain_timeout)
        await self._runner.setup()
        self.port = await listen_tcp(self._runner, cfg.listen)
        log.info("serving the Hub API on http://%s%s for store %s",
                 format_hostport(cfg.listen[0], self.port), PREFIX, store.uri)

    async def drain(self, force: asyncio.Event | None = None) -> None:
        """Stop listening and let in-flight downloads finish (bounded by ``drain_timeout``)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def stop(self) -> None:
        """Close everything (idempotent)."""
        await self.drain()
        await close_all(self._closers, log)


def run(config: ServeConfig) -> int:
    """The ``bdn serve`` process: serve until a signal; returns the exit status (0)."""
    return asyncio.run(serve_until_signalled(HubServer(config), "serve"))
