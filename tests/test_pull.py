"""Pull end to end against real origins: the file store, moto S3, and a faulty HTTP origin."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from bdn.backends import open_store
from bdn.cache import NodeCache
from bdn.errors import AuthError, CacheError, InsufficientSpace, NotFound
from bdn.http import HttpClient, HttpConfig, RetryPolicy
from bdn.manifest import Manifest
from bdn.pull import PullOptions, PullResult, pull_manifest
from bdn.transfer import TransferConfig
from tests.conftest import MotoS3
from tests.e2e.agents import mirror_into, mirrored_model, publish_store
from tests.fixtures import make_model, pattern_bytes, pull_from
from tests.httpserver import FaultPlan, FaultServer

CHUNK = 64 * 1024
MODEL = {
    "config.json": b'{"layers": 2}',
    "model-00001-of-00002.safetensors": pattern_bytes(1, 5 * CHUNK + 17),
    "model-00002-of-00002.safetensors": pattern_bytes(2, 3 * CHUNK),
    "tokenizer/tokenizer.json": b"{}",
    "tokenizer/empty.txt": b"",
    "copy/model-00002.safetensors": pattern_bytes(2, 3 * CHUNK),  # same content, other path
}
# A short stall timeout and quick retries keep the fault tests fast.
FAST = PullOptions(transfer=TransferConfig(retry=RetryPolicy(max_attempts=6, base_delay=0.01)))


async def mirror_model(tmp_path: Path, files: dict[str, bytes] = MODEL) -> tuple[Path, Manifest]:
    """Mirror a model into a file store under ``tmp_path``; return the store root and manifest."""
    _, store_root, manifest = await mirrored_model(tmp_path, files, CHUNK)
    return store_root, manifest


def assert_tree(mount: Path, files: dict[str, bytes] = MODEL) -> None:
    found = {p.relative_to(mount).as_posix(): p for p in mount.rglob("*") if p.is_file()}
    assert set(found) == set(files)
    for rel, p in found.items():
        assert p.read_bytes() == files[rel], rel
        assert stat.S_IMODE(p.stat().st_mode) == 0o444, rel
    for d in [mount, *(p for p in mount.rglob("*") if p.is_dir())]:
        assert stat.S_IMODE(d.stat().st_mode) == 0o555, d


async def pull(
    manifest: Manifest,
    mount: Path,
    store_uri: str,
    cache_dir: Path,
    options: PullOptions = FAST,
    **store_kw: object,
) -> PullResult:
    return await pull_from(manifest, mount, store_uri, cache_dir, options, **store_kw)


async def test_pull_from_file_store_then_again_is_instant(tmp_path: Path) -> None:
    store_root, manifest = await mirror_model(tmp_path)
    mount = tmp_path / "models" / "m"
    first = await pull(manifest, mount, f"file://{store_root}", tmp_path / "cache")
    assert_tree(mount)
    unique = sum({f.sha256: f.size for f in manifest.files}.values())
    assert first.bytes_from_origin == unique
    assert first.bytes_from_node_cache == manifest.total_size - unique
    # Same content at two paths is one blob, linked twice.
    a = mount / "model-00002-of-00002.safetensors"
    b = mount / "copy" / "model-00002.safetensors"
    assert a.stat().st_ino == b.stat().st_ino

    again = await pull(manifest, mount, f"file://{store_root}", tmp_path / "cache")
    assert again.bytes_from_origin == 0
    assert again.bytes_from_node_cache == manifest.total_size
    assert again.materialized == "unchanged"
    assert_tree(mount)


async def test_pull_from_moto_s3_store(
    tmp_path: Path, moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in moto_s3.env().items():
        monkeypatch.setenv(k, v)
    bucket = moto_s3.make_bucket("pull-origin")
    src = make_model(tmp_path / "src", MODEL)
    store = open_store(f"s3://{bucket}/bdn", endpoint_url=moto_s3.endpoint_url)
    manifest = await mirror_into(store, src, CHUNK)
    mount = tmp_path / "m"
    out = await pull(
        manifest, mount, f"s3://{bucket}/bdn", tmp_path / "cache", endpoint_url=moto_s3.endpoint_url
    )
    assert_tree(mount)
    assert out.bytes_from_origin == sum({f.sha256: f.size for f in manifest.files}.values())


FAULTS = {
    "503 burst with Retry-After": FaultPlan(status=503, status_count=3, retry_after="0.01"),
    "429 burst": FaultPlan(status=429, status_count=3, retry_after="0"),
    "reset mid-body": FaultPlan(reset_after=CHUNK // 2, reset_count=3),
    "truncated body": FaultPlan(truncate_after=1000, truncate_count=3),
    "flipped bytes": FaultPlan(flip_offset=CHUNK + 5, flip_count=2),
    "stalled response": FaultPlan(stall_after=100, stall_seconds=2.0, stall_count=1),
    "ignores Range": FaultPlan(ignore_range=True),
    "wrong Content-Range": FaultPlan(wrong_range_count=2),
}


@pytest.mark.parametrize("plan", FAULTS.values(), ids=FAULTS.keys())
async def test_pull_through_origin_faults_ends_bit_exact(
    tmp_path: Path, fault_server: FaultServer, plan: FaultPlan
) -> None:
    store_root, manifest = await mirror_model(tmp_path)
    base = publish_store(fault_server, store_root)
    big = next(f for f in manifest.files if f.path.startswith("model-00001"))
    plan.path = f"blobs/sha256/{big.sha256.hex[:2]}/{big.sha256.hex}"
    fault_server.faults = plan
    # The stall test needs a stall timeout shorter than the stall.
    http = HttpClient(HttpConfig(stall_timeout=0.5, connect_timeout=2.0))
    mount = tmp_path / "m"
    try:
        await pull(manifest, mount, base, tmp_path / "cache", http=http)
    finally:
        await http.close()
    assert_tree(mount)
    if plan.ignore_range:  # Not a counted fault: the blob came as whole-body 200s.
        assert (plan.path, 0, big.size) in fault_server.stats.ranges
    else:
        assert fault_server.stats.faults_fired >= 1


@pytest.mark.parametrize(("status", "error"), [(403, AuthError), (404, NotFound)])
async def test_permanent_origin_error_is_clear_and_exposes_nothing(
    tmp_path: Path, fault_server: FaultServer, status: int, error: type[Exception]
) -> None:
    store_root, manifest = await mirror_model(tmp_path)
    base = publish_store(fault_server, store_root)
    fault_server.faults = FaultPlan(status=status, status_count=10_000)
    mount = tmp_path / "m"
    with pytest.raises(error) as info:
        await pull(manifest, mount, base, tmp_path / "cache")
    assert "model-0000" in str(info.value) or "blobs/sha256" in str(info.value)
    assert not mount.exists()
    cache = NodeCache(tmp_path / "cache")
    assert cache.verify().ok
    cache.close()


async def test_concurrent_pulls_in_one_process_fetch_each_blob_once(
    tmp_path: Path, fault_server: FaultServer
) -> None:
    store_root, manifest = await mirror_model(tmp_path)
    base = publish_store(fault_server, store_root)
    fault_server.reset_stats()
    mounts = [tmp_path / f"m{i}" for i in range(6)]
    results = await asyncio.gather(*(pull(manifest, m, base, tmp_path / "cache") for m in mounts))
    for m in mounts:
        assert_tree(m)
    unique = sum({f.sha256: f.size for f in manifest.files}.values())
    blob_bytes = sum(
        n for name, n in fault_server.stats.bytes_by_object.items() if name.startswith("blobs/")
    )
    assert blob_bytes == unique
    assert sum(r.bytes_from_origin for r in results) == unique


def test_pulls_ten_times_killed_resume_bit_exact(tmp_path: Path, fault_server: FaultServer) -> None:
    import random
    import signal
    import subprocess
    import sys
    import time

    from tests.fixtures import bdn_env

    files = {f"shard-{i}.bin": os.urandom(24 * CHUNK + i) for i in range(4)}
    store_root, manifest = asyncio.run(mirror_model(tmp_path, files))
    base = publish_store(fault_server, store_root)
    fault_server.reset_stats()
    fault_server.faults = FaultPlan(bytes_per_second=128 * 1024)
    cache, mount = tmp_path / "cache", tmp_path / "m"
    args = [
        sys.executable,
        "-m",
        "bdn",
        "pull",
        manifest.id,
        "--to",
        str(mount),
        "--store",
        base,
        "--cache",
        str(cache),
    ]
    rng = random.Random(5)
    killed = 0
    for _ in range(10):
        before = fault_server.stats.bytes_served
        proc = subprocess.Popen(
            args, env=bdn_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        wait = rng.uniform(0.02, 0.3)
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            if fault_server.stats.bytes_served > before:  # Transfer under way.
                time.sleep(wait)
                proc.send_signal(signal.SIGKILL)
                killed += 1
                break
            time.sleep(0.005)
        proc.wait(timeout=30)
        if mount.exists():  # Whatever was killed, a tree that exists is whole.
            assert_tree(mount, files)
    done = subprocess.run(
        args, env=bdn_env(tmp_path), capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert_tree(mount, files)
    assert killed == 10, "the pull finished before it could be killed ten times"
    # Re-fetched bytes: at most one chunk per request in flight at each kill.
    total = sum(len(v) for v in files.values())
    max_in_flight = TransferConfig().max_connections
    assert fault_server.stats.bytes_served - total <= killed * max_in_flight * CHUNK


_WORKER = """
import asyncio, sys
from pathlib import Path
from bdn.cache import NodeCache
from bdn.pull import pull_manifest
from bdn.backends import open_store
from bdn.store import Store

