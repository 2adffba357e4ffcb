"""Mirror jobs: identity from config, persistence in a state dir, coalescing, a runner with limits.

A job mirrors every entry of one submitted ``weights:`` list. Its id is
derived from the entries' config hashes and mount locations, sorted
(:func:`job_id`), so re-submitting a config names the same job:

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

Persistence (:class:`JobStore`): one JSON file per job in ``<state-dir>/jobs``,
rewritten atomically (temp file, fsync, rename) at each state change and after
each finished entry. Entries are stored as Truss writes them, so only secret
NAMES are written. At start, queued and running jobs are queued again
(:meth:`JobManager.load`); running ones first. The mirror is idempotent and
resumable, so re-running an interrupted entry transfers only the blobs the
store does not hold yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fcntl
import hashlib
import heapq
import itertools
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bdn.config.validate import reject_unknown_keys, type_name
from bdn.config.weights import WeightsEntry, parse_weights
from bdn.daemon.jsonlog import bind_log_context
from bdn.errors import BdnError, ConfigError, StoreError
from bdn.mirror.metrics import MirrorMetrics
from bdn.mirror.run import MirrorPlan, MirrorResult

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "succeeded", "failed"]
Outcome = Literal["new", "coalesced", "succeeded", "retried", "forced"]
STATES: tuple[JobState, ...] = ("queued", "running", "succeeded", "failed")

MirrorFn = Callable[
    [WeightsEntry, Callable[[MirrorPlan], None], Callable[[int], None]], Awaitable[MirrorResult]
]
"""Mirror one entry: ``(entry, on_plan, on_progress) -> result``; run_mirror with the
service's store, secrets and options bound (a fake in tests)."""

RECORD_VERSION = 1


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


def job_id(entries: Sequence[WeightsEntry]) -> str:
    """The id of the job mirroring ``entries``: ``mj-`` + 32 hex of a SHA-256 over the
    sorted ``config_hash mount_location`` pairs (entry order does not matter).

    The mount location is part of the id because a job answers with a manifest
    per mount location; two lists that differ only there are two jobs, but the
    second moves no bytes (the store already holds every blob).
    """
    lines = sorted(f"{e.config_hash()} {e.mount_location or ''}" for e in entries)
    return "mj-" + hashlib.sha256("\n".join(lines).encode()).hexdigest()[:32]


def parse_submission(body: object) -> tuple[WeightsEntry, ...]:
    """Validate a ``POST /v1/mirrors`` body, ``{"weights": [<Truss entries>]}``.

    Raises:
        ConfigError: one line naming the field (``weights[0].source``) and the fix.
    """
    if not isinstance(body, Mapping):
        raise ConfigError(
            f'must be a JSON object {{"weights": [...]}}, got {type_name(body)}', field="request"
        )
    reject_unknown_keys(body, ("weights",), "request")
    weights = body.get("weights")
    if weights is None:
        raise ConfigError("is missing; send the weights: list of your Truss config",
                          field="weights")
    if isinstance(weights, list) and not weights:
        raise ConfigError("is empty; list at least one entry with source and mount_location",
                          field="weights")
    return parse_weights(weights)


@dataclass(frozen=True, slots=True)
class EntryResult:
    """What the mirror of one entry of a job produced."""

    mount_location: str
    manifest_id: str
    files: int
    total_bytes: int
    bytes_planned: int
    bytes_transferred: int
    bytes_stored: int

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


