"""The Python API as a model calls it: in-process, embedded mode, no agent."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import bdn
from bdn.errors import ConfigError
from tests.fixtures import make_model, pattern_bytes
from tests.httpserver import FaultPlan, FaultServer

FILES = {
    "config.json": b'{"a": 1}',
    "model.safetensors": pattern_bytes(3, 300_000),
    "tokenizer/vocab.json": b"{}",
}


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BDN_STORE", f"file://{tmp_path / 'store'}")
    monkeypatch.setenv("BDN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_ensure_weights_mirrors_then_pulls_in_embedded_mode(env: Path) -> None:
    src = make_model(env / "src", FILES)
    seen: list[tuple[int, int]] = []
    path = bdn.ensure_weights(
        str(src), env / "models" / "m", on_progress=lambda done, total: seen.append((done, total))
    )
    assert path == env / "models" / "m"
    assert _tree(path) == FILES
    assert seen and seen[-1][0] == seen[-1][1] == sum(len(v) for v in FILES.values())
    # A second call is served from the node cache and the existing tree.
    assert bdn.ensure_weights(str(src), env / "models" / "m") == path


def test_patterns_and_default_mount_location(env: Path) -> None:
    src = make_model(env / "src", FILES)
    path = bdn.ensure_weights(f"file://{src}", allow_patterns=["*.safetensors"])
    assert path.is_relative_to(env / "cache")
    assert _tree(path) == {"model.safetensors": FILES["model.safetensors"]}


def test_prefetch_then_wait(env: Path) -> None:
    src = make_model(env / "src", FILES)
    handle = bdn.prefetch_weights(str(src), env / "m")
    path = handle.wait(timeout=60)
    assert handle.done() and _tree(path) == FILES


def test_prefetch_reports_errors_at_wait_and_bad_input_at_once(env: Path) -> None:
    with pytest.raises(ConfigError, match="allow_patterns"):
        bdn.prefetch_weights(str(env), env / "m", allow_patterns="*.bin")  # type: ignore[arg-type]
    handle = bdn.prefetch_weights(str(env / "missing"), env / "m")
    with pytest.raises(FileNotFoundError, match="missing"):
        handle.wait(timeout=60)


def test_ensure_weights_from_config_dict(env: Path) -> None:
    a = make_model(env / "a", {"w.bin": b"A" * 100})
    b = make_model(env / "b", {"w.bin": b"B" * 100})
    paths = bdn.ensure_weights_from_config(
        {
            "weights": [
                {"source": f"file://{a}", "mount_location": str(env / "ma")},
                {"source": f"file://{b}", "mount_location": str(env / "mb")},
            ]
        }
    )
    assert [_tree(p) for p in paths] == [{"w.bin": b"A" * 100}, {"w.bin": b"B" * 100}]


def test_works_from_inside_a_running_event_loop(env: Path) -> None:
    src = make_model(env / "src", FILES)

    async def load() -> Path:
        return bdn.ensure_weights(str(src), env / "m")

    assert _tree(asyncio.run(load())) == FILES


def test_threads_pulling_the_same_model_share_one_download(
    env: Path, fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_model(env / "src", FILES)
    bdn.ensure_weights(str(src), env / "warm")  # Mirrors into the file store.
    # Serve that store over HTTP (counting bytes) and pull from it, cold.
    store_root = env / "store"
    for path in store_root.rglob("*"):
        if path.is_file() and ".incomplete" not in path.parts:
            fault_server.put(path.relative_to(store_root).as_posix(), path)
    monkeypatch.setenv("BDN_STORE", fault_server.base_url)
    monkeypatch.setenv("BDN_CACHE_DIR", str(env / "cold-cache"))
    fault_server.faults = FaultPlan(bytes_per_second=1024 * 1024)  # Make them overlap.
    results: list[Path] = []
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results.append(bdn.ensure_weights(str(src), env / f"t{i}"))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 4 and all(_tree(p) == FILES for p in results)
    blob_bytes = sum(n for name, n in fault_server.stats.bytes_by_object.items()
                     if name.startswith("blobs/"))
    assert blob_bytes == sum(len(v) for v in FILES.values())


def test_with_bdn_agent_set_the_agent_needs_a_mount_location(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The agent writes on the node: it needs a path; the pull itself is tested
    # against a real agent in tests/e2e/test_clients.py.
    monkeypatch.setenv("BDN_AGENT", "unix:///nonexistent.sock")
    with pytest.raises(ConfigError, match="mount_location"):
        bdn.ensure_weights(str(env))


def test_mirror_then_pull_by_id_through_the_orchestrator(env: Path) -> None:
    # The calls `bdn mirror` and `bdn pull` make: one flow for the CLI and the API.
    from bdn import api
    from bdn.config.settings import Settings

    src = make_model(env / "src", FILES)
    settings = Settings.from_env(os.environ)
    entry = api.weights_entry(str(src), where="bdn mirror")
    labels: list[str] = []
    seen: list[tuple[int, int]] = []
    [mirrored] = asyncio.run(
        api.mirror_weights(
            [entry], settings, on_begin=labels.append, on_progress=lambda d, t: seen.append((d, t))
        )
    )
    assert seen[-1] == (mirrored.bytes_transferred, mirrored.bytes_transferred)
    result = asyncio.run(
        api.pull_weights(mirrored.manifest_id, settings, mount=env / "m", on_begin=labels.append)
    )
    assert result.manifest_id == mirrored.manifest_id and _tree(env / "m") == FILES
    assert labels == [f"mirror {entry.source}", f"pull {mirrored.manifest_id[:19]}…"]
    with pytest.raises(ConfigError, match="mount"):
        asyncio.run(api.pull_weights(mirrored.manifest_id, settings))


def test_pulling_does_not_load_the_mirror() -> None:
    # Only bdn.api decides to mirror first, and it imports bdn.mirror when it does.
    script = "import sys, bdn.api, bdn.pull; print('bdn.mirror' in sys.modules)"
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert proc.stdout.strip() == "False"
