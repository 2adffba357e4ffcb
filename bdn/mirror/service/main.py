"""Wiring and lifecycle of the mirror service (``bdn mirror-server``): start, resume, drain, stop.

:class:`MirrorService` composes, from one :class:`MirrorServiceConfig`: the
blob store, one HTTP client shared by every mirror, the secret resolver,
the job manager over a :class:`~bdn.mirror.service.state.JobStore` in the state dir,
and the HTTP server. :func:`run` adds signals.

Start: read the state dir and queue the unfinished jobs again, listen, then
start running jobs (resumed ones first).

Shutdown (SIGTERM or SIGINT):

1. ``/healthz`` answers 503 and new submissions are refused with 503; queued
   jobs are not started (they stay queued in the state dir).
2. Running jobs get ``drain_timeout`` seconds to finish. Those still running
   then are cancelled and their records stay ``running``, so the next start
   resumes them; the store is left consistent (a blob or manifest is only
   ever published whole).
3. The server stops listening; everything is closed. The exit status is 0.

A second signal skips the wait of step 2.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import disable_created_metrics

from bdn.backends import store_for
from bdn.config.settings import Settings
from bdn.config.weights import WeightsEntry
from bdn.daemon.address import format_hostport
from bdn.daemon.lifecycle import Closer, close_all, serve_until_signalled, start_or_stop
from bdn.daemon.sites import listen_tcp
from bdn.errors import ConfigError
from bdn.http import HttpClient
from bdn.mirror.run import MirrorOptions, MirrorPlan, MirrorResult, run_mirror
from bdn.mirror.service.metrics import MirrorMetrics
from bdn.mirror.service.scheduler import (
    DEFAULT_JOB_LIMITS,
    DEFAULT_JOB_RETENTION,
    JobLimits,
    JobManager,
    MirrorFn,
)
from bdn.mirror.service.server import ServerContext, make_app
from bdn.mirror.service.sources import ALLOW_FLAG, SourcePolicy
from bdn.mirror.service.state import JobStore

__all__ = ["DEFAULT_MIRROR_LISTEN", "MirrorService", "MirrorServiceConfig", "run", "serve"]

log = logging.getLogger("bdn.mirror.service")

DEFAULT_MIRROR_LISTEN = "127.0.0.1:7080"
"""Where ``bdn mirror-server`` listens when no ``--listen`` is given: loopback."""


@dataclass(frozen=True, slots=True)
class MirrorServiceConfig:
    """Everything ``bdn mirror-server`` needs, resolved at the entry point.

    Attributes:
        settings: store, secrets and upstream endpoints (``BDN_STORE``,
            ``BDN_SECRETS_DIR``, ``BDN_SECRET_*``, ``AWS_ENDPOINT_URL``, ...).
        listen: ``(host, port)``; port 0 picks a free one (see :attr:`MirrorService.port`).
        state_dir: where job records live.
        token: the bearer token every request but ``/healthz`` must carry;
            ``None`` serves without one (the entry point allows that only on
            loopback with ``--insecure-no-token``).
        limits: jobs and bytes in flight.
        drain_timeout: seconds a SIGTERM waits for running jobs.
        mirror_options: how each entry is mirrored (default: from ``settings``).
        sources: the ``--allow-source`` allowlist; the default allows nothing.
        job_retention: seconds a finished job's record is kept (``--job-retention``).
    """

    settings: Settings
    listen: tuple[str, int]
    state_dir: Path
    token: str | None
    limits: JobLimits = DEFAULT_JOB_LIMITS
    drain_timeout: float = 30.0
    mirror_options: MirrorOptions | None = field(default=None)
    sources: SourcePolicy = field(default_factory=SourcePolicy)
    job_retention: float = DEFAULT_JOB_RETENTION

    def __post_init__(self) -> None:
        if self.token is not None and not self.token:
            raise ConfigError("the token is empty; put a random secret in the token file",
                              field="--token-file")
        if self.drain_timeout <= 0:
            raise ConfigError("must be a positive number of seconds", field="--drain-timeout")
        if self.job_retention <= 0:
            raise ConfigError("must be a positive duration, e.g. 7d", field="--job-retention")


class MirrorService:
    """One mirror service. ``await start()``, then ``await drain()`` and ``await stop()``.

    Not reusable after :meth:`stop`. Use from one event loop.

    Args:
        config: the resolved configuration.
        mirror: replaces :func:`~bdn.mirror.run.run_mirror` (tests); the
            store and HTTP client are then not opened.
    """

    def __init__(self, config: MirrorServiceConfig, *, mirror: MirrorFn | None = None) -> None:
        self.config = config
        self.metrics = MirrorMetrics()
        self.draining = False
        self.jobs: JobManager | None = None
        self._mirror = mirror
        self._runner: web.AppRunner | None = None
        self._closers: list[Closer] = []
        self.port: int | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` of the started server."""
        return f"http://{format_hostport(self.config.listen[0], self.port or 0)}"

    async def start(self) -> None:
        """Resume the state dir, listen, start jobs; on failure close what was opened and raise.

        Raises:
            ConfigError: the state dir cannot be created or the address is taken.
        """
        await start_or_stop(self, self._start)

    async def _start(self) -> None:
        cfg = self.config
        mirror = self._mirror or self._real_mirror()
        self.jobs = jobs = JobManager(JobStore(cfg.state_dir), mirror, limits=cfg.limits,
                                      metrics=self.metrics, retention=cfg.job_retention,
                                      refuse=cfg.sources.check)
        resumed = jobs.load()
        app = make_app(ServerContext(jobs, cfg.token, self.health, cfg.sources))
        # No access log: the middleware writes one JSON line per request itself.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
        await self._runner.setup()
        self.port = await listen_tcp(self._runner, cfg.listen)
        jobs.start()
        log.info("mirror service started", extra={
            "listen": self.url, "state_dir": str(cfg.state_dir), "resumed_jobs": resumed,
            "store": cfg.settings.store_uri, "max_jobs": cfg.limits.max_jobs,
            "max_bytes_in_flight": cfg.limits.max_bytes_in_flight,
            "auth": "bearer" if cfg.token else "none (loopback, --insecure-no-token)",
            "allowed_sources": list(cfg.sources.rules), "job_retention_s": cfg.job_retention,
        })
        if not cfg.sources.rules:
            log.warning(f"no source is allowed, so every submission is refused; pass "
                        f"{ALLOW_FLAG}, e.g. --allow-source hf://Qwen/")

    def _real_mirror(self) -> MirrorFn:
        s = self.config.settings
        store = store_for(s)
        http = HttpClient()
        self._closers += [store.close, http.close]
        secrets = s.secrets()
        options = self.config.mirror_options or MirrorOptions.from_settings(s)

        async def mirror(entry: WeightsEntry, on_plan: Callable[[MirrorPlan], None],
                         on_progress: Callable[[int], None]) -> MirrorResult:
            return await run_mirror(entry, store=store, secrets=secrets, options=options,
                                    on_plan=on_plan, on_progress=on_progress, http=http)

        return mirror

    def health(self) -> dict[str, Any]:
        """The ``/healthz`` body: status and jobs by state."""
        return {
            "status": "draining" if self.draining else "ok",
            "jobs": self.jobs.counts() if self.jobs else {},
        }

    async def drain(self, force: asyncio.Event | None = None) -> bool:
        """Steps 1-2 of the module docstring; returns True when no job was left running."""
        self.draining = True
        if self.jobs is None:
            return True
        running = len(self.jobs.running)
        log.info("draining", extra={"jobs_running": running,
                                    "deadline_s": self.config.drain_timeout})
        done = await self.jobs.drain(self.config.drain_timeout, force)
        if not done:
            log.warning("drain deadline reached; running jobs stay 'running' in the state "
                        "dir and resume at the next start",
                        extra={"jobs_running": len(self.jobs.running)})
        return done

    async def stop(self) -> None:
        """Cancel what still runs, stop listening, close everything (idempotent)."""
        self.draining = True
        if self.jobs is not None:
            await self.jobs.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await close_all(self._closers, log)


async def serve(config: MirrorServiceConfig) -> int:
    """Run a mirror service until SIGTERM/SIGINT, drain it, stop it; returns 0."""
    return await serve_until_signalled(MirrorService(config), "mirror service")


def run(config: MirrorServiceConfig) -> int:
    """The ``bdn mirror-server`` process: serve until a signal (set up JSON logging first)."""
    # The ``*_created`` series double every counter's lines and nothing here reads them.
    disable_created_metrics()
    return asyncio.run(serve(config))