async def main(base, manifest_id, cache_dir, mounts):
    store = open_store(base)
    manifest = await Store(store).get_manifest(manifest_id)
    caches = [NodeCache(Path(cache_dir)) for _ in mounts]
    await asyncio.gather(*(pull_manifest(manifest, Path(m), store=store, cache=c)
                           for m, c in zip(mounts, caches)))
    for c in caches:
        c.close()
    await store.close()

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]))
"""


def test_sixteen_pulls_from_four_processes_fetch_the_model_once(
    tmp_path: Path, fault_server: FaultServer
) -> None:
    import subprocess
    import sys

    from tests.fixtures import bdn_env

    store_root, manifest = asyncio.run(mirror_model(tmp_path))
    base = publish_store(fault_server, store_root)
    fault_server.reset_stats()
    # Slow enough that the four processes really overlap.
    fault_server.faults = FaultPlan(bytes_per_second=2 * 1024 * 1024)
    procs = []
    for p in range(4):
        mounts = [str(tmp_path / f"p{p}-m{i}") for i in range(4)]
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _WORKER,
                    base,
                    manifest.id,
                    str(tmp_path / "cache"),
                    *mounts,
                ],
                env=bdn_env(tmp_path),
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    for p in range(4):
        for i in range(4):
            assert_tree(tmp_path / f"p{p}-m{i}")
    unique = sum({f.sha256: f.size for f in manifest.files}.values())
    blob_bytes = sum(
        n for name, n in fault_server.stats.bytes_by_object.items() if name.startswith("blobs/")
    )
    assert blob_bytes == unique


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, so a pull can run out of disk for real."""
    import subprocess

    root = tmp_path / "small"
    root.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(root)],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        reason = f"cannot mount a tmpfs here ({res.stderr.strip() or res.returncode})"
        print(f"SKIP disk-full tests: {reason}")
        pytest.skip(reason)
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


