"""Pulls the agent runs for pods: coalescing, progress, drain.

A pod asks for a tree with ``POST /v1/pulls``; the agent runs the pull as a
task in its own event loop through :func:`bdn.pull.resolve_manifest` (never
mirroring: in agent mode the mirror service or ``bdn mirror`` does that) and
:func:`bdn.pull.pull_manifest` with the peer tier. Identical concurrent
requests (same manifest or weights config, same mount location) share one
pull; a request for a mount another running pull is filling is refused.
Requests are validated, and progress written, by :mod:`bdn.agent.protocol`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bdn.agent.metrics import AgentMetrics
from bdn.agent.protocol import PullRequest, PullStatus, State, error_type_of
from bdn.agent.trees import check_mount
from bdn.backends.base import BlobStore
from bdn.cache import NodeCache
from bdn.config.secrets import SecretResolver
from bdn.daemon.lifecycle import cancel_and_wait
from bdn.errors import BdnError, MountConflict, TransferError
from bdn.peer.tiered import TierConfig
from bdn.pull import PullOptions, PullResult, pull_manifest, resolve_manifest
from bdn.transfer.ratelimit import RateCap

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PullJob:
    """One pull and its progress; :meth:`status` is what ``GET /v1/pulls/{id}`` shows.

    ``bytes_total`` is what the pull has to fetch (known once the node cache
    was consulted; 0 before) and ``bytes_done`` how much of it has arrived.
    The per-tier counts are filled in when the pull ends.
    """

    id: str
    request: PullRequest
    state: State = "running"
    manifest_id: str | None = None
    bytes_total: int = 0
    bytes_done: int = 0
    result: PullResult | None = None
    error: str | None = None
    error_type: str | None = None
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0
    task: asyncio.Task[None] | None = None
    options: PullOptions | None = None

    @property
    def rate(self) -> RateCap | None:
        """The background fill rate this pull runs under (None: unlimited)."""
        return self.options.transfer.rate_limit if self.options else None

    def lift_rate(self) -> bool:
        """Let this pull run at full speed from now on; True when it was limited."""
        rate = self.rate
        if rate is None or rate.lifted:
            return False
        rate.lift()
        return True

    def status(self) -> PullStatus:
        """The pull as the pod API shows it."""
        r = self.result
        seconds = self.seconds if self.state != "running" else time.monotonic() - self.started
        return PullStatus(
            id=self.id,
            state=self.state,
            manifest_id=self.manifest_id,
            mount_location=self.request.mount,
            bytes_total=self.bytes_total,
            bytes_done=self.bytes_done,
            bytes_from_node_cache=r.bytes_from_node_cache if r else 0,
            bytes_from_peers=r.bytes_from_peers if r else 0,
            bytes_from_origin=r.bytes_from_origin if r else 0,
            bytes_proven=r.bytes_proven if r else 0,
            files=r.files if r else None,
            tree_bytes=r.total_bytes if r else None,
            materialized=r.materialized if r else None,
            seconds=round(seconds, 3),
            error=self.error,
            error_type=self.error_type,
        )


@dataclass(frozen=True, slots=True)
class PullContext:
    """What every pull of the agent shares (owned and closed by the caller).

    ``trees_roots`` are the directories a request's mount location must lie
    under, ``protected`` the ones it must stay out of (the node cache, a
    local store); see :mod:`bdn.agent.trees`. No roots: every request is refused.
    """

    store: BlobStore
    cache: NodeCache
    secrets: SecretResolver
    options: PullOptions
    tiers: TierConfig
    background_fill_rate: float | None = None
    trees_roots: tuple[Path, ...] = ()
    protected: tuple[Path, ...] = ()

    def options_for(self, request: PullRequest) -> PullOptions:
        """The pull options of one request: a background fill is rate-limited, by a
        rate of its own that a foreground request joining it lifts. A strict request
        proves every blob it uses, cache hits included."""
        base = dataclasses.replace(self.options, strict=True) if request.strict else self.options
        if not (request.background and self.background_fill_rate):
            return base
        rate = RateCap(self.background_fill_rate)
        transfer = dataclasses.replace(base.transfer, rate_limit=rate)
        return dataclasses.replace(base, transfer=transfer)


class PullRegistry:
    """Running and recently finished pulls. Use from the event loop thread only.

    Args:
        context: store, cache and tiers the pulls use.
        metrics: where finished pulls are counted.
        keep: finished pulls remembered for ``GET``; older ones are forgotten.
        on_finish: called after each pull ends (e.g. to refresh cache metrics).
    """

    def __init__(
        self,
        context: PullContext,
        metrics: AgentMetrics,
        *,
        keep: int = 1000,
        on_finish: Callable[[PullJob], None] | None = None,
    ) -> None:
        self._ctx = context
        self._metrics = metrics
        self._keep = keep
        self._on_finish = on_finish
        self._jobs: OrderedDict[str, PullJob] = OrderedDict()
        self._running: dict[tuple[str, str], PullJob] = {}

    def get(self, pull_id: str) -> PullJob | None:
        return self._jobs.get(pull_id)

    @property
    def running(self) -> list[PullJob]:
        return list(self._running.values())

    def submit(self, request: PullRequest) -> PullJob:
        """Start a pull, or join the identical one already running.

        Raises:
            ConfigError: the mount location is not one the agent may write
                (outside its trees roots, through a symlink, on its cache).
            MountConflict: another running pull is filling the same mount
                location with different content, or (for a strict request) with
                the same content but without strict.
        """
        check_mount(request.mount, self._ctx.trees_roots, self._ctx.protected)
        same = self._running.get(request.key)
        if same is not None and request.strict and not same.request.strict:
            raise MountConflict(
                f"{request.mount} is being filled by pull {same.id}, which does not prove "
                "what it uses; wait for it to finish, then pull again with strict",
                path=request.mount,
            )
        if same is not None:
            log.info("request joins a running pull", extra={"pull_id": same.id})
            if not request.background and same.lift_rate():
                # A pod now waits on this fill: it must not crawl at the fill rate.
                self._metrics.pulls_rate_lifted.inc()
                log.info("a foreground request lifted the background rate limit",
                         extra={"pull_id": same.id})
            return same
        for job in self._running.values():
            if job.request.mount == request.mount:
                raise MountConflict(
                    f"{request.mount} is being filled by pull {job.id} of other content; "
                    "wait for it, or use another mount_location",
                    path=request.mount,
                )
        job = PullJob(id="pull-" + secrets.token_hex(8), request=request,
                      options=self._ctx.options_for(request))
        self._jobs[job.id] = job
        self._running[request.key] = job
        self._metrics.pulls_running.inc()
        job.task = asyncio.create_task(self._run(job), name=job.id)
        job.task.add_done_callback(lambda _: self._ended(job))
        return job

    def _ended(self, job: PullJob) -> None:
        """The pull's task is done. A task cancelled before its first step never ran
        :meth:`_run`, whose ``finally`` books the end: do it here, or the pull would
        stay ``running`` for good and hold its mount location."""
        if self._running.get(job.request.key) is not job:
            return  # :meth:`_run` finished it.
        _shut_down(job)
        job.seconds = time.monotonic() - job.started
        log.warning("pull cancelled by shutdown before it started", extra={"pull_id": job.id})
        self._finish(job, "failed")

    async def wait(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds for the running pulls; True when none is left."""
        tasks = [j.task for j in self._running.values() if j.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        return not self._running

    async def cancel_all(self) -> None:
        """Cancel the running pulls; each ends ``failed`` (their partials stay resumable)."""
        await cancel_and_wait(j.task for j in self._running.values() if j.task is not None)

    async def _run(self, job: PullJob) -> None:
        extra = {"pull_id": job.id, "mount": job.request.mount}
        target = job.request.target
        log.info(
            "pull started",
            extra={**extra, "target": target if isinstance(target, str) else target.source},
        )
        outcome = "failed"
        try:
            manifest = await resolve_manifest(target, self._ctx.store)
            job.manifest_id = manifest.id

            def plan(nbytes: int) -> None:
                job.bytes_total = nbytes

            def progress(delta: int) -> None:
                job.bytes_done += delta

            job.result = await pull_manifest(
                manifest,
                Path(job.request.mount),
                store=self._ctx.store,
                cache=self._ctx.cache,
                options=job.options or self._ctx.options_for(job.request),
                on_progress=progress,
                on_plan=plan,
                tiers=self._ctx.tiers,
            )
            job.state = outcome = "succeeded"
        except asyncio.CancelledError:
            _shut_down(job)
            log.warning("pull cancelled by shutdown", extra=extra)
            raise
        except BdnError as err:
            job.state, job.error, job.error_type = "failed", str(err), error_type_of(err)
            log.warning("pull failed: %s", err, extra=extra)
        except Exception as err:
            job.state, job.error_type = "failed", BdnError.__name__
            job.error = f"internal error in the agent: {type(err).__name__}: {err}"
            log.exception("pull failed unexpectedly", extra=extra)
        finally:
            job.seconds = time.monotonic() - job.started
            self._finish(job, outcome)

    def _finish(self, job: PullJob, outcome: str) -> None:
        self._running.pop(job.request.key, None)
        self._metrics.pulls_running.dec()
        self._metrics.observe_pull(outcome, job.seconds, job.result)
        r = job.result
        log.info(
            "pull %s",
            outcome,
            extra={
                "pull_id": job.id,
                "manifest_id": job.manifest_id,
                "seconds": round(job.seconds, 3),
                "bytes_from_node_cache": r.bytes_from_node_cache if r else 0,
                "bytes_from_peers": r.bytes_from_peers if r else 0,
                "bytes_from_origin": r.bytes_from_origin if r else 0,
            },
        )
        finished = [i for i, j in self._jobs.items() if j.state != "running"]
        for old in finished[: max(len(finished) - self._keep, 0)]:
            del self._jobs[old]
        if self._on_finish is not None:
            self._on_finish(job)


def _shut_down(job: PullJob) -> None:
    """Mark ``job`` failed because the agent cancelled it (a drain or a stop)."""
    job.state, job.error_type = "failed", TransferError.__name__
    job.error = "the agent shut down before the pull finished; pull again"
