"""The mirror service's scheduler: coalescing submissions, running jobs within limits.

A job's id is derived from its entries (:func:`~bdn.mirror.service.jobs.job_id`),
so re-submitting a config names the same job:

- identical to a queued or running job: that job is returned (coalesced), and
  the entries are mirrored once however many submissions arrive at once
  (:meth:`JobManager.submit` decides synchronously on the event loop, so
  concurrent submissions cannot race);
- identical to a succeeded job: returned as it is, nothing re-mirrored, unless
  ``force`` queues it again;
- identical to a failed job: queued again (entries that had finished are kept).

Limits (:class:`JobLimits`): at most ``max_jobs`` jobs run at once, and a job
waits while the planned bytes of running entries would exceed
``max_bytes_in_flight``. A job's size is known only once its source is listed:
the plan reaches :meth:`JobManager._admit` (the ``on_plan`` hook of
:func:`~bdn.mirror.run.run_mirror`) before any byte moves; if it does not fit
next to the running entries, the hook raises, the job goes back to the head of
the queue with its size as an estimate, and starts again when the bytes fit. A
job larger than the limit on its own runs when no other entry is moving bytes.
Queued jobs start in submission order; the head of the queue is never
overtaken, so a large job cannot starve.

Persistence (:class:`~bdn.mirror.service.state.JobStore`): each job's record
is rewritten at each state change and after each finished entry. At start,
queued and running jobs are queued again (:meth:`JobManager.load`); running
ones first. The mirror is idempotent and
resumable, so re-running an interrupted entry transfers only the blobs the
store does not hold yet. A loaded job whose source the current allowlist
refuses (``refuse``, the service's :class:`~bdn.mirror.service.sources.SourcePolicy`)
is failed, not run: tightening ``--allow-source`` also stops what was queued.

Retention: a succeeded or failed job is forgotten (record deleted) once it
finished more than ``retention`` seconds ago, at :meth:`JobManager.load` and
every ``prune_interval`` seconds after :meth:`JobManager.start`. Queued and
running jobs are never pruned; within the retention, identical submissions
still coalesce with the finished job, after it they queue a new one (which
moves no bytes: the store holds them).
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from bdn.config.weights import WeightsEntry
from bdn.daemon.jsonlog import bind_log_context
from bdn.daemon.lifecycle import cancel_and_wait
from bdn.errors import BdnError, ConfigError, StoreError
from bdn.mirror.run import MirrorPlan, MirrorResult
from bdn.mirror.service.jobs import STATES, EntryResult, Job, JobState, job_id
from bdn.mirror.service.metrics import MirrorMetrics
from bdn.mirror.service.state import JobStore

__all__ = ["DEFAULT_JOB_LIMITS", "DEFAULT_JOB_RETENTION", "Draining", "JobLimits", "JobManager",
           "MirrorFn", "Outcome", "Refuse", "Submission"]

log = logging.getLogger(__name__)

Outcome = Literal["new", "coalesced", "succeeded", "retried", "forced"]

_OUTCOMES: Mapping[tuple[JobState, bool], Outcome] = {
    # (state of the identical job, force) -> what a submission does (module docstring).
    ("queued", False): "coalesced",
    ("queued", True): "coalesced",
    ("running", False): "coalesced",
    ("running", True): "coalesced",
    ("succeeded", False): "succeeded",
    ("succeeded", True): "forced",
    ("failed", False): "retried",
    ("failed", True): "retried",
}
_QUEUES: frozenset[Outcome] = frozenset({"new", "retried", "forced"})
"""The outcomes that queue a run (the others answer with the identical job as it is)."""

MirrorFn = Callable[
    [WeightsEntry, Callable[[MirrorPlan], None], Callable[[int], None]], Awaitable[MirrorResult]
]
"""Mirror one entry: ``(entry, on_plan, on_progress) -> result``; run_mirror with the
service's store, secrets and options bound (a fake in tests)."""


@dataclass(frozen=True, slots=True)
class JobLimits:
    """How much the job runner does at once.

    Attributes:
        max_jobs: jobs running at once.
        max_bytes_in_flight: planned transfer bytes of running entries; a job
            whose plan would exceed it waits (one that exceeds it alone runs
            when nothing else moves bytes).
    """

    max_jobs: int = 2
    max_bytes_in_flight: int = 64 * 2**30

    def __post_init__(self) -> None:
        if self.max_jobs < 1:
            raise ConfigError("must be at least 1", field="--max-jobs")
        if self.max_bytes_in_flight < 1:
            raise ConfigError("must be at least 1 byte", field="--max-bytes-in-flight")


