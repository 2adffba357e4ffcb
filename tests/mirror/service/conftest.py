"""Fixtures shared by the mirror service's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bdn.mirror.service.scheduler import DEFAULT_JOB_LIMITS, JobLimits, JobManager, MirrorFn
from bdn.mirror.service.state import JobStore


@pytest.fixture
async def manager_factory(tmp_path: Path) -> AsyncIterator[Callable[..., JobManager]]:
    """Makes job managers over ``tmp_path/state``, loaded and (unless ``start=False``)
    started; every one is closed after the test. Keywords go to :class:`JobManager`."""
    made: list[JobManager] = []

    def make(mirror: MirrorFn, limits: JobLimits = DEFAULT_JOB_LIMITS,
             start: bool = True, **kw: Any) -> JobManager:
        m = JobManager(JobStore(tmp_path / "state"), mirror, limits=limits, **kw)
        m.load()
        if start:
            m.start()
        made.append(m)
        return m

    yield make
    for m in made:
        await m.close()
