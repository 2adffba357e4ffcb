"""The multi-process data plane: bit-exact, and a killed worker costs only what it had not
written (within the pull, and across a crashed pull and its resume)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bdn.errors import TransferError
from bdn.http import HttpClient, HttpConfig, HttpRangeReader, RetryPolicy
from bdn.transfer import FileTask, TransferConfig, TransferEngine
from bdn.transfer.ratelimit import RateCap
from tests.httpserver import FaultPlan, FaultServer
from tests.transfer.test_engine import FAST, chunks_of

CHUNK = 256 * 1024
PIECE = 64 * 1024  # What the fault server writes at a time.
# Every piece a worker receives is written at once, however TCP cut the server's
# writes (a segment of 16 KiB once held back the last 53 bytes before the pause).
SEG = 1
NO_RETRY = RetryPolicy(max_attempts=1)


def config(workers: int, *, per_file: int = 3, retry: RetryPolicy = FAST) -> TransferConfig:
    return TransferConfig(max_connections=6, max_connections_per_file=per_file,
                          segment_size=SEG, io_threads=2, retry=retry, workers=workers,
                          worker_min_bytes=0)


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    # A paused response must not time out while the test kills its worker.
    async with HttpClient(HttpConfig(connect_timeout=5.0, stall_timeout=30.0)) as c:
        yield c


def task_for(server: FaultServer, client: HttpClient, tmp: Path, name: str, data: bytes,
             **kw: object) -> FileTask:
    url = server.put(name, data)
    return FileTask(HttpRangeReader(client, url, len(data)), len(data), tmp / f"{name}.part",
                    CHUNK, expected_chunks=chunks_of(data, CHUNK), label=name,
                    **kw)  # type: ignore[arg-type]


def ranges(server: FaultServer, name: str) -> list[tuple[int, int]]:
    return [(a, b) for obj, a, b in server.stats.ranges if obj == name]


async def test_many_workers_fetch_bit_exact(
    fault_server: FaultServer, client: HttpClient, tmp_path: Path
) -> None:
    datas = {f"w{i}": os.urandom(3 * CHUNK + 1000 * i) for i in range(4)}
    progress: list[int] = []
    async with TransferEngine(config(3), on_progress=progress.append) as engine:
        tasks = [task_for(fault_server, client, tmp_path, n, d, compute_sha256=True)
                 for n, d in datas.items()]
        results = await engine.fetch_all(tasks)
        assert len(engine.worker_pids()) == 2
    for (name, data), task, res in zip(datas.items(), tasks, results, strict=True):
        assert task.dest.read_bytes() == data, name
        assert res.chunks == tuple(chunks_of(data, CHUNK))
        assert res.bytes_fetched == len(data)
    assert sum(progress) == sum(len(d) for d in datas.values())
    assert engine.stats.retries == 0
    assert engine.worker_pids() == []  # Closed: the workers are gone.


async def _kill_the_worker_mid_chunk(
    server: FaultServer, engine: TransferEngine, kept: dict[int, int], fetch: asyncio.Task[object]
) -> None:
    """Wait until the worker has written 3 pieces of chunk 1 and the server holds every
    response (a barrier, no sleeps); SIGKILL the worker; let the server go on."""
    assert await asyncio.to_thread(server.paused.wait, 30)
    while kept.get(1, 0) < 3 * PIECE:  # Landed-segment reports still on their way.
        assert not fetch.done()
        await asyncio.sleep(0.005)
    (pid,) = engine.worker_pids()
    os.kill(pid, signal.SIGKILL)
    server.release()


async def test_a_killed_worker_costs_only_what_it_had_not_written(
    fault_server: FaultServer, client: HttpClient, tmp_path: Path
) -> None:
    data = os.urandom(4 * CHUNK)
    kept: dict[int, int] = {}
    task = task_for(fault_server, client, tmp_path, "kill", data,
                    on_chunk_progress=kept.__setitem__)
    fault_server.faults = FaultPlan(pause_after=CHUNK + 3 * PIECE)
    # One chunk at a time, and a tie goes to a worker: every chunk runs in the worker.
    async with TransferEngine(config(2, per_file=1)) as engine:
        fetch = asyncio.ensure_future(engine.fetch(task))
        await _kill_the_worker_mid_chunk(fault_server, engine, kept, fetch)
        res = await fetch
    assert task.dest.read_bytes() == data
    assert res.retries == 1 and res.bytes_fetched == len(data)
    assert ranges(fault_server, "kill") == [
        (0, CHUNK), (CHUNK, 2 * CHUNK), (CHUNK + 3 * PIECE, 2 * CHUNK),
        (2 * CHUNK, 3 * CHUNK), (3 * CHUNK, 4 * CHUNK),
    ]


async def test_a_pull_whose_worker_was_killed_resumes_bit_exact(
    fault_server: FaultServer, client: HttpClient, tmp_path: Path
) -> None:
    data = os.urandom(4 * CHUNK)
    kept: dict[int, int] = {}
    done: list[int] = []
    task = task_for(fault_server, client, tmp_path, "crash", data,
                    on_chunk_progress=kept.__setitem__, on_chunk_done=done.append)
    fault_server.faults = FaultPlan(pause_after=CHUNK + 3 * PIECE)
    async with TransferEngine(config(2, per_file=1, retry=NO_RETRY)) as engine:
        fetch = asyncio.ensure_future(engine.fetch(task))
        await _kill_the_worker_mid_chunk(fault_server, engine, kept, fetch)
        with pytest.raises(TransferError, match=r"worker process .* exited"):
            await fetch
    assert done == [0] and kept[1] == 3 * PIECE
    fault_server.reset_stats()
    fault_server.faults = FaultPlan()
    resumed = task_for(fault_server, client, tmp_path, "crash", data, done_chunks=done,
                       partial_chunks={1: kept[1]})
    async with TransferEngine(config(2)) as engine:
        res = await engine.fetch(resumed)
    assert resumed.dest.read_bytes() == data
    assert res.bytes_fetched == len(data) - CHUNK - 3 * PIECE  # Only what was missing.
    assert sorted(ranges(fault_server, "crash")) == [
        (CHUNK + 3 * PIECE, 2 * CHUNK), (2 * CHUNK, 3 * CHUNK), (3 * CHUNK, 4 * CHUNK),
    ]


async def test_a_server_that_ignores_ranges_is_streamed_in_process(
    fault_server: FaultServer, client: HttpClient, tmp_path: Path
) -> None:
    data = os.urandom(3 * CHUNK + 7)
    fault_server.faults = FaultPlan(ignore_range=True)
    task = task_for(fault_server, client, tmp_path, "whole", data)
    async with TransferEngine(config(2, per_file=3)) as engine:
        res = await engine.fetch(task)
    assert task.dest.read_bytes() == data
    assert engine.stats.range_fallbacks == 1
    assert res.chunks == tuple(chunks_of(data, CHUNK))


async def test_a_capped_engine_or_a_small_file_stays_in_process(
    fault_server: FaultServer, client: HttpClient, tmp_path: Path
) -> None:
    data = os.urandom(2 * CHUNK)
    cfg = TransferConfig(segment_size=SEG, retry=FAST, workers=4)  # min bytes: 64 MiB
    async with TransferEngine(cfg) as engine:
        task = task_for(fault_server, client, tmp_path, "small", data)
        await engine.fetch(task)
        assert engine.worker_pids() == []
    capped = TransferConfig(segment_size=SEG, retry=FAST, workers=4, worker_min_bytes=0,
                            rate_limit=RateCap(1e12))
    async with TransferEngine(capped) as engine:
        task = task_for(fault_server, client, tmp_path, "capped", data)
        await engine.fetch(task)
        assert engine.worker_pids() == []
    assert task.dest.read_bytes() == data