DEFAULT_JOB_LIMITS = JobLimits()

DEFAULT_JOB_RETENTION = 7 * 24 * 3600.0
"""Seconds a finished job's record is kept (``--job-retention``): a week."""

Refuse = Callable[[Sequence[WeightsEntry]], None]
"""Raises (a :class:`BdnError`) when entries may not be mirrored; the allowlist's check."""


@dataclass(frozen=True, slots=True)
class Submission:
    """What :meth:`JobManager.submit` did: the job, and whether it was new."""

    job: Job
    outcome: Outcome


class Draining(BdnError):
    """The service is shutting down and takes no new jobs."""


class _Deferred(Exception):
    """Raised by the on_plan hook: the entry's bytes do not fit beside the running ones."""

    def __init__(self, nbytes: int) -> None:
        super().__init__(nbytes)
        self.nbytes = nbytes


class JobManager:
    """Every job of one service: submission, scheduling, running, persistence.

    Use from one event loop. Call :meth:`load` once before :meth:`start`;
    :meth:`drain` then :meth:`close` to stop.

    Args:
        store: where job records live.
        mirror: mirrors one entry (see :data:`MirrorFn`).
        limits: jobs and bytes at once.
        metrics: where events are counted.
        retention: seconds a finished job is kept (module docstring).
        prune_interval: seconds between prunes (default: a tenth of ``retention``,
            at most an hour).
        refuse: checks a loaded unfinished job's entries before it is queued again.
        clock: the wall clock of ``finished_at`` (tests move it).
    """

    def __init__(self, store: JobStore, mirror: MirrorFn, *,
                 limits: JobLimits = DEFAULT_JOB_LIMITS,
                 metrics: MirrorMetrics | None = None,
                 retention: float = DEFAULT_JOB_RETENTION,
                 prune_interval: float | None = None,
                 refuse: Refuse | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if retention <= 0:
            raise ConfigError("must be a positive duration, e.g. 7d", field="--job-retention")
        self._store = store
        self._mirror = mirror
        self.limits = limits
        self.metrics = metrics or MirrorMetrics()
        self.retention = retention
        self.prune_interval = prune_interval or min(retention / 10, 3600.0)
        self._refuse = refuse
        self._clock = clock
        self._pruner: asyncio.Task[None] | None = None
        self._jobs: dict[str, Job] = {}
        self._queue: list[tuple[int, int, str]] = []  # (0 resumed | 1, seq, id)
        self._running: dict[str, Job] = {}
        self._seq = itertools.count()
        self._started = False
        self.draining = False
        self.metrics.watch_jobs(self.gauges)

    # -- queries ---------------------------------------------------------------------

    def get(self, jid: str) -> Job | None:
        return self._jobs.get(jid)

    @property
    def running(self) -> list[Job]:
        return list(self._running.values())

    @property
    def queued(self) -> list[Job]:
        """Queued jobs in the order they will start."""
        return [self._jobs[jid] for _, _, jid in sorted(self._queue)]

    def counts(self) -> dict[str, int]:
        """Jobs by state."""
        out: dict[str, int] = dict.fromkeys(STATES, 0)
        for job in self._jobs.values():
            out[job.state] += 1
        return out

    def bytes_in_flight(self) -> int:
        return sum(j.in_flight for j in self._running.values())

    def gauges(self) -> tuple[dict[str, int], int]:
        return self.counts(), self.bytes_in_flight()

    # -- lifecycle -------------------------------------------------------------------

    def load(self) -> int:
        """Read the state dir; queue unfinished jobs again (running ones first).
        Returns how many jobs will resume."""
        self._store.open()
        jobs = self._store.load()
        self._seq = itertools.count(max((j.seq for j in jobs), default=-1) + 1)
        resumed = 0
        for job in jobs:
            if self._expired(job):
                self._store.delete_now(job.id)
                self.metrics.pruned.inc()
                continue
            self._jobs[job.id] = job
            if job.state in ("queued", "running") and self._refused(job):
                continue
            if job.state in ("queued", "running"):
                job.resumed = job.state == "running"
                job.state = "queued"
                self._enqueue(job)
                resumed += 1
        return resumed

    def _refused(self, job: Job) -> bool:
        """Fail a loaded unfinished job the allowlist refuses now (its record says why)."""
        try:
            if self._refuse is not None:
                self._refuse(job.entries)
        except BdnError as err:
            job.state, job.error, job.finished_at = "failed", str(err), self._clock()
            log.warning("not resuming job: %s", err, extra={"job_id": job.id})
            self._store.save_now(job)
            return True
        return False

    def _expired(self, job: Job) -> bool:
        """Finished more than ``retention`` seconds ago (running and queued never are)."""
        if job.state not in ("succeeded", "failed") or job.id in self._running:
            return False
        ended = job.finished_at if job.finished_at is not None else job.submitted_at
        return ended < self._clock() - self.retention

    async def prune(self) -> int:
        """Forget finished jobs past the retention, records included; returns how many."""
        old = [job for job in self._jobs.values() if self._expired(job)]
        for job in old:
            del self._jobs[job.id]
        for job in old:
            # An identical submission since then made a new job; its own save wins.
            if job.id not in self._jobs:
                await self._store.delete(job.id)
        if old:
            self.metrics.pruned.inc(len(old))
            log.info("pruned finished jobs", extra={"jobs": len(old),
                                                    "retention_s": self.retention})
        return len(old)

    async def _prune_forever(self) -> None:
        """Prune every ``prune_interval`` seconds until cancelled; a failed prune is logged."""
        while True:
            await asyncio.sleep(self.prune_interval)
            try:
                await self.prune()
            except StoreError as err:
                log.error("could not prune job records: %s", err)

    def start(self) -> None:
        """Start running queued jobs."""
        self._started = True
        self._pruner = asyncio.create_task(self._prune_forever(), name="prune-jobs")
        self._pump()

    async def drain(self, timeout: float, force: asyncio.Event | None = None) -> bool:
        """Take no new jobs and start no queued ones; wait up to ``timeout`` seconds (or
        until ``force`` is set) for running jobs. Returns True when none is left running."""
        self.draining = True
        self.metrics.draining.set(1)
        tasks = {j.task for j in self._running.values() if j.task is not None}
        if tasks:
            waiter = asyncio.ensure_future(asyncio.wait(tasks, timeout=timeout))
            stopper = asyncio.ensure_future((force or asyncio.Event()).wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()
        return not self._running

    async def close(self) -> None:
        """Cancel running jobs (their records stay ``running``, so the next start
        resumes them) and release the state dir (idempotent)."""
        self.draining = True
        await cancel_and_wait([j.task for j in self._running.values() if j.task is not None]
                              + ([self._pruner] if self._pruner else []))
        self._store.close()

    # -- submission ------------------------------------------------------------------

    async def submit(self, entries: Sequence[WeightsEntry], *, force: bool = False) -> Submission:
        """Queue a job for ``entries``, or return the identical one (module docstring).

        ``force`` re-mirrors a succeeded job; it does not start a second run of a
        queued or running one.

        Raises:
            Draining: the service is shutting down.
            StoreError: the job could not be persisted (it is then marked failed).
        """
        if self.draining:
            raise Draining("the mirror service is shutting down; submit again to the "
                           "restarted service")
        jid = job_id(entries)
        job = self._jobs.get(jid)
        outcome: Outcome = "new" if job is None else _OUTCOMES[job.state, force]
        if job is None:
            job = self._jobs[jid] = Job(id=jid, entries=tuple(entries), seq=next(self._seq),
                                        submitted_at=self._clock())
        elif outcome in _QUEUES:
            self._requeue(job, forget_results=outcome == "forced")
        self.metrics.submissions.labels(outcome).inc()
        log.info("submission %s", outcome, extra={"job_id": jid, "entries": len(entries)})
        if outcome not in _QUEUES:
            return Submission(job, outcome)
        try:
            await self._store.save(job)
        except StoreError as err:
            job.state, job.error = "failed", str(err)
            raise
        self._enqueue(job)
        # On the next turn of the loop: the answer to this submission says
        # "queued" even when a slot is free and the job starts right away.
        asyncio.get_running_loop().call_soon(self._pump)
        return Submission(job, outcome)

    def _requeue(self, job: Job, *, forget_results: bool) -> None:
        """Make a finished job queued again; a forced one re-mirrors every entry."""
        if forget_results:
            job.results = [None] * len(job.entries)
        job.state, job.error, job.seq = "queued", None, next(self._seq)
        job.finished_at = job.estimate = job.started_mono = None
        job.resumed = False

    # -- scheduling ------------------------------------------------------------------

    def _enqueue(self, job: Job) -> None:
        heapq.heappush(self._queue, (0 if job.resumed else 1, job.seq, job.id))

    def _pump(self) -> None:
        """Start queued jobs, in order, while the limits allow."""
        while (self._queue and self._started and not self.draining
               and len(self._running) < self.limits.max_jobs):
            job = self._jobs[self._queue[0][2]]
            moving = self.bytes_in_flight()
            if job.estimate and moving and moving + job.estimate > self.limits.max_bytes_in_flight:
                return  # The head waits for bytes; nothing overtakes it.
            heapq.heappop(self._queue)
            self._start(job)

    def _start(self, job: Job) -> None:
        job.state = "running"
        job.attempts += 1
        job.started_at = self._clock()
        if job.started_mono is None:
            job.started_mono = time.monotonic()
        self._running[job.id] = job
        # A fresh context: the job's logs carry its job_id, not the request_id of
        # whichever submission happened to start it.
        job.task = asyncio.create_task(self._run(job), name=job.id, context=contextvars.Context())

    def _admit(self, job: Job, plan: MirrorPlan) -> None:
        """The on_plan hook: take the entry's bytes in flight, or defer the job."""
        need = plan.bytes_to_transfer
        others = self.bytes_in_flight() - job.in_flight
        if need and others and others + need > self.limits.max_bytes_in_flight:
            raise _Deferred(need)
        job.in_flight, job.current_done = need, 0

    # -- running ---------------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        bind_log_context(job_id=job.id)
        try:
            await self._store.save(job)
            log.info("job started", extra={"attempt": job.attempts, "entries": len(job.entries),
                                           "resumed": job.resumed})
            for index, entry in enumerate(job.entries):
                if job.results[index] is None:
                    await self._mirror_entry(job, index, entry)
        except _Deferred as deferred:
            self.metrics.runs.labels("deferred").inc()
            job.estimate = deferred.nbytes
            log.info("job waits for bytes in flight",
                     extra={"planned_bytes": deferred.nbytes,
                            "bytes_in_flight": self.bytes_in_flight() - job.in_flight})
            self._end_attempt(job, "queued")
            self._enqueue(job)
        except asyncio.CancelledError:
            self.metrics.runs.labels("interrupted").inc()
            log.warning("job interrupted by shutdown; it resumes at the next start")
            self._running.pop(job.id, None)
            job.in_flight = job.current_done = 0
            raise
        except BdnError as err:
            self._fail(job, str(err))
        except Exception as err:
            log.exception("job failed unexpectedly")
            self._fail(job, f"internal error in the mirror service: {type(err).__name__}")
        else:
            self._end_attempt(job, "succeeded")
            log.info("job succeeded", extra={"seconds": self._observe(job, "succeeded"),
                                             "mirrors": job.mirrors})
        await self._persist_end(job)
        self._pump()

    async def _mirror_entry(self, job: Job, index: int, entry: WeightsEntry) -> None:
        job.in_flight = job.current_done = 0

        def on_plan(plan: MirrorPlan) -> None:
            self._admit(job, plan)

        def on_progress(nbytes: int) -> None:
            job.current_done += nbytes

        try:
            result = await self._mirror(entry, on_plan, on_progress)
        except _Deferred:
            raise
        except Exception:
            self.metrics.runs.labels("failed").inc()
            raise
        self.metrics.runs.labels("succeeded").inc()
        self.metrics.observe_result(result)
        job.mirrors += 1
        job.results[index] = EntryResult(
            mount_location=entry.mount_location or "", manifest_id=result.manifest_id,
            files=result.files, total_bytes=result.total_bytes, bytes_planned=job.in_flight,
            bytes_transferred=result.bytes_transferred, bytes_stored=result.bytes_stored,
        )
        job.in_flight = job.current_done = 0
        log.info("entry mirrored", extra={"mount_location": entry.mount_location,
                                          "manifest_id": result.manifest_id,
                                          "bytes_read": result.bytes_transferred})
        await self._store.save(job)
        self._pump()  # Its bytes are no longer in flight.

    def _end_attempt(self, job: Job, state: JobState) -> None:
        job.state = state
        job.in_flight = job.current_done = 0
        self._running.pop(job.id, None)
        if state in ("succeeded", "failed"):
            job.finished_at = self._clock()

    def _fail(self, job: Job, message: str) -> None:
        self._end_attempt(job, "failed")
        job.error = message
        log.warning("job failed: %s", message, extra={"seconds": self._observe(job, "failed")})

    def _observe(self, job: Job, outcome: str) -> float:
        seconds = time.monotonic() - (job.started_mono or time.monotonic())
        self.metrics.job_seconds.labels(outcome).observe(seconds)
        job.started_mono = None
        return round(seconds, 3)

    async def _persist_end(self, job: Job) -> None:
        try:
            await self._store.save(job)
        except StoreError as err:
            # The job's outcome stands in memory; after a restart it runs again,
            # which is harmless (mirrors are idempotent).
            log.error("could not persist the job's end: %s", err)
