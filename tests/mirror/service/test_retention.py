"""Finished job records are pruned after the retention; unfinished ones never; loaded jobs
are checked against the allowlist. The clock is injected: no test waits for time to pass."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bdn.errors import SourceError
from bdn.mirror.service.scheduler import JobLimits, JobManager
from bdn.mirror.service.sources import SourcePolicy
from tests.e2e.agents import parse_metrics
from tests.mirror.service.test_jobs import FakeMirror, finished, submitted, until, weights

RETENTION = 100.0


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make(manager_factory: Callable[..., JobManager]) -> Callable[..., JobManager]:
    def factory(fake: FakeMirror, clock: Clock, *, start: bool = True,
                **kw: Any) -> JobManager:
        kw.setdefault("prune_interval", 3600.0)  # Tests call prune() themselves.
        return manager_factory(fake, JobLimits(max_jobs=1), start, retention=RETENTION,
                               clock=clock, **kw)

    return factory


def records(tmp_path: Path) -> set[str]:
    return {p.stem for p in (tmp_path / "state" / "jobs").glob("mj-*.json")}


async def test_finished_jobs_are_pruned_after_the_retention_unfinished_ones_never(
    make: Callable[..., JobManager], tmp_path: Path
) -> None:
    clock, fake = Clock(), FakeMirror()
    gate = fake.script("run", gate=asyncio.Event()).gate
    fake.script("bad", error=SourceError("gone"))
    m = make(fake, clock)
    done = await finished(await submitted(m, "done"))
    failed = await finished(await submitted(m, "bad"))
    assert done.state == "succeeded" and failed.state == "failed"
    running = await submitted(m, "run")
    await until(lambda: running.state == "running", "the job to run")
    queued = await submitted(m, "wait")
    assert queued.state == "queued"

    clock.now += RETENTION / 2  # Within the retention: kept, and identical ones coalesce.
    assert await m.prune() == 0
    again = await m.submit(weights("done"))
    assert again.outcome == "succeeded" and again.job is done and fake.calls.count(
        "file:///src/done") == 1

    clock.now += RETENTION  # Past it for the finished two; the others are older still.
    assert await m.prune() == 2
    assert m.get(done.id) is None and m.get(failed.id) is None
    assert m.get(running.id) is running and m.get(queued.id) is queued
    assert records(tmp_path) == {running.id, queued.id}
    assert m.counts() == {"queued": 1, "running": 1, "succeeded": 0, "failed": 0}
    samples = parse_metrics(m.metrics.render().decode())
    assert samples["bdn_mirror_jobs_pruned_total"] == 2
    # Forgotten: the same weights make a new job (which the store makes cheap).
    fresh = await m.submit(weights("done"))
    assert fresh.outcome == "new" and fresh.job is not done
    assert gate is not None
    gate.set()
    for job in (running, queued, fresh.job):
        await finished(job)


async def test_expired_records_are_removed_at_start(
    make: Callable[..., JobManager], tmp_path: Path
) -> None:
    clock, fake = Clock(), FakeMirror()
    first = make(fake, clock)
    old = await finished(await submitted(first, "old"))
    clock.now += RETENTION - 1
    recent = await finished(await submitted(first, "recent"))
    await first.close()
    clock.now += 2  # ``old`` is past the retention, ``recent`` is not.
    second = make(fake, clock, start=False)
    assert second.get(old.id) is None and second.get(recent.id) is not None
    assert records(tmp_path) == {recent.id}


async def test_pruning_runs_periodically_once_started(
    make: Callable[..., JobManager], tmp_path: Path
) -> None:
    clock, fake = Clock(), FakeMirror()
    m = make(fake, clock, prune_interval=0.01)
    job = await finished(await submitted(m, "a"))
    assert m.get(job.id) is job
    clock.now += RETENTION + 1
    await until(lambda: m.get(job.id) is None, "the periodic prune")
    await until(lambda: not records(tmp_path), "the record to be deleted")


async def test_a_loaded_unfinished_job_the_allowlist_refuses_is_failed_not_run(
    make: Callable[..., JobManager], tmp_path: Path
) -> None:
    clock, fake = Clock(), FakeMirror()
    before = make(fake, clock, start=False)  # Queued on disk, never started.
    jid = (await submitted(before, "a")).id
    ok = (await submitted(before, "b")).id
    await before.close()
    policy = SourcePolicy.parse(["file:///src/b"])
    after = make(fake, clock, refuse=policy.check)
    refused = after.get(jid)
    assert refused is not None and refused.state == "failed"
    assert refused.error is not None and "is not allowed on this mirror server" in refused.error
    resumed = after.get(ok)
    assert resumed is not None
    await finished(resumed)
    assert fake.calls == ["file:///src/b"]
    assert '"state": "failed"' in (tmp_path / "state" / "jobs" / f"{jid}.json").read_text()
