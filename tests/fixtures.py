"""Factory helpers shared by the test modules (docs/DESIGN.md, "Conventions")."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bdn.backends import open_store
from bdn.cache import NodeCache
from bdn.manifest import Manifest
from bdn.pull import DEFAULT_PULL_OPTIONS, PullOptions, PullResult, pull_manifest


def pattern_bytes(seed: int, size: int) -> bytes:
    """Deterministic bytes that differ per seed (a repeated 64-byte pattern)."""
    block = seed.to_bytes(4, "big") * 16
    return (block * (size // len(block) + 1))[:size]


def make_model(root: Path, files: Mapping[str, bytes]) -> Path:
    """Write a model directory tree; returns its root."""
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str


def bdn_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal environment for a `bdn` subprocess: no developer settings leak in."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BDN_", "AWS_", "HF_", "STORAGE_EMULATOR_HOST"))
    }
    env["HOME"] = str(home)
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    env.update(extra or {})
    return env


def run_bdn(
    *args: str, home: Path, env: Mapping[str, str] | None = None, timeout: float = 120
) -> CliResult:
    """Run ``python -m bdn ARGS`` as a real process, as a user would."""
    proc = subprocess.run(
        [sys.executable, "-m", "bdn", *args],
        capture_output=True,
        text=True,
        env=bdn_env(home, env),
        timeout=timeout,
        check=False,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


async def pull_from(manifest: Manifest, mount: Path, store_uri: str, cache_dir: Path,
                    options: PullOptions = DEFAULT_PULL_OPTIONS,
                    **store_kw: Any) -> PullResult:
    """Pull ``manifest`` to ``mount`` in this process, from the store at ``store_uri``
    (opened with ``store_kw``) through the cache at ``cache_dir``; both closed after."""
    store = open_store(store_uri, **store_kw)
    cache = NodeCache(cache_dir)
    try:
        return await pull_manifest(manifest, mount, store=store, cache=cache, options=options)
    finally:
        cache.close()
        await store.close()
