"""Single-flight: the blob lock excludes other tasks, threads and processes."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from pathlib import Path

import pytest

from bdn.cache import NodeCache, Partial, fill_blob
from bdn.cache.layout import CacheLayout
from bdn.cache.lock import try_file_lock, try_remove_lock_file
from bdn.digest import Digest
from tests.cache import CHUNK, entry_of, write_blob

DATA = b"single flight " * 40
DIGEST = Digest.of_bytes(DATA)


async def fetch_once(cache: NodeCache) -> str:
    """What a pull does per blob (the cache's write path): fetch unless someone already did."""

    async def slowly(partial: Partial) -> int:
        # Write slowly, so any waiter that got in would find a half file.
        with open(partial.path, "wb") as f:
            for i in range(0, len(DATA), 64):
                f.write(DATA[i : i + 64])
                await asyncio.sleep(0.005)
        return len(DATA)

    fetched = await fill_blob(cache, entry_of(DATA), CHUNK, slowly)
    return "hit" if fetched is None else "fetched"


def _process_fetch(root: str, start: float, out: multiprocessing.SimpleQueue) -> None:
    time.sleep(max(0.0, start - time.time()))
    with NodeCache(Path(root)) as cache:
        out.put(asyncio.run(fetch_once(cache)))


def test_tasks_threads_and_processes_share_one_fetch(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    ctx = multiprocessing.get_context("fork")
    results: multiprocessing.SimpleQueue = ctx.SimpleQueue()
    start = time.time() + 0.3  # Everyone starts together, once the processes are up.
    procs = [ctx.Process(target=_process_fetch, args=(str(root), start, results))
             for _ in range(2)]
    for p in procs:
        p.start()
    cache = NodeCache(root)
    thread_results: list[str] = []

    def in_thread() -> None:  # Its own event loop, sharing the cache object.
        time.sleep(max(0.0, start - time.time()))
        thread_results.append(asyncio.run(fetch_once(cache)))

    threads = [threading.Thread(target=in_thread) for _ in range(2)]
    for t in threads:
        t.start()

    async def tasks() -> list[str]:
        await asyncio.sleep(max(0.0, start - time.time()))
        return list(await asyncio.gather(*(fetch_once(cache) for _ in range(3))))

    outcomes = asyncio.run(tasks())
    for t in threads:
        t.join(10)
    for p in procs:
        p.join(10)
        assert p.exitcode == 0
    outcomes += thread_results + [results.get() for _ in procs]
    assert sorted(outcomes) == ["fetched"] + ["hit"] * 6
    assert cache.blob_path(DIGEST).read_bytes() == DATA
    cache.close()


def test_a_second_process_waits_for_the_holder(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "cache")
    ctx = multiprocessing.get_context("fork")
    results: multiprocessing.SimpleQueue = ctx.SimpleQueue()

    async def hold_and_fill() -> None:
        async with cache.lock(DIGEST):
            proc = ctx.Process(target=_process_fetch, args=(str(cache.root), 0.0, results))
            proc.start()
            await asyncio.sleep(0.3)
            assert results.empty()  # Still waiting on our lock.
            write_blob(cache, DATA)
        await asyncio.to_thread(proc.join, 10)
        assert proc.exitcode == 0

    asyncio.run(hold_and_fill())
    assert results.get() == "hit"
    cache.close()


def test_a_thread_with_its_own_loop_is_excluded(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "cache")
    inside = threading.Event()
    got: list[float] = []

    async def holder() -> float:
        async with cache.lock(DIGEST):
            inside.set()
            await asyncio.sleep(0.2)
            return time.monotonic()

    def other() -> None:
        inside.wait(5)

        async def take() -> None:
            async with cache.lock(DIGEST):
                got.append(time.monotonic())

        asyncio.run(take())

    t = threading.Thread(target=other)
    t.start()
    released = asyncio.run(holder())
    t.join(5)
    assert got and got[0] >= released
    cache.close()


async def test_a_cancelled_waiter_releases_nothing(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "cache")
    lock_file = CacheLayout(cache.root).blob_lock(DIGEST)
    async with cache.lock(DIGEST):
        waiter = asyncio.create_task(fetch_once(cache))
        await asyncio.sleep(0.05)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        with try_file_lock(lock_file) as held:
            assert not held  # We still hold it; the waiter gave up only its own wait.
    with try_file_lock(lock_file) as held:
        assert held
    cache.close()


async def test_gc_removing_a_lock_file_never_lets_two_holders_in(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "cache")
    lock_file = CacheLayout(cache.root).blob_lock(DIGEST)
    async with cache.lock(DIGEST):
        assert not try_remove_lock_file(lock_file)  # Held: left alone.
        waiter = asyncio.create_task(fetch_once(cache))
        await asyncio.sleep(0.02)  # The waiter now polls a descriptor of this inode.
    # No await from here on until we hold the lock again, so the waiter cannot
    # run: gc removes the idle file and we lock a fresh one at the same path.
    assert try_remove_lock_file(lock_file)
    async with cache.lock(DIGEST):
        # The waiter's next poll locks the old, unlinked inode; it must notice
        # and queue behind us on the new file instead of entering.
        await asyncio.sleep(0.1)
        assert not waiter.done()
        write_blob(cache, DATA)
    assert await waiter == "hit"
    cache.close()
