"""The mirror service's job manager with a scripted mirror: ids, coalescing, limits, persistence."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bdn.config.weights import WeightsEntry, parse_weights
from bdn.errors import ConfigError, SourceError
from bdn.mirror.run import MirrorPlan, MirrorResult
from bdn.mirror.service.jobs import EntryResult, Job, job_id, parse_submission
from bdn.mirror.service.scheduler import JobLimits, JobManager
from bdn.mirror.service.state import JobStore
from tests.e2e.agents import parse_metrics


def weights(*names: str, mount_prefix: str = "/models/") -> tuple[WeightsEntry, ...]:
    return parse_weights([{"source": f"file:///src/{n}", "mount_location": mount_prefix + n}
                          for n in names])


@dataclass
class Script:
    """How the fake mirror behaves for one source."""

    plan_bytes: int = 10
    gate: asyncio.Event | None = None
    error: Exception | None = None


@dataclass
class FakeMirror:
    """A mirror that plans, waits at its source's gate, reports progress, returns a result."""

    scripts: dict[str, Script] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    admitted: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)

    def script(self, name: str, **kw: Any) -> Script:
        self.scripts[f"file:///src/{name}"] = s = Script(**kw)
        return s

    async def __call__(self, entry: WeightsEntry, on_plan: Callable[[MirrorPlan], None],
                       on_progress: Callable[[int], None]) -> MirrorResult:
        s = self.scripts.get(entry.source) or Script()
        self.calls.append(entry.source)
        await asyncio.sleep(0)  # Listing the source takes a moment.
        on_plan(MirrorPlan(files=1, total_bytes=s.plan_bytes, bytes_to_transfer=s.plan_bytes))
        self.admitted.append(entry.source)
        if s.gate is not None:
            await s.gate.wait()
        if s.error is not None:
            raise s.error
        on_progress(s.plan_bytes)
        self.completed.append(entry.source)
        digest = hashlib.sha256(entry.source.encode()).hexdigest()
        return MirrorResult(manifest_id=f"sha256:{digest}", files=1, total_bytes=s.plan_bytes,
                            bytes_transferred=s.plan_bytes, bytes_stored=s.plan_bytes)


def name(source: str) -> str:
    return source.rsplit("/", 1)[-1]


async def until(cond: Callable[[], bool], what: str = "condition") -> None:
    for _ in range(4000):
        if cond():
            return
        await asyncio.sleep(0.002)
    raise AssertionError(f"timed out waiting for {what}")


async def finished(job: Job) -> Job:
    """Wait until ``job`` has ended and its end is persisted."""
    await until(lambda: job.state in ("succeeded", "failed")
                and job.task is not None and job.task.done(), f"job {job.id} to finish")
    return job


async def submitted(m: JobManager, *names: str) -> Job:
    """The job of one submission of ``names``' weights."""
    return (await m.submit(weights(*names))).job


async def admitted(m: JobManager, name: str) -> Job:
    """The job of one submission of ``name``'s weights, once its planned bytes are in
    flight (set all at once, on admission)."""
    job = await submitted(m, name)
    await until(lambda: job.in_flight > 0, f"{name} admitted")
    return job


async def holding(manager_factory: Callable[..., JobManager], limits: JobLimits, gated: str,
                  **plan_bytes: int) -> tuple[JobManager, FakeMirror, asyncio.Event, Job]:
    """A manager under ``limits`` whose mirror plans ``plan_bytes`` per source, with
    ``gated``'s job admitted and held at the gate (returned with the job)."""
    fake, gate = FakeMirror(), asyncio.Event()
    for n, size in plan_bytes.items():
        fake.script(n, plan_bytes=size, gate=gate if n == gated else None)
    m = manager_factory(fake, limits)
    return m, fake, gate, await admitted(m, gated)


# -- identity and validation ------------------------------------------------------------


