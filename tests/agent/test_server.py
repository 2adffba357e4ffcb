"""The agent's pod and peer APIs, against an agent running in this process on real sockets."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bdn.agent.client import AgentClient, request_for, to_pull_result
from bdn.agent.main import Agent
from bdn.digest import xxh3_128_hex
from bdn.errors import AuthError, ConfigError, MountConflict, RefNotFound, TransferError
from bdn.manifest import Manifest
from tests.agent import in_process_agent
from tests.e2e.agents import (
    TOKEN,
    assert_same_tree,
    http_json,
    mirrored_model,
    origin_blob_bytes,
    parse_metrics,
    publish_store,
    unique_size,
)
from tests.fixtures import pattern_bytes
from tests.httpserver import FaultPlan, FaultServer

# Bigger than the origin's 64 KiB write piece, so its throttle (a sleep after
# each piece) really slows a chunk down.
CHUNK = 256 * 1024
MODEL = {
    "config.json": b'{"layers": 2}',
    "model-00001-of-00002.safetensors": pattern_bytes(11, 6 * CHUNK + 5),
    "model-00002-of-00002.safetensors": pattern_bytes(12, 4 * CHUNK),
    "copy/same.safetensors": pattern_bytes(12, 4 * CHUNK),
}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Harness:
    """A started in-process agent over a mirrored model, and ways to talk to it."""

    def __init__(self, agent: Agent, manifest: Manifest, src: Path, mounts: Path,
                 origin: FaultServer) -> None:
        self.agent = agent
        self.manifest = manifest
        self.src = src
        self.mounts = mounts
        self.origin = origin
        self.pod = f"unix://{agent.config.socket_path}"
        self.peer = "http://{}:{}".format(*agent.config.listen)

    def chunk_path(self, file_index: int = 1, chunk: int = 0) -> str:
        entry = self.manifest.files[file_index]
        return (f"/v1/chunks/{entry.sha256.hex}/{chunk}?size={entry.size}"
                f"&chunk_size={self.manifest.chunk_size}&xxh3={entry.chunks[chunk]}")

    async def wait_done(self, pull_id: str) -> dict[str, Any]:
        for _ in range(2000):
            code, body = await http_json(self.pod, "GET", f"/v1/pulls/{pull_id}")
            assert code == 200, body
            if body["state"] != "running":
                return dict(body)
            await asyncio.sleep(0.02)
        raise AssertionError(f"pull {pull_id} did not finish")


@pytest.fixture
async def harness(tmp_path: Path, fault_server: FaultServer) -> AsyncIterator[Harness]:
    src, store_root, manifest = await mirrored_model(tmp_path, MODEL, CHUNK)
    origin = publish_store(fault_server, store_root)
    fault_server.reset_stats()
    async with in_process_agent(tmp_path, origin,
                                trees_roots=(tmp_path / "models",)) as agent:
        yield Harness(agent, manifest, src, tmp_path / "models", fault_server)


async def test_pull_by_manifest_then_by_source_with_progress(harness: Harness) -> None:
    mount = harness.mounts / "m"
    code, body = await http_json(harness.pod, "POST", "/v1/pulls",
                                 request_for(harness.manifest.id, mount))
    assert code == 202
    assert body["state"] == "running" and body["id"].startswith("pull-")
    done = await harness.wait_done(body["id"])
    unique = unique_size(harness.manifest)
    assert done["state"] == "succeeded", done
    assert done["manifest_id"] == harness.manifest.id
    assert done["mount_location"] == str(mount)
    assert done["bytes_total"] == done["bytes_done"] == unique
    assert done["bytes_from_origin"] == unique
    assert done["bytes_from_peers"] == 0
    assert done["bytes_from_node_cache"] == harness.manifest.total_size - unique
    assert done["error"] is None and done["seconds"] >= 0
    assert_same_tree(mount, MODEL)
    assert stat.S_IMODE((mount / "config.json").stat().st_mode) == 0o444

    # The same content by its source: the weights config names the mirrored
    # manifest, and the node cache already holds every blob.
    other = harness.mounts / "by-source"
    status = await AgentClient(harness.pod).pull(
        {"source": f"file://{harness.src}", "mount_location": str(other)}
    )
    result = to_pull_result(status)
    assert result.manifest_id == harness.manifest.id
    assert result.bytes_from_node_cache == harness.manifest.total_size
    assert result.bytes_from_origin == 0
    assert_same_tree(other, MODEL)


async def test_progress_moves_while_a_slow_origin_serves(harness: Harness) -> None:
    # Each chunk takes about a second; the tiny config.json lands long before.
    harness.origin.faults = FaultPlan(bytes_per_second=256 * 1024)
    seen: list[tuple[int, int]] = []
    status = await AgentClient(harness.pod, poll_interval=0.05).pull(
        request_for(harness.manifest.id, harness.mounts / "slow"),
        on_progress=lambda done, total: seen.append((done, total)),
    )
    unique = unique_size(harness.manifest)
    assert status["bytes_done"] == unique
    dones = [d for d, _ in seen]
    assert dones == sorted(dones), "bytes_done never goes back"
    assert any(0 < d < unique for d in dones), "progress was visible mid-pull"
    assert all(t in (0, unique) for _, t in seen)


async def test_identical_requests_share_one_pull(harness: Harness) -> None:
    harness.origin.faults = FaultPlan(bytes_per_second=512 * 1024)  # The pull takes a while.
    mount = harness.mounts / "shared"
    body = request_for(harness.manifest.id, mount)
    answers = await asyncio.gather(
        *(http_json(harness.pod, "POST", "/v1/pulls", body) for _ in range(5))
    )
    ids = {a[1]["id"] for a in answers}
    assert [a[0] for a in answers] == [202] * 5
    assert len(ids) == 1
    # Other content into the same mount while it runs: refused, not interleaved.
    code, err = await http_json(
        harness.pod, "POST", "/v1/pulls", request_for("sha256:" + "ab" * 32, mount)
    )
    assert code == 409 and str(mount) in err["error"]
    with pytest.raises(MountConflict):
        await AgentClient(harness.pod).pull(request_for("sha256:" + "ab" * 32, mount))
    done = await harness.wait_done(ids.pop())
    assert done["state"] == "succeeded"
    assert origin_blob_bytes(harness.origin) == unique_size(harness.manifest)
    # Once finished, the same request is a new (instant) pull.
    code, again = await http_json(harness.pod, "POST", "/v1/pulls", body)
    assert code == 202 and again["id"] != done["id"]


BAD_BODIES: dict[str, Any] = {
    "not json": "{nope",
    "a list": ["sha256:" + "a" * 64],
    "no mount": {"manifest_id": "sha256:" + "a" * 64},
    "relative mount": {"manifest_id": "sha256:" + "a" * 64, "mount_location": "models/m"},
    "dotdot mount": {"manifest_id": "sha256:" + "a" * 64, "mount_location": "/a/../b"},
    "root mount": {"manifest_id": "sha256:" + "a" * 64, "mount_location": "/"},
    "bad id": {"manifest_id": "sha256:xyz", "mount_location": "/m"},
    "id and source": {"manifest_id": "sha256:" + "a" * 64, "source": "s3://b/p",
                      "mount_location": "/m"},
    "neither": {"mount_location": "/m"},
    "unknown key": {"manifest_id": "sha256:" + "a" * 64, "mount_location": "/m", "x": 1},
    "bad patterns": {"source": "s3://b/p", "mount_location": "/m", "allow_patterns": "*.x"},
    "bad source": {"source": "ftp://b/p", "mount_location": "/m"},
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
async def test_bad_request_bodies_get_400_and_one_line(harness: Harness, body: Any) -> None:
    code, err = await http_json(harness.pod, "POST", "/v1/pulls", body)
    assert code == 400, err
    assert isinstance(err["error"], str) and err["error"] and "\n" not in err["error"]
    with pytest.raises(ConfigError):
        await AgentClient(harness.pod).pull(body if isinstance(body, dict) else {"x": body})


async def test_pulls_over_the_peer_port_need_the_token(harness: Harness) -> None:
    mount = harness.mounts / "tcp"
    status = await AgentClient(harness.peer, token=TOKEN).pull(
        request_for(harness.manifest.id, mount)
    )
    assert status["state"] == "succeeded"
    assert_same_tree(mount, MODEL)
    with pytest.raises(AuthError):
        await AgentClient(harness.peer, token="wrong").pull(request_for(harness.manifest.id,
                                                                        mount))


async def test_failed_pull_raises_the_agents_error(harness: Harness) -> None:
    with pytest.raises(RefNotFound, match="has not been mirrored"):
        await AgentClient(harness.pod).pull(
            {"source": "file:///never/mirrored", "mount_location": str(harness.mounts / "x")}
        )
    code, body = await http_json(harness.pod, "GET", "/v1/pulls/pull-unknown")
    assert code == 404 and "pull-unknown" in body["error"]


async def test_a_dead_agent_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(TransferError) as info:
        await AgentClient(f"unix://{tmp_path}/none.sock").pull(request_for("sha256:" + "a" * 64,
                                                                          "/m"))
    message = str(info.value)
    assert f"unix://{tmp_path}/none.sock" in message and "bdn agent" in message
    assert "\n" not in message


async def test_metrics_parse_on_both_ports(harness: Harness) -> None:
    await AgentClient(harness.pod).pull(request_for(harness.manifest.id, harness.mounts / "m"))
    for address in (harness.pod, harness.peer):
        code, text = await http_json(address, "GET", "/metrics")
        assert code == 200
        samples = parse_metrics(text)
        assert samples['bdn_pull_bytes_total{tier="origin"}'] == unique_size(harness.manifest)
        assert samples['bdn_pulls_total{outcome="succeeded"}'] == 1
        assert samples['bdn_pull_duration_seconds_count{outcome="succeeded"}'] == 1
        assert samples['bdn_origin_requests_total{kind="range"}'] >= 1
        for name in ("bdn_single_flight_coalesced_waiters_total", "bdn_peer_failures_total",
                     "bdn_corrupt_chunks_from_peers_total", "bdn_node_cache_bytes",
                     "bdn_node_cache_evictions_total", "bdn_chunk_cache_bytes",
                     "bdn_ring_members"):
            assert name in samples, name


async def test_healthz_on_both(harness: Harness) -> None:
    for address in (harness.pod, harness.peer):
        code, body = await http_json(address, "GET", "/healthz")
        assert code == 200
        assert body["status"] == "ok" and body["members"] == [harness.agent.config.advertise]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
     {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": TOKEN}],
    ids=["missing", "wrong", "not bearer", "longer", "no scheme"],
)
async def test_peer_route_refuses_a_bad_token_and_serves_nothing(
    harness: Harness, headers: dict[str, str]
) -> None:
    code, body = await http_json(harness.peer, "GET", harness.chunk_path(), headers=headers)
    assert code == 401
    assert set(body) == {"error"}
    assert harness.origin.stats.get_requests == 0, "origin was not even asked"
    assert harness.agent.chunks is not None and harness.agent.chunks.stats.origin_fetches == 0
    # The pull API on the peer port is behind the same token.
    code, _ = await http_json(harness.peer, "POST", "/v1/pulls",
                              request_for(harness.manifest.id, "/m"), headers=headers)
    assert code == 401


async def test_peer_route_serves_the_verified_chunk(harness: Harness) -> None:
    entry = harness.manifest.files[1]
    async with aiohttp.ClientSession() as s:
        for _ in range(3):  # The first from origin, the others from the chunk cache.
            async with s.get(harness.peer + harness.chunk_path(1, 2),
                             headers={**AUTH, "X-BDN-Forwarded": "1"}) as resp:
                assert resp.status == 200
                data = await resp.read()
    assert xxh3_128_hex(data) == entry.chunks[2]
    assert data == MODEL[entry.path][2 * CHUNK : 3 * CHUNK]
    assert origin_blob_bytes(harness.origin) == CHUNK
    _, text = await http_json(harness.peer, "GET", "/metrics")
    samples = parse_metrics(text)
    assert samples['bdn_peer_requests_total{code="200"}'] == 3
    assert samples["bdn_peer_bytes_served_total"] == 3 * CHUNK


def _malformed(h: Harness) -> dict[str, str]:
    e = h.manifest.files[1]
    good = f"size={e.size}&chunk_size={CHUNK}&xxh3={e.chunks[0]}"
    return {
        "short digest": f"/v1/chunks/{e.sha256.hex[:10]}/0?{good}",
        "uppercase digest": f"/v1/chunks/{e.sha256.hex.upper()}/0?{good}",
        "negative index": f"/v1/chunks/{e.sha256.hex}/-1?{good}",
        "index past the end": f"/v1/chunks/{e.sha256.hex}/99?{good}",
        "no size": f"/v1/chunks/{e.sha256.hex}/0?chunk_size={CHUNK}&xxh3={e.chunks[0]}",
        "zero chunk size": f"/v1/chunks/{e.sha256.hex}/0?size={e.size}&chunk_size=0"
                           f"&xxh3={e.chunks[0]}",
        "bad xxh3": f"/v1/chunks/{e.sha256.hex}/0?size={e.size}&chunk_size={CHUNK}&xxh3=zz",
        "size not a number": f"/v1/chunks/{e.sha256.hex}/0?size=1e9&chunk_size={CHUNK}"
                             f"&xxh3={e.chunks[0]}",
    }


async def test_peer_route_rejects_malformed_parameters(harness: Harness) -> None:
    for name, path in _malformed(harness).items():
        code, body = await http_json(harness.peer, "GET", path, headers=AUTH)
        assert code == 400, name
        assert "\n" not in body["error"], name
        # Without a token the answer is 401 first: nothing about the request leaks.
        code, _ = await http_json(harness.peer, "GET", path)
        assert code == 401, name
    assert harness.origin.stats.get_requests == 0


async def test_peer_route_404_and_502_from_origin(harness: Harness) -> None:
    missing = (f"/v1/chunks/{'cd' * 32}/0?size=10&chunk_size={CHUNK}"
               f"&xxh3={'0' * 32}")
    code, body = await http_json(harness.peer, "GET", missing, headers=AUTH)
    assert code == 404, body
    harness.origin.faults = FaultPlan(status=403, status_count=10_000)
    code, body = await http_json(harness.peer, "GET", harness.chunk_path(), headers=AUTH)
    assert code == 502 and "origin" in body["error"]