async def test_pull_larger_than_the_disk_fails_up_front(tmp_path: Path, small_fs: Path) -> None:
    files = {f"shard-{i}.bin": pattern_bytes(i, 1024 * 1024) for i in range(6)}
    store_root, manifest = await mirror_model(tmp_path, files)
    with pytest.raises(InsufficientSpace) as info:
        await pull(manifest, small_fs / "m", f"file://{store_root}", small_fs / "cache")
    err = info.value
    assert err.needed == 6 * 1024 * 1024 and err.free < err.needed
    assert str(err.needed) in str(err) or "MiB" in str(err)
    assert not (small_fs / "m").exists()
    with NodeCache(small_fs / "cache") as cache:
        assert cache.verify().ok and cache.ls() == []


async def test_disk_filling_up_mid_pull_is_a_clear_error_and_resumable(
    tmp_path: Path, small_fs: Path, fault_server: FaultServer
) -> None:
    files = {f"shard-{i:02d}.bin": pattern_bytes(i, 96 * 1024) for i in range(24)}
    store_root, manifest = await mirror_model(tmp_path, files)
    base = publish_store(fault_server, store_root)
    fault_server.faults = FaultPlan(bytes_per_second=1024 * 1024)
    hog = small_fs / "hog"

    def fill_disk(_delta: int) -> None:
        # Another writer takes every free byte once the pull is under way.
        if not hog.exists():
            free = os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize
            with open(hog, "wb") as f:
                f.write(b"\0" * max(free - 4096, 0))

    store, cache = open_store(base), NodeCache(small_fs / "cache")
    try:
        # ENOSPC may hit a blob's partial or the index (which records each
        # admission); either way the error says the disk is full, with need/free.
        with pytest.raises(CacheError, match=r"disk (filled up|holding .* is full)") as info:
            await pull_manifest(manifest, small_fs / "m", store=store, cache=cache,
                                options=FAST, on_progress=fill_disk)
        assert "free space" in str(info.value) and "delete" not in str(info.value)
        assert not (small_fs / "m").exists()
        assert cache.verify().ok
        hog.unlink()
        fault_server.faults = FaultPlan()
        await pull_manifest(manifest, small_fs / "m", store=store, cache=cache, options=FAST)
    finally:
        cache.close()
        await store.close()
    assert_tree(small_fs / "m", files)


async def test_blobs_unflushed_before_a_reboot_are_verified_before_use(tmp_path: Path) -> None:
    # Blobs are committed without fsync (a marker per boot says so). After a
    # reboot, a blob torn by a power cut must be caught, not linked into a tree.
    store_root, manifest = await mirror_model(tmp_path)
    cache_dir = tmp_path / "cache"
    await pull(manifest, tmp_path / "m1", f"file://{store_root}", cache_dir)
    boots = list((cache_dir / "unflushed").iterdir())
    marked = {p.name for p in boots[0].iterdir()}
    assert len(boots) == 1 and {f.sha256.hex for f in manifest.files if f.size} <= marked
    boots[0].rename(boots[0].with_name("an-earlier-boot"))  # as if the node rebooted
    torn = next(f for f in manifest.files if f.path.startswith("model-00001"))
    blob = cache_dir / "blobs" / "sha256" / torn.sha256.hex[:2] / torn.sha256.hex
    blob.chmod(0o644)
    with open(blob, "r+b") as f:  # The page cache never reached the disk: zeros.
        f.seek(CHUNK)
        f.write(b"\0" * CHUNK)

    again = await pull(manifest, tmp_path / "m2", f"file://{store_root}", cache_dir)
    assert again.bytes_from_origin == torn.size  # Only the torn blob came again.
    assert_tree(tmp_path / "m2")
    assert list((cache_dir / "unflushed" / "an-earlier-boot").iterdir()) == []