def test_same_config_gives_same_id_whatever_the_order_and_spelling() -> None:
    a = parse_weights([
        {"source": "hf://org/model", "mount_location": "/m/a",
         "allow_patterns": ["*.json", "*.st"]},
        {"source": "s3://bucket/p", "mount_location": "/m/b"},
    ])
    b = parse_weights([
        {"source": "s3://bucket/p/", "mount_location": "/m/b/"},
        {"source": "hf://org/model@main", "mount_location": "/m/a",
         "allow_patterns": ["*.st", "*.json"]},
    ])
    assert job_id(a) == job_id(b)
    assert job_id(a[:1]) != job_id(a)
    moved = parse_weights([{"source": "hf://org/model", "mount_location": "/elsewhere",
                            "allow_patterns": ["*.json", "*.st"]}])
    assert moved[0].config_hash() == a[0].config_hash() and job_id(moved) != job_id(a[:1])


@pytest.mark.parametrize(("body", "field"), [
    ([], "request"),
    ({}, "weights"),
    ({"weights": []}, "weights"),
    ({"weights": [], "weigths": 1}, "request"),
    ({"weights": [{"source": "bt://job/ckpt", "mount_location": "/m"}]}, "weights[0].source"),
    ({"weights": [{"source": "hf://a/b", "mount_location": "m"}]}, "weights[0].mount_location"),
])
def test_bad_submissions_name_the_field(body: object, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_submission(body)
    assert str(err.value).startswith(f"{field}: ") and "\n" not in str(err.value)


# -- coalescing -------------------------------------------------------------------------


async def test_concurrent_identical_submissions_coalesce_into_one_mirror(
    manager_factory: Callable[..., JobManager],
) -> None:
    fake = FakeMirror()
    gate = asyncio.Event()
    fake.script("a", gate=gate)
    m = manager_factory(fake)
    subs = await asyncio.gather(*(m.submit(weights("a")) for _ in range(10)))
    assert len({s.job.id for s in subs}) == 1
    assert sorted(s.outcome for s in subs) == ["coalesced"] * 9 + ["new"]
    gate.set()
    job = await finished(subs[0].job)
    assert job.state == "succeeded" and fake.calls == ["file:///src/a"]
    assert job.to_public()["manifests"] == [
        {"mount_location": "/models/a", "manifest_id": job.results[0].manifest_id}  # type: ignore[union-attr]
    ]
    samples = parse_metrics(m.metrics.render().decode())
    assert samples['bdn_mirror_submissions_total{outcome="coalesced"}'] == 9
    assert samples['bdn_mirror_runs_total{outcome="succeeded"}'] == 1


async def test_succeeded_job_is_returned_without_a_rerun_unless_forced(
    manager_factory: Callable[..., JobManager],
) -> None:
    fake = FakeMirror()
    m = manager_factory(fake)
    first = await finished(await submitted(m, "a", "b"))
    again = await m.submit(weights("b", "a"))
    assert again.outcome == "succeeded" and again.job is first and len(fake.calls) == 2
    forced = await m.submit(weights("a", "b"), force=True)
    assert forced.outcome == "forced" and forced.job.state == "queued"
    assert forced.job.to_public()["manifests"] == []
    await finished(forced.job)
    assert len(fake.calls) == 4 and forced.job.mirrors == 4


async def test_failed_job_is_retried_keeping_finished_entries(
    manager_factory: Callable[..., JobManager],
) -> None:
    fake = FakeMirror()
    fake.script("b", error=SourceError("bucket unreachable; check the endpoint"))
    m = manager_factory(fake)
    job = await finished(await submitted(m, "a", "b"))
    assert job.state == "failed" and job.error == "bucket unreachable; check the endpoint"
    assert [r is not None for r in job.results] == [True, False]
    fake.script("b")
    retry = await m.submit(weights("a", "b"))
    assert retry.outcome == "retried" and retry.job is job
    await finished(job)
    assert job.state == "succeeded" and job.error is None
    assert [name(c) for c in fake.calls] == ["a", "b", "b"]


# -- limits -----------------------------------------------------------------------------


async def test_at_most_max_jobs_run_and_queued_jobs_start_in_order(
    manager_factory: Callable[..., JobManager],
) -> None:
    fake = FakeMirror()
    gates = {n: asyncio.Event() for n in "abcde"}
    for n, g in gates.items():
        fake.script(n, gate=g)
    m = manager_factory(fake, JobLimits(max_jobs=2))
    jobs = [await submitted(m, n) for n in "abcde"]
    await until(lambda: len(fake.admitted) == 2)
    assert [j.state for j in jobs] == ["running", "running", "queued", "queued", "queued"]
    assert [j.id for j in m.queued] == [j.id for j in jobs[2:]]
    gates["b"].set()
    await finished(jobs[1])
    assert [j.state for j in jobs] == ["running", "succeeded", "running", "queued", "queued"]
    gates["c"].set()
    await finished(jobs[2])
    assert [j.state for j in jobs[3:]] == ["running", "queued"]
    for g in gates.values():
        g.set()
    for j in jobs:
        await finished(j)
    assert sorted(fake.completed) == sorted(f"file:///src/{n}" for n in "abcde")


async def test_a_job_waits_while_its_bytes_would_exceed_the_limit_and_keeps_its_place(
    manager_factory: Callable[..., JobManager],
) -> None:
    m, fake, gate_a, a = await holding(
        manager_factory, JobLimits(max_jobs=3, max_bytes_in_flight=100), "a", a=80, b=50, c=10)
    assert m.bytes_in_flight() == 80
    b = await submitted(m, "b")
    # b lists its source, finds 50 bytes to move, and goes back to the queue.
    await until(lambda: b.state == "queued" and b.estimate == 50, "b deferred")
    c = await submitted(m, "c")
    await asyncio.sleep(0.01)
    # c would fit (80 + 10), but it never overtakes b, the head of the queue.
    assert c.state == "queued" and "file:///src/c" not in fake.calls
    assert m.bytes_in_flight() == 80
    gate_a.set()
    for j in (a, b, c):
        await finished(j)
    assert [name(s) for s in fake.calls].count("b") == 2 and b.attempts == 2 and b.mirrors == 1
    assert b.started_at is not None and c.started_at is not None
    assert b.started_at <= c.started_at
    samples = parse_metrics(m.metrics.render().decode())
    assert samples['bdn_mirror_runs_total{outcome="deferred"}'] == 1


async def test_a_job_larger_than_the_limit_runs_alone(
    manager_factory: Callable[..., JobManager],
) -> None:
    m, _, gate_big, big = await holding(manager_factory, JobLimits(
        max_jobs=4, max_bytes_in_flight=100), "big", big=500, small=10, noop=0)
    assert big.in_flight == 500
    noop = await submitted(m, "noop")
    await finished(noop)  # Nothing to move: it never waits for bytes.
    small = await submitted(m, "small")
    await until(lambda: small.estimate == 10, "small deferred")
    assert small.state == "queued"
    gate_big.set()
    await finished(big)
    await finished(small)
    assert small.state == "succeeded"


# -- persistence and resume -------------------------------------------------------------


async def test_job_records_round_trip_and_hold_secret_names_only(tmp_path: Path) -> None:
    entries = parse_weights([
        {"source": "s3://bucket/llama", "mount_location": "/models/llama",
         "auth": {"auth_method": "CUSTOM_SECRET", "auth_secret_name": "aws_creds"},
         "allow_patterns": ["*.safetensors"]},
        {"source": "hf://org/tok", "mount_location": "/models/tok"},
    ])
    job = Job(id=job_id(entries), entries=entries, seq=7, state="running", attempts=1,
              results=[EntryResult("/models/llama", "sha256:" + "a" * 64, 3, 300, 300, 310, 300),
                       None])
    store = JobStore(tmp_path)
    store.open()
    await store.save(job)
    await store.save(job)
    files = sorted(p.name for p in (tmp_path / "jobs").iterdir())
    assert files == [f"{job.id}.json"]  # Replaced in place; no temp file left.
    record = json.loads((tmp_path / "jobs" / files[0]).read_text())
    assert record["entries"][0]["auth"] == {"auth_method": "CUSTOM_SECRET",
                                            "auth_secret_name": "aws_creds"}
    (loaded,) = store.load()
    assert loaded.to_record() == job.to_record()


async def test_corrupt_record_is_set_aside(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    store.open()
    (tmp_path / "jobs" / "mj-0123.json").write_text("{not json")
    assert store.load() == []
    assert (tmp_path / "jobs" / "mj-0123.corrupt").exists()


async def test_unfinished_jobs_resume_running_first_and_finished_entries_are_kept(
    tmp_path: Path, manager_factory: Callable[..., JobManager],
) -> None:
    store = JobStore(tmp_path / "state")
    store.open()
    done = Job(id=job_id(weights("done")), entries=weights("done"), seq=0, state="succeeded")
    queued = Job(id=job_id(weights("q")), entries=weights("q"), seq=1, state="queued")
    two = weights("r1", "r2")
    running = Job(id=job_id(two), entries=two, seq=2, state="running", attempts=1,
                  results=[EntryResult("/models/r1", "sha256:" + "b" * 64, 1, 5, 5, 5, 5), None])
    for j in (done, queued, running):
        await store.save(j)
    store.close()
    fake = FakeMirror()
    m = manager_factory(fake, JobLimits(max_jobs=1), start=False)
    assert [j.id for j in m.queued] == [running.id, queued.id]
    m.start()
    for jid in (running.id, queued.id):
        await finished(m.get(jid))  # type: ignore[arg-type]
    assert [name(c) for c in fake.calls] == ["r2", "q"]
    resumed = m.get(running.id)
    assert resumed is not None and resumed.attempts == 2 and resumed.state == "succeeded"
    assert [r.mount_location for r in resumed.results if r] == ["/models/r1", "/models/r2"]
    assert m.get(done.id).state == "succeeded"  # type: ignore[union-attr]
    # One service per state dir: a second one is refused while the first holds it...
    with pytest.raises(ConfigError, match="another mirror-server"):
        JobManager(JobStore(tmp_path / "state"), fake).load()
    # ...and a later one finds every job finished.
    await m.close()
    fresh = JobManager(JobStore(tmp_path / "state"), fake)
    assert fresh.load() == 0
    assert fresh.counts() == {"queued": 0, "running": 0, "succeeded": 3, "failed": 0}
    await fresh.close()


async def test_drain_leaves_an_unfinished_job_running_on_disk(
    tmp_path: Path, manager_factory: Callable[..., JobManager],
) -> None:
    fake = FakeMirror()
    fake.script("slow", gate=asyncio.Event())
    fake.script("later")
    m = manager_factory(fake, JobLimits(max_jobs=1))
    slow = await submitted(m, "slow")
    later = await submitted(m, "later")
    await until(lambda: fake.admitted == ["file:///src/slow"])
    assert await m.drain(timeout=0.05) is False
    await m.close()
    records = {j.id: j.state for j in JobStore(tmp_path / "state").load()}
    assert records == {slow.id: "running", later.id: "queued"}
    with pytest.raises(Exception, match="shutting down"):
        await m.submit(weights("new"))


async def test_drain_waits_for_running_jobs(manager_factory: Callable[..., JobManager]) -> None:
    fake = FakeMirror()
    gate = asyncio.Event()
    fake.script("a", gate=gate)
    m = manager_factory(fake)
    job = await submitted(m, "a")
    await until(lambda: bool(fake.admitted))
    drained = asyncio.create_task(m.drain(timeout=60))
    await asyncio.sleep(0.01)
    assert not drained.done()
    gate.set()
    assert await drained is True and job.state == "succeeded"
