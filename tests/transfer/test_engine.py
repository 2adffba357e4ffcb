"""The transfer engine against a real loopback server that misbehaves on demand."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest

from bdn.digest import chunk_bounds, xxh3_128_hex
from bdn.errors import (
    AuthError,
    IntegrityError,
    NotFound,
    RetryableHTTPError,
    TransferError,
)
from bdn.http import HttpClient, HttpConfig, HttpRangeReader, RetryPolicy
from bdn.transfer import FileTask, TransferConfig, TransferEngine
from tests.httpserver import FaultPlan, FaultServer

CHUNK = 64 * 1024
FAST = RetryPolicy(max_attempts=4, base_delay=0.001, max_delay=0.005)
# Segments smaller than a chunk and not dividing it, so chunk ends fall mid-segment.
CONFIG = TransferConfig(
    max_connections=6, max_connections_per_file=3, segment_size=24 * 1024, io_threads=3, retry=FAST
)


def chunks_of(data: bytes, chunk: int = CHUNK) -> list[str]:
    return [xxh3_128_hex(data[a:b]) for a, b in chunk_bounds(len(data), chunk)]


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    async with HttpClient(HttpConfig(connect_timeout=2.0, stall_timeout=0.3)) as c:
        yield c


@pytest.fixture
async def engine() -> AsyncIterator[TransferEngine]:
    async with TransferEngine(CONFIG) as eng:
        yield eng


class Setup:
    """Serves objects and builds tasks for them."""

    def __init__(self, server: FaultServer, client: HttpClient, tmp: Path) -> None:
        self.server = server
        self.client = client
        self.tmp = tmp

    def task(
        self,
        name: str,
        data: bytes,
        *,
        expected: bool = True,
        chunk: int = CHUNK,
        url_suffix: str = "",
        **kw: object,
    ) -> FileTask:
        url = self.server.put(name, data) + url_suffix
        return FileTask(
            reader=HttpRangeReader(self.client, url, len(data)),
            size=len(data),
            dest=self.tmp / f"{name}.part",
            chunk_size=chunk,
            expected_chunks=chunks_of(data, chunk) if expected else None,
            label=f"model/{name}",
            **kw,  # type: ignore[arg-type]
        )


@pytest.fixture
def setup(fault_server: FaultServer, client: HttpClient, tmp_path: Path) -> Setup:
    return Setup(fault_server, client, tmp_path)


def served_chunks(server: FaultServer, name: str) -> list[int]:
    """Chunk index of every ranged GET of ``name`` the server answered."""
    return sorted(start // CHUNK for obj, start, _ in server.stats.ranges if obj == name)


# --------------------------------------------------------------------------- happy paths


SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5, 7 * CHUNK]


async def test_many_files_bit_exact(setup: Setup, engine: TransferEngine) -> None:
    progress: list[int] = []
    engine._on_progress = progress.append
    done: dict[str, list[int]] = {}
    datas = {f"f{size}": os.urandom(size) for size in SIZES}
    tasks = []
    for name, data in datas.items():
        t = setup.task(
            name, data, compute_sha256=True, on_chunk_done=done.setdefault(name, []).append
        )
        tasks.append(t)
    results = await engine.fetch_all(tasks)
    for (name, data), task, res in zip(datas.items(), tasks, results, strict=True):
        assert task.dest.read_bytes() == data, name
        assert res.size == len(data)
        assert res.chunks == tuple(chunks_of(data))
        assert res.sha256 == hashlib.sha256(data).hexdigest()
        assert res.bytes_fetched == len(data)
        assert res.retries == 0
        assert sorted(done[name]) == list(range(len(res.chunks)))
    assert sum(progress) == sum(SIZES)
    assert all(d > 0 for d in progress)
    assert engine.stats.bytes_fetched == sum(SIZES)
    assert engine.stats.retries == engine.stats.corrupt_chunks == engine.stats.range_fallbacks == 0
    # One request per chunk, none for the empty file.
    assert (
        engine.stats.requests
        == setup.server.stats.get_requests
        == sum(len(chunks_of(d)) for d in datas.values())
    )


async def test_digests_computed_when_not_expected(setup: Setup, engine: TransferEngine) -> None:
    data = os.urandom(2 * CHUNK + 100)
    task = setup.task("plain", data, expected=False)
    res = await engine.fetch(task)
    assert res.chunks == tuple(chunks_of(data))
    assert res.sha256 is None
    assert task.dest.read_bytes() == data


async def test_segment_larger_than_chunk(setup: Setup) -> None:
    data = os.urandom(5 * 1000 + 7)
    async with TransferEngine(TransferConfig(segment_size=1 << 20, retry=FAST)) as eng:
        res = await eng.fetch(
            setup.task(
                "small-chunks", data, chunk=1000, expected_sha256=hashlib.sha256(data).hexdigest()
            )
        )
    assert res.chunks == tuple(chunks_of(data, 1000))
    assert (setup.tmp / "small-chunks.part").read_bytes() == data


async def test_existing_longer_dest_is_truncated(setup: Setup, engine: TransferEngine) -> None:
    data = os.urandom(CHUNK + 3)
    task = setup.task("shrink", data)
    task.dest.write_bytes(os.urandom(5 * CHUNK))
    await engine.fetch(task)
    assert task.dest.read_bytes() == data


async def test_connection_caps(setup: Setup) -> None:
    config = TransferConfig(
        max_connections=2, max_connections_per_file=8, segment_size=16384, retry=FAST
    )
    datas = [os.urandom(6 * CHUNK) for _ in range(3)]
    async with TransferEngine(config) as eng:
        await eng.fetch_all([setup.task(f"cap{i}", d) for i, d in enumerate(datas)])
    assert setup.server.stats.max_in_flight <= 2


@pytest.mark.parametrize(("total", "per_file"), [(1, 1), (2, 1), (1, 8), (3, 2)])
@pytest.mark.parametrize("ignore_range", [False, True])
async def test_every_chunk_fetched_whatever_the_caps(
    setup: Setup, total: int, per_file: int, ignore_range: bool
) -> None:
    config = TransferConfig(
        max_connections=total, max_connections_per_file=per_file, segment_size=20_000, retry=FAST
    )
    setup.server.faults = FaultPlan(ignore_range=ignore_range)
    datas = {f"caps{i}": os.urandom(n) for i, n in enumerate([CHUNK + 1, 5 * CHUNK, 2 * CHUNK])}
    tasks = [setup.task(name, data) for name, data in datas.items()]
    async with TransferEngine(config) as eng:
        results = await eng.fetch_all(tasks)
    for task, data, res in zip(tasks, datas.values(), results, strict=True):
        assert task.dest.read_bytes() == data
        assert res.chunks == tuple(chunks_of(data))
    assert eng.stats.range_fallbacks == (3 if ignore_range else 0)
    assert setup.server.stats.max_in_flight <= total


async def test_connections_are_reused(setup: Setup) -> None:
    config = TransferConfig(max_connections=1, max_connections_per_file=1, retry=FAST)
    data = os.urandom(8 * CHUNK)
    async with TransferEngine(config) as eng:
        await eng.fetch(setup.task("keepalive", data))
    assert setup.server.stats.get_requests == 8
    assert len(setup.server.stats.connections) == 1


async def test_first_chunk_starts_the_file_and_the_rest_wrap_around(setup: Setup) -> None:
    # Nodes of a burst start a blob at different chunks (bdn.peer.tiered), so the
    # same few nodes do not ask every owner first; chunks already done are skipped.
    config = TransferConfig(max_connections=1, max_connections_per_file=1, retry=FAST)
    data = os.urandom(6 * CHUNK)
    async with TransferEngine(config) as eng:
        result = await eng.fetch(setup.task("rotated", data, first_chunk=4))
    order = [start // CHUNK for obj, start, _ in setup.server.stats.ranges if obj == "rotated"]
    assert order == [4, 5, 0, 1, 2, 3]
    assert result.bytes_fetched == len(data)
    assert (setup.tmp / "rotated.part").read_bytes() == data


async def test_probe_fetches_first_chunk_first(setup: Setup, engine: TransferEngine) -> None:
    data = os.urandom(6 * CHUNK)
    await engine.fetch(setup.task("probe", data))
    assert setup.server.stats.ranges[0] == ("probe", 0, CHUNK)


# --------------------------------------------------------------------------- transient faults


@pytest.mark.parametrize(
    "plan",
    [
        FaultPlan(status=503, status_count=2),
        FaultPlan(status=429, status_count=2, retry_after="0.01"),
        FaultPlan(status=500, status_count=1),
        FaultPlan(reset_after=10_000, reset_count=2),
        FaultPlan(truncate_after=20_000, truncate_count=2),
        FaultPlan(stall_after=5_000, stall_seconds=1.0, stall_count=1),
        FaultPlan(wrong_range_count=2),
    ],
    ids=["503", "429-retry-after", "500", "reset", "truncate", "stall", "wrong-content-range"],
)
async def test_transient_faults_end_bit_exact(
    setup: Setup, engine: TransferEngine, plan: FaultPlan
) -> None:
    data = os.urandom(4 * CHUNK + 123)
    progress: list[int] = []
    engine._on_progress = progress.append
    setup.server.faults = plan
    res = await engine.fetch(setup.task("flaky", data, compute_sha256=True))
    assert (setup.tmp / "flaky.part").read_bytes() == data
    assert res.sha256 == hashlib.sha256(data).hexdigest()
    assert setup.server.stats.faults_fired >= 1
    assert res.retries >= 1
    assert engine.stats.retries == res.retries
    assert sum(progress) == len(data)


async def test_corrupt_chunk_detected_counted_and_refetched(
    setup: Setup, engine: TransferEngine
) -> None:
    data = os.urandom(4 * CHUNK)
    setup.server.faults = FaultPlan(flip_offset=2 * CHUNK + 17, flip_count=1)
    progress: list[int] = []
    engine._on_progress = progress.append
    res = await engine.fetch(setup.task("flip", data))
    assert (setup.tmp / "flip.part").read_bytes() == data
    assert engine.stats.corrupt_chunks == 1
    assert res.retries == 1
    assert served_chunks(setup.server, "flip") == [0, 1, 2, 2, 3]
    assert res.bytes_fetched == len(data) + CHUNK
    # The corrupt attempt's progress was taken back.
    assert sum(progress) == len(data)
    assert any(d < 0 for d in progress)


async def test_unverified_corruption_caught_by_sha256(setup: Setup, engine: TransferEngine) -> None:
    data = os.urandom(3 * CHUNK)
    setup.server.faults = FaultPlan(flip_offset=CHUNK + 1, flip_count=1)
    task = setup.task(
        "nosums", data, expected=False, expected_sha256=hashlib.sha256(data).hexdigest()
    )
    with pytest.raises(IntegrityError, match="sha256 mismatch") as info:
        await engine.fetch(task)
    assert info.value.expected == hashlib.sha256(data).hexdigest()
    assert task.dest.exists()  # Left for the caller to delete.


async def test_expected_sha256_mismatch(setup: Setup, engine: TransferEngine) -> None:
    data = os.urandom(CHUNK + 1)
    task = setup.task("badsha", data, expected_sha256="0" * 64)
    with pytest.raises(IntegrityError) as info:
        await engine.fetch(task)
    assert info.value.actual == hashlib.sha256(data).hexdigest()
    assert "model/badsha" in str(info.value)


# --------------------------------------------------------------------------- permanent faults


async def test_not_found_is_typed_with_context(setup: Setup, engine: TransferEngine) -> None:
    task = setup.task("gone", os.urandom(3 * CHUNK))
    setup.server.remove("gone")
    with pytest.raises(NotFound) as info:
        await engine.fetch(task)
    assert str(info.value).startswith("model/gone: chunk 0 (bytes 0-65535): ")
    assert setup.server.stats.get_requests == 1  # Not retried, other chunks never started.


async def test_forbidden_never_leaks_signature(setup: Setup, engine: TransferEngine) -> None:
    task = setup.task("private", os.urandom(2 * CHUNK), url_suffix="?X-Amz-Signature=t0p5ecret")
    setup.server.faults = FaultPlan(status=403, status_count=1000)
    with pytest.raises(AuthError) as info:
        await engine.fetch(task)
    text = str(info.value) + repr(info.value.url) + "".join(getattr(info.value, "__notes__", []))
    assert "t0p5ecret" not in text
    assert setup.server.stats.get_requests == 1


async def test_throttled_forever_gives_up(setup: Setup, engine: TransferEngine) -> None:
    setup.server.faults = FaultPlan(status=503, status_count=1000)
    with pytest.raises(RetryableHTTPError) as info:
        await engine.fetch(setup.task("busy", os.urandom(2 * CHUNK)))
    assert info.value.status == 503
    assert "chunk 0" in str(info.value)
    assert setup.server.stats.get_requests == FAST.max_attempts
    assert engine.stats.retries == FAST.max_attempts - 1


async def test_always_corrupt_gives_up(setup: Setup, engine: TransferEngine) -> None:
    data = os.urandom(2 * CHUNK)
    setup.server.faults = FaultPlan(flip_offset=CHUNK + 5, flip_count=1000)
    with pytest.raises(IntegrityError, match=r"chunk 1 \(bytes 65536-131071\): xxh3-128 mismatch"):
        await engine.fetch(setup.task("rotten", data))
    assert engine.stats.corrupt_chunks == FAST.max_attempts


# --------------------------------------------------------------------------- range fallback


async def test_server_ignoring_ranges_falls_back_to_one_stream(
    setup: Setup, engine: TransferEngine
) -> None:
    data = os.urandom(5 * CHUNK + 9)
    setup.server.faults = FaultPlan(ignore_range=True)
    done: list[int] = []
    res = await engine.fetch(
        setup.task("norange", data, compute_sha256=True, on_chunk_done=done.append)
    )
    assert (setup.tmp / "norange.part").read_bytes() == data
    assert res.chunks == tuple(chunks_of(data))
    assert res.sha256 == hashlib.sha256(data).hexdigest()
    assert engine.stats.range_fallbacks == 1
    # The probe request, then one stream for the whole file.
    assert setup.server.stats.get_requests == 2
    assert done == list(range(6))


async def test_fallback_retry_skips_verified_chunks(setup: Setup, engine: TransferEngine) -> None:
    data = os.urandom(5 * CHUNK)
    setup.server.faults = FaultPlan(ignore_range=True, flip_offset=3 * CHUNK + 1, flip_count=2)
    done: list[int] = []
    progress: list[int] = []
    engine._on_progress = progress.append
    res = await engine.fetch(setup.task("norange-flip", data, on_chunk_done=done.append))
    assert (setup.tmp / "norange-flip.part").read_bytes() == data
    assert engine.stats.corrupt_chunks == 1  # The probe consumed the first flip.
    assert engine.stats.range_fallbacks == 1
    assert res.retries == 1
    assert sorted(done) == list(range(5))  # Each chunk accepted exactly once.
    assert sum(progress) == len(data)


async def test_fallback_survives_reset_mid_stream(setup: Setup, engine: TransferEngine) -> None:
    data = os.urandom(6 * CHUNK)
    setup.server.faults = FaultPlan(ignore_range=True, reset_after=3 * CHUNK + 100, reset_count=2)
    done: list[int] = []
    await engine.fetch(setup.task("norange-reset", data, on_chunk_done=done.append))
    assert (setup.tmp / "norange-reset.part").read_bytes() == data
    assert sorted(done) == list(range(6))


async def test_known_non_ranging_reader_skips_probe(setup: Setup, engine: TransferEngine) -> None:
    data = os.urandom(3 * CHUNK)
    setup.server.faults = FaultPlan(ignore_range=True)
    task = setup.task("known", data)
    task.reader.supports_ranges = False
    await engine.fetch(task)
    assert setup.server.stats.get_requests == 1
    assert task.dest.read_bytes() == data


# --------------------------------------------------------------------------- resume


def _partial(
    task: FileTask, data: bytes, keep: Sequence[int], *, corrupt: Sequence[int] = ()
) -> None:
    """Write a partial dest: chunks in ``keep`` hold real data, the rest garbage."""
    buf = bytearray(os.urandom(len(data)))
    for i, (a, b) in enumerate(chunk_bounds(len(data), task.chunk_size)):
        if i in keep:
            buf[a:b] = data[a:b]
        if i in corrupt:
            buf[a] ^= 0xFF
    task.dest.write_bytes(bytes(buf))


async def test_resume_fetches_only_missing_chunks(setup: Setup, engine: TransferEngine) -> None:
    data = os.urandom(5 * CHUNK + 10)
    task = setup.task("resume", data, compute_sha256=True)
    _partial(task, data, keep=[0, 2, 5])
    task.done_chunks = {0, 2, 5}
    res = await engine.fetch(task)
    assert task.dest.read_bytes() == data
    assert res.chunks == tuple(chunks_of(data))
    assert res.sha256 == hashlib.sha256(data).hexdigest()
    assert served_chunks(setup.server, "resume") == [1, 3, 4]
    assert setup.server.stats.bytes_served == 3 * CHUNK
    assert res.bytes_fetched == 3 * CHUNK


async def test_resumed_chunk_corrupt_on_disk_is_refetched(
    setup: Setup, engine: TransferEngine
) -> None:
    data = os.urandom(4 * CHUNK)
    task = setup.task("resume-bad", data)
    _partial(task, data, keep=[0, 1, 2], corrupt=[1])
    task.done_chunks = [0, 1, 2]
    await engine.fetch(task)
    assert task.dest.read_bytes() == data
    assert served_chunks(setup.server, "resume-bad") == [1, 3]
    assert engine.stats.corrupt_chunks == 1


async def test_resume_of_short_dest_refetches(setup: Setup, engine: TransferEngine) -> None:
    data = os.urandom(3 * CHUNK)
    task = setup.task("resume-short", data)
    task.dest.write_bytes(data[: CHUNK + 10])  # Crashed before preallocation finished.
    task.done_chunks = [0, 1, 2]
    await engine.fetch(task)
    assert task.dest.read_bytes() == data
    assert served_chunks(setup.server, "resume-short") == [1, 2]


async def test_resume_trusted_without_verification(setup: Setup) -> None:
    data = os.urandom(3 * CHUNK)
    task = setup.task("trusted", data)
    _partial(task, data, keep=[0, 1, 2])
    task.done_chunks = [0, 1, 2]
    async with TransferEngine(TransferConfig(verify_resumed_chunks=False)) as eng:
        res = await eng.fetch(task)
    assert setup.server.stats.requests == 0
    assert res.chunks == tuple(chunks_of(data))


def test_task_validation(tmp_path: Path) -> None:
    async def run(task: FileTask) -> None:
        async with TransferEngine() as eng:
            await eng.fetch(task)

    reader = HttpRangeReader(HttpClient(), "http://127.0.0.1:1/x", 10)
    bad: list[Callable[[], FileTask]] = [
        lambda: FileTask(reader, 10, tmp_path / "a", 4, expected_chunks=["x"]),
        lambda: FileTask(reader, 10, tmp_path / "a", 4, done_chunks=[0]),
        lambda: FileTask(reader, 10, tmp_path / "a", 0),
        lambda: FileTask(reader, 10, tmp_path / "a", 4, expected_chunks=["a"] * 3, done_chunks=[3]),
    ]
    for make in bad:
        with pytest.raises(ValueError):
            asyncio.run(run(make()))
    with pytest.raises(ValueError):
        TransferConfig(max_connections=0)


# --------------------------------------------------------------------------- lifecycle


async def test_cancelled_fetch_leaves_nothing_running(setup: Setup) -> None:
    data = os.urandom(6 * CHUNK)
    setup.server.faults = FaultPlan(stall_after=1000, stall_seconds=5.0, stall_count=100)
    eng = TransferEngine(CONFIG)
    fetch = asyncio.ensure_future(eng.fetch(setup.task("cancel", data)))
    await asyncio.sleep(0.1)
    fetch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await fetch
    await eng.close()
    await eng.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("bdn-io")]
    with pytest.raises(RuntimeError):
        await eng.fetch(setup.task("after-close", data))


async def test_error_in_one_file_cancels_the_others(setup: Setup, engine: TransferEngine) -> None:
    good = setup.task("good", os.urandom(8 * CHUNK))
    bad = setup.task("bad", os.urandom(CHUNK))
    setup.server.remove("bad")
    with pytest.raises(NotFound):
        await engine.fetch_all([good, bad])
    assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


async def test_transfer_errors_are_transfer_errors(setup: Setup, engine: TransferEngine) -> None:
    setup.server.faults = FaultPlan(reset_after=100, reset_count=1000)
    with pytest.raises(TransferError, match="model/doomed: chunk 0"):
        await engine.fetch(setup.task("doomed", os.urandom(CHUNK)))


async def test_missing_dest_directory(setup: Setup, engine: TransferEngine) -> None:
    task = setup.task("nodir", os.urandom(10))
    task.dest = setup.tmp / "absent" / "nodir.part"
    with pytest.raises(FileNotFoundError, match="model/nodir: preparing the destination"):
        await engine.fetch(task)
