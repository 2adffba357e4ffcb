"""Resume and stalls end to end: a killed `bdn pull` keeps what it received, a
silent origin fails within its stall budget, and a full disk says so.

The kill test is driven by barriers, not timing: the origin pauses once it has
served a known number of bytes (``FaultPlan.pause_after``), the test waits until
the pull's partial records account for what was served (bounded), then
SIGKILLs it and counts what the resume fetches from the origin.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bdn.backends import open_store
from bdn.cache import NodeCache
from bdn.cache.layout import CacheLayout
from bdn.cache.partial import read_progress
from bdn.errors import InsufficientSpace, StallError
from bdn.http import HttpClient, HttpConfig, RetryPolicy
from bdn.manifest import Manifest
from bdn.pull import PullOptions, pull_manifest
from bdn.transfer import TransferConfig
from tests.e2e.agents import mirrored_model, origin_blob_bytes, publish_store
from tests.fixtures import bdn_env
from tests.httpserver import FaultPlan, FaultServer
from tests.test_pull import assert_tree
from tests.test_pull import small_fs as small_fs  # The suite's tmpfs fixture (root only).

MiB = 1024 * 1024
SEGMENT = TransferConfig().segment_size  # What `bdn pull` writes and records at a time.


def recorded_bytes(cache_dir: Path, manifest: Manifest) -> int:
    """Bytes a resume may keep: committed blobs, verified chunks, recorded prefixes."""
    layout, total = CacheLayout(cache_dir), 0
    for entry in {e.sha256: e for e in manifest.files}.values():
        if layout.blob(entry.sha256).exists():
            total += entry.size
            continue
        _, done, prefixes = read_progress(layout.record(entry.sha256))
        chunk = manifest.chunk_size
        total += sum(min(chunk, entry.size - i * chunk) for i in done)
        total += sum(n for n, _ in prefixes.values())
    return total


def wait_for(condition: object, what: str, limit: float = 60.0) -> None:
    """Poll ``condition()`` until true; fail after ``limit`` seconds (a hang, not a speed)."""
    deadline = time.monotonic() + limit
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_killed_pull_resumes_inside_chunks(tmp_path: Path, fault_server: FaultServer) -> None:
    files = {f"shard-{i}.bin": os.urandom(40 * MiB + i) for i in range(2)}
    _, store_root, manifest = asyncio.run(mirrored_model(tmp_path, files, 16 * MiB))
    base = publish_store(fault_server, store_root)
    total = sum(len(v) for v in files.values())
    cache, mount = tmp_path / "cache", tmp_path / "m"
    args = [sys.executable, "-m", "bdn", "pull", manifest.id, "--to", str(mount),
            "--store", base, "--cache", str(cache)]
    fault_server.reset_stats()
    fault_server.faults = FaultPlan(pause_after=total * 2 // 5)  # ~40% of the blobs
    proc = subprocess.Popen(args, env=bdn_env(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        assert fault_server.paused.wait(60), "the origin never reached its barrier"
        # Every response is held now; each in flight may have < 1 segment unwritten.
        wait_for(lambda: recorded_bytes(cache, manifest) >= origin_blob_bytes(fault_server)
                 - fault_server.stats.in_flight * SEGMENT, "the pull to record what it got")
        in_flight, served = fault_server.stats.in_flight, origin_blob_bytes(fault_server)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert not mount.exists() and 0 < served < total
    wait_for(lambda: fault_server.stats.in_flight == 0, "the origin to see the client gone")
    fault_server.faults = FaultPlan()
    fault_server.reset_stats()
    done = subprocess.run(args, env=bdn_env(tmp_path), capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert_tree(mount, files)
    refetched = origin_blob_bytes(fault_server)
    # At most what was not yet served, plus one segment per chunk in flight.
    assert refetched <= total - served + in_flight * SEGMENT, (refetched, served, in_flight)


async def test_persistent_stall_fails_within_its_stall_budget(
    tmp_path: Path, fault_server: FaultServer
) -> None:
    files = {"model.bin": os.urandom(4 * 64 * 1024)}
    _, store_root, manifest = await mirrored_model(tmp_path, files, 64 * 1024)
    base = publish_store(fault_server, store_root)
    blob = manifest.files[0].sha256.hex
    path = f"blobs/sha256/{blob[:2]}/{blob}"
    fault_server.faults = FaultPlan(stall_headers_count=1_000_000, path=path)
    policy = RetryPolicy(max_attempts=50, base_delay=0.01, max_stalls=2)
    options = PullOptions(transfer=TransferConfig(retry=policy))
    http = HttpClient(HttpConfig(stall_timeout=0.2, connect_timeout=2.0))
    store, cache = open_store(base, http=http), NodeCache(tmp_path / "cache")
    try:
        with pytest.raises(StallError) as info:
            await pull_manifest(manifest, tmp_path / "m", store=store, cache=cache,
                                options=options)
    finally:
        cache.close()
        await store.close()
        await http.close()
    message = str(info.value)
    assert "no data within the stall timeout" in message
    assert "gave up after 2 stalled attempts" in message and "model.bin" in message
    gets = sum(1 for name, _, _ in fault_server.stats.ranges if name == path)
    chunks = len(manifest.files[0].chunks)
    assert gets <= chunks * policy.max_stalls  # not max_attempts per chunk


def test_full_disk_under_the_index_says_disk_full(small_fs: Path) -> None:
    with NodeCache(small_fs / "cache") as cache:
        cache._index.blobs()  # Opens index.db while there is room.
        hog = small_fs / "hog"
        with open(hog, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError:
                pass
        rows = [(f"{i:064x}", i, 0.0) for i in range(20_000)]
        with pytest.raises(InsufficientSpace) as info:
            cache._index.put_blobs(rows)
    message = str(info.value)
    assert "full" in message and "free space" in message
    assert "delete" not in message and "corrupt" not in message
    assert info.value.needed > info.value.free
    assert f"need {info.value.needed} bytes" in message
