"""Resume inside a chunk: only the rest is fetched, the whole chunk is verified,
a bad prefix is dropped, and progress is reported only for bytes on disk."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bdn.http import HttpClient, HttpConfig
from bdn.transfer import TransferConfig, TransferEngine
from bdn.transfer.writes import ChunkWriter, IoPool, SharedFd
from tests.httpserver import FaultPlan, FaultServer
from tests.transfer.test_engine import CHUNK, FAST, Setup

SEG = 16 * 1024
CONFIG = TransferConfig(max_connections=4, max_connections_per_file=2, segment_size=SEG,
                        io_threads=2, retry=FAST)


@pytest.fixture
async def engine() -> AsyncIterator[TransferEngine]:
    async with TransferEngine(CONFIG) as eng:
        yield eng


@pytest.fixture
async def setup(fault_server: FaultServer, tmp_path: Path) -> AsyncIterator[Setup]:
    async with HttpClient(HttpConfig(connect_timeout=2.0, stall_timeout=0.3)) as client:
        yield Setup(fault_server, client, tmp_path)


def ranges(server: FaultServer, name: str) -> list[tuple[int, int]]:
    return sorted((a, b) for obj, a, b in server.stats.ranges if obj == name)


async def test_resume_fetches_only_the_rest_of_a_chunk(
    setup: Setup, engine: TransferEngine
) -> None:
    data = os.urandom(2 * CHUNK)
    task = setup.task("rest", data, partial_chunks={1: 3 * SEG})
    task.dest.write_bytes(data[: CHUNK + 3 * SEG] + b"\0" * (CHUNK - 3 * SEG))
    res = await engine.fetch(task)
    assert task.dest.read_bytes() == data
    assert ranges(setup.server, "rest") == [(0, CHUNK), (CHUNK + 3 * SEG, 2 * CHUNK)]
    assert res.bytes_fetched == 2 * CHUNK - 3 * SEG


async def test_bad_prefix_is_dropped_and_the_chunk_fetched_from_its_start(
    setup: Setup, engine: TransferEngine
) -> None:
    data = os.urandom(CHUNK)
    seen: list[tuple[int, int]] = []
    task = setup.task("bad", data, partial_chunks={0: SEG},
                      on_chunk_progress=lambda i, n: seen.append((i, n)))
    task.dest.write_bytes(b"\1" * CHUNK)  # The recorded prefix is not what it claims.
    await engine.fetch(task)
    assert task.dest.read_bytes() == data
    assert ranges(setup.server, "bad") == [(0, CHUNK), (SEG, CHUNK)]
    assert (0, 0) in seen  # The prefix was withdrawn before the refetch.
    assert engine.stats.corrupt_chunks == 1


async def test_progress_is_reported_only_after_the_bytes_are_written(
    setup: Setup, engine: TransferEngine
) -> None:
    big = 8 * CHUNK  # Many segments per chunk.
    data = os.urandom(3 * big)
    task = setup.task("order", data, chunk=big)
    checked: list[int] = []

    def on_progress(index: int, written: int) -> None:
        start = index * big  # What the record would claim must already be in the file.
        with open(task.dest, "rb") as f:
            f.seek(start)
            assert f.read(written) == data[start : start + written]
        checked.append(written)

    task.on_chunk_progress = on_progress
    await engine.fetch(task)
    assert checked and all(SEG <= n < big for n in checked)  # whole segments only


async def test_a_retry_after_a_cut_body_resumes_where_the_bytes_landed(
    setup: Setup, engine: TransferEngine
) -> None:
    data = os.urandom(CHUNK)
    progress: list[int] = []
    engine._on_progress = progress.append
    # A clean close mid-body (an RST would drop bytes the client had not read yet).
    setup.server.faults = FaultPlan(truncate_after=CHUNK // 2 + 100, truncate_count=1)
    task = setup.task("reset", data)
    await engine.fetch(task)
    assert task.dest.read_bytes() == data
    (first, _), (second, end) = ranges(setup.server, "reset")
    assert first == 0 and SEG <= second <= CHUNK // 2 + 100 and end == CHUNK
    assert sum(progress) == len(data) and all(d > 0 for d in progress)


def test_partial_chunks_are_validated(tmp_path: Path, setup: Setup) -> None:
    from bdn.transfer.task import validate_task

    data = os.urandom(CHUNK + 5)
    with pytest.raises(ValueError, match="partial_chunks out of range"):
        validate_task(setup.task("v", data, partial_chunks={1: 5}))
    with pytest.raises(ValueError, match="needs expected_chunks"):
        validate_task(setup.task("v", data, expected=False, partial_chunks={0: 1}))


async def _landed(seen: list[int]) -> None:
    for _ in range(500):
        if seen:
            return
        await asyncio.sleep(0.002)


@pytest.mark.parametrize("kept", [True, False])
async def test_a_segment_counts_as_soon_as_its_write_returns(tmp_path: Path, kept: bool) -> None:
    # Not when the next segment fills: a crash then loses at most what is gathered.
    io = IoPool(1)
    shared = SharedFd(os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644))
    progress: list[int] = []
    written: list[int] = []
    writer = ChunkWriter(io, shared, SEG, progress.append, 0, 4 * SEG,
                         written.append if kept else None)
    try:
        await writer.feed(b"a" * SEG)  # A full segment: off to the pool.
        await writer.feed(b"b" * 100)  # The next one is still being gathered.
        await _landed(progress)
        assert progress == [SEG] and written == ([SEG] if kept else [])
        assert os.pread(shared.fd, SEG, 0) == b"a" * SEG  # Counted only once on disk.
        await writer.abort()
        assert sum(progress) == (SEG if kept else 0)  # Kept, never counted twice.
        assert written == ([SEG] if kept else [])
    finally:
        shared.close()
        await io.close()


async def test_an_error_from_the_written_callback_fails_the_chunk(tmp_path: Path) -> None:
    io = IoPool(1)
    shared = SharedFd(os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644))
    calls: list[int] = []

    def on_written(pos: int) -> None:
        calls.append(pos)
        raise RuntimeError("record broke")

    writer = ChunkWriter(io, shared, SEG, lambda _d: None, 0, 4 * SEG, on_written)
    try:
        await writer.feed(b"a" * SEG)
        await _landed(calls)
        with pytest.raises(RuntimeError, match="record broke"):
            await writer.feed(b"b" * SEG)
        await writer.abort()
    finally:
        shared.close()
        await io.close()
