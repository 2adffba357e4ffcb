"""A mirror killed with SIGKILL at random points leaves a consistent store and finishes next run."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bdn.backends import open_store
from bdn.store import Store
from tests.fixtures import bdn_env, make_model, run_bdn

pytestmark = pytest.mark.stress

FILES = 12
FILE_SIZE = 6 * 1024 * 1024


def _blobs(store: Path) -> list[Path]:
    root = store / "blobs"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def _incomplete(store: Path) -> list[Path]:
    root = store / ".incomplete"
    return list(root.iterdir()) if root.exists() else []


def _assert_consistent(store: Path) -> None:
    # Every visible blob is whole and hashes to its name; no manifest points
    # at a missing blob.
    for blob in _blobs(store):
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name, blob
    report = asyncio.run(Store(open_store(f"file://{store}")).check(deep=True))
    assert report.ok, report.problems


def test_killed_mirror_completes_on_next_run(tmp_path: Path) -> None:
    rng = random.Random(20261122)
    src = make_model(
        tmp_path / "src",
        {f"model-{i:05d}.safetensors": os.urandom(FILE_SIZE) for i in range(FILES)},
    )
    killed_mid_run = 0
    for trial in range(5):
        store = tmp_path / f"store-{trial}"
        args = [
            sys.executable,
            "-m",
            "bdn",
            "mirror",
            str(src),
            "--store",
            f"file://{store}",
            "--chunk-size",
            "1MiB",
        ]
        target = rng.randint(0, FILES - 2)  # kill once this many blobs are committed
        proc = subprocess.Popen(
            args, env=bdn_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if len(_blobs(store)) >= target and _incomplete(store):
                proc.send_signal(signal.SIGKILL)
                killed_mid_run += 1
                break
            time.sleep(0.002)
        proc.wait(timeout=60)
        assert not (store / "manifests").exists() or proc.returncode == 0
        _assert_consistent(store)

        done = run_bdn(
            "mirror", str(src), "--store", f"file://{store}", "--chunk-size", "1MiB", home=tmp_path
        )
        assert done.code == 0, done.stderr
        _assert_consistent(store)
        # The killed run's temp files were cleaned up by the next writer.
        assert _incomplete(store) == []
        assert len(_blobs(store)) == FILES
    assert killed_mid_run >= 3, "the mirror finished too fast to be killed mid-run"