@dataclass(slots=True)
class Job:
    """One mirror job. Persisted fields are listed in :meth:`to_record`; the rest
    live in memory only.

    ``bytes_total`` counts the planned transfer bytes of entries planned so far
    (it grows as each entry's source is listed) and ``bytes_done`` the bytes
    read for them; both restart from the finished entries when a job starts again.
    """

    id: str
    entries: tuple[WeightsEntry, ...]
    seq: int
    state: JobState = "queued"
    results: list[EntryResult | None] = field(default_factory=list)
    error: str | None = None
    submitted_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    mirrors: int = 0
    # In memory only.
    in_flight: int = 0
    estimate: int | None = None
    resumed: bool = False
    current_done: int = 0
    started_mono: float | None = None
    task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        if not self.results:
            self.results = [None] * len(self.entries)

    @property
    def bytes_total(self) -> int:
        return sum(r.bytes_planned for r in self.results if r) + self.in_flight

    @property
    def bytes_done(self) -> int:
        return sum(r.bytes_planned for r in self.results if r) + self.current_done

    def to_public(self) -> dict[str, Any]:
        """The body of ``GET /v1/mirrors/{id}``."""
        return {
            "id": self.id,
            "state": self.state,
            "manifests": [{"mount_location": r.mount_location, "manifest_id": r.manifest_id}
                          for r in self.results if r],
            "bytes_total": self.bytes_total,
            "bytes_done": self.bytes_done,
            "error": self.error,
            "entries": len(self.entries),
            "attempts": self.attempts,
            "mirrors": self.mirrors,
            "submitted_at": _iso(self.submitted_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
        }

    def to_record(self) -> dict[str, Any]:
        """The persisted form: entries as Truss writes them (secret names only)."""
        return {
            "version": RECORD_VERSION,
            "id": self.id,
            "seq": self.seq,
            "state": self.state,
            "entries": [e.to_dict() for e in self.entries],
            "results": [r.to_dict() if r else None for r in self.results],
            "error": self.error,
            "submitted_at": self.submitted_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "attempts": self.attempts,
            "mirrors": self.mirrors,
        }

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> Job:
        """Rebuild a job from :meth:`to_record`'s output.

        Raises:
            ValueError: (ConfigError included) the record is malformed or its id
                does not match its entries.
        """
        if data.get("version") != RECORD_VERSION or data.get("state") not in STATES:
            raise ValueError(f"unknown record version or state: {data.get('version')!r}, "
                             f"{data.get('state')!r}")
        entries = parse_weights(data["entries"])
        results = [EntryResult(**r) if r else None for r in data["results"]]
        if data["id"] != job_id(entries) or len(results) != len(entries):
            raise ValueError("the record's id or results do not match its entries")
        return cls(
            id=data["id"], entries=entries, seq=int(data["seq"]), state=data["state"],
            results=results, error=data.get("error"), submitted_at=data["submitted_at"],
            started_at=data.get("started_at"), finished_at=data.get("finished_at"),
            attempts=int(data.get("attempts", 0)), mirrors=int(data.get("mirrors", 0)),
        )


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class JobStore:
    """One JSON file per job under ``directory/jobs``, each replaced atomically.

    A file is written under a unique temporary name, fsynced, and renamed over
    the old one, so a reader (or a restart after SIGKILL) sees the previous
    state or the new one, never half of either. Writes run in a worker thread;
    writes of one job are serialized in call order.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory / "jobs"
        self._locks: dict[str, asyncio.Lock] = {}
        self._names = itertools.count()
        self._lock_fd: int | None = None

    def open(self) -> None:
        """Create the directory, take it for this process, and sweep temp files a
        killed process left.

        Raises:
            ConfigError: the state directory cannot be created, or another live
                process holds it.
        """
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.dir.parent / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as err:
            raise ConfigError(f"cannot create {self.dir}: {err.strerror or err}; pass a "
                              "writable --state-dir", field="--state-dir") from err
        # Two services on one state dir would run every job twice and overwrite each
        # other's records. flock is released by the kernel when the holder dies, so a
        # SIGKILLed server never blocks its successor.
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ConfigError(f"another mirror-server is using {self.dir.parent}; stop it "
                              "or pass another --state-dir", field="--state-dir") from None
        self._lock_fd = fd
        for tmp in self.dir.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    def close(self) -> None:
        """Release the state directory (idempotent)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def load(self) -> list[Job]:
        """Every readable job; a corrupt record is renamed ``*.corrupt`` and skipped."""
        jobs = []
        for path in sorted(self.dir.glob("mj-*.json")):
            try:
                jobs.append(Job.from_record(json.loads(path.read_bytes())))
            except (OSError, ValueError, KeyError, TypeError) as err:
                log.warning("ignoring unreadable job record %s: %s", path.name, err)
                with contextlib.suppress(OSError):
                    path.rename(path.with_suffix(".corrupt"))
        return jobs

    async def save(self, job: Job) -> None:
        """Persist ``job`` as it is now.

        Raises:
            StoreError: the state directory cannot be written.
        """
        data = json.dumps(job.to_record(), indent=1, sort_keys=True).encode()
        lock = self._locks.setdefault(job.id, asyncio.Lock())
        async with lock:
            try:
                await asyncio.to_thread(self._write, job.id, data)
            except OSError as err:
                raise StoreError(f"cannot write job state to {self.dir}: "
                                 f"{err.strerror or err}; check the --state-dir volume") from err

    def _write(self, name: str, data: bytes) -> None:
        tmp = self.dir / f".{name}.{os.getpid()}.{next(self._names)}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.dir / f"{name}.json")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        # The rename itself is durable only once the directory is synced; without
        # this a power loss could forget a job that was already acknowledged.
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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
    """

    def __init__(self, store: JobStore, mirror: MirrorFn, *,
                 limits: JobLimits = DEFAULT_JOB_LIMITS,
                 metrics: MirrorMetrics | None = None) -> None:
        self._store = store
        self._mirror = mirror
        self.limits = limits
        self.metrics = metrics or MirrorMetrics()
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
        resumed = 0
        for job in jobs:
            self._jobs[job.id] = job
            if job.state in ("queued", "running"):
                job.resumed = job.state == "running"
                job.state = "queued"
                self._enqueue(job)
                resumed += 1
        self._seq = itertools.count(max((j.seq for j in jobs), default=-1) + 1)
        return resumed

    def start(self) -> None:
        """Start running queued jobs."""
        self._started = True
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
        tasks = [j.task for j in self._running.values() if j.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
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
        outcome: Outcome
        if job is not None and job.state in ("queued", "running"):
            outcome = "coalesced"
        elif job is not None and job.state == "succeeded" and not force:
            outcome = "succeeded"
        elif job is not None:
            outcome = "forced" if job.state == "succeeded" else "retried"
            if outcome == "forced":
                job.results = [None] * len(job.entries)
            job.state, job.error, job.seq = "queued", None, next(self._seq)
            job.finished_at = job.estimate = job.started_mono = None
            job.resumed = False
        else:
            outcome = "new"
            job = Job(id=jid, entries=tuple(entries), seq=next(self._seq))
            self._jobs[jid] = job
        self.metrics.submissions.labels(outcome).inc()
        log.info("submission %s", outcome, extra={"job_id": jid, "entries": len(entries)})
        if outcome in ("coalesced", "succeeded"):
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
        job.started_at = time.time()
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
            job.finished_at = time.time()

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
