"""``bdn csi`` driven as kubelet drives it: a real gRPC client on the plugin's socket,
a real ``bdn agent`` process behind it, and real read-only bind mounts.

Skipped, with the reason printed, where bind mounts are not permitted (not
root, or no CAP_SYS_ADMIN). Every mount a test makes is undone on the way
out, even when it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from bdn.backends import open_store
from bdn.csi import mounts
from bdn.csi.proto import csi_pb2 as pb
from bdn.manifest import Manifest
from tests.csi.plugin import (
    DRIVER,
    Kubelet,
    PluginProcess,
    mount_capable,
    node_agent,
    pod_target,
    start_plugin,
    unmount_all_under,
)
from tests.e2e.agents import (
    AgentProcess,
    assert_same_tree,
    mirror_into,
    mirrored_model,
    publish_store,
    short_dir,
)
from tests.fixtures import make_model, pattern_bytes, run_bdn
from tests.httpserver import FaultPlan, FaultServer

_WHY_NOT = mount_capable()
pytestmark = pytest.mark.skipif(_WHY_NOT is not None, reason=_WHY_NOT or "")

MODEL = {"config.json": b'{"n": 1}', "w/model-1.safetensors": pattern_bytes(5, 700_000),
         "w/model-2.safetensors": pattern_bytes(6, 300_000)}
OTHER = {"config.json": b'{"n": 2}', "w/other.safetensors": pattern_bytes(7, 400_000)}
CHUNK = 128 * 1024


@dataclass
class Node:
    """One node: an agent, the plugin beside it, and kubelet's view of both."""

    tmp: Path
    base: Path
    agent: AgentProcess
    plugin: PluginProcess
    kubelet: Kubelet
    model: Manifest
    trees_root: Path
    state_dir: Path
    pods: Path

    @property
    def csi_trees(self) -> Path:
        return self.trees_root / "csi"

    def holds(self) -> list[dict[str, object]]:
        d = self.state_dir / "holds"
        return [json.loads(p.read_text()) for p in sorted(d.glob("*.json"))] if d.exists() else []

    def attributes(self) -> dict[str, str]:
        return {"manifest_id": self.model.id}

    async def restart_plugin(self, *, kill: bool = True) -> None:
        """Kill (or stop) the plugin, start it again on the same state, wait for it."""
        if kill:
            self.plugin.kill()
        else:
            self.plugin.stop()
        await self.kubelet.close()
        self.plugin = start_plugin(self.base, agent=self.agent.agent_address,
                                   trees_root=self.trees_root, state_dir=self.state_dir)
        self.kubelet = Kubelet(self.plugin.socket)
        await self.kubelet.wait_ready(self.plugin)


@contextlib.asynccontextmanager
async def _node(tmp_path: Path, store: str, model: Manifest) -> AsyncIterator[Node]:
    trees_root, state_dir, pods = tmp_path / "trees", tmp_path / "csi-state", tmp_path / "pods"
    pods.mkdir()
    with short_dir() as base, unmount_all_under(tmp_path):
        async with node_agent(base, store, trees_root) as agent:
            plugin = start_plugin(base, agent=agent.agent_address, trees_root=trees_root,
                                  state_dir=state_dir)
            node = Node(tmp_path, base, agent, plugin, Kubelet(plugin.socket), model,
                        trees_root, state_dir, pods)
            try:
                await node.kubelet.wait_ready(plugin)
                yield node
            finally:
                await node.kubelet.close()
                node.plugin.kill()


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    _, store_root, model = await mirrored_model(tmp_path, MODEL, CHUNK)
    async with _node(tmp_path, f"file://{store_root}", model) as n:
        yield n


def _code(err: grpc.aio.AioRpcError) -> grpc.StatusCode:
    code: grpc.StatusCode = err.code()
    return code


# -- identity --------------------------------------------------------------------------


async def test_identity_and_node_info(node: Node) -> None:
    info = await node.kubelet.call("Identity", "GetPluginInfo", pb.GetPluginInfoRequest(),
                                   pb.GetPluginInfoResponse)
    assert info.name == DRIVER and info.vendor_version
    probe = await node.kubelet.call("Identity", "Probe", pb.ProbeRequest(), pb.ProbeResponse)
    assert probe.ready.value is True
    caps = await node.kubelet.call("Node", "NodeGetCapabilities",
                                   pb.NodeGetCapabilitiesRequest(),
                                   pb.NodeGetCapabilitiesResponse)
    assert list(caps.capabilities) == []  # No staging: ephemeral volumes publish directly.
    got = await node.kubelet.call("Node", "NodeGetInfo", pb.NodeGetInfoRequest(),
                                  pb.NodeGetInfoResponse)
    assert got.node_id == "node-1"


# -- publish / unpublish -------------------------------------------------------------------


async def test_publish_mounts_the_tree_read_only_and_unpublish_releases_it(node: Node) -> None:
    target = pod_target(node.pods)
    await node.kubelet.publish("csi-aaa", target, node.attributes())
    assert mounts.mount_state(target) == "ro"
    assert_same_tree(target, MODEL)
    with pytest.raises(OSError) as err:
        (target / "new-file").write_bytes(b"x")
    assert err.value.errno == errno.EROFS
    with pytest.raises(OSError) as err:
        (target / "config.json").unlink()
    assert err.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
    [hold] = node.holds()
    assert hold["state"] == "published" and hold["target"] == str(target)
    assert hold["pod"] == "default/model-0"

    # Again, as kubelet does after a restart of its own: nothing changes.
    await node.kubelet.publish("csi-aaa", target, node.attributes())
    assert mounts.mount_points_under(node.pods) == [str(target)]

    await node.kubelet.unpublish("csi-aaa", target)
    assert mounts.mount_points_under(node.pods) == []
    assert not target.exists(), "the mount directory the plugin made is removed"
    assert not (node.csi_trees / "csi-aaa").exists(), "the tree is released"
    assert node.holds() == []
    # Again: already released.
    await node.kubelet.unpublish("csi-aaa", target)


async def test_unpublish_of_an_unknown_volume_or_target_succeeds(node: Node) -> None:
    target = pod_target(node.pods)
    await node.kubelet.unpublish("csi-never", target)
    keep = pod_target(node.pods)
    keep.mkdir()
    (keep / "users-file").write_text("mine")
    await node.kubelet.unpublish("csi-never", keep)
    assert (keep / "users-file").read_text() == "mine", "nothing a user made is deleted"


async def test_two_pods_share_one_trees_blobs(node: Node) -> None:
    a, b = pod_target(node.pods), pod_target(node.pods)
    await node.kubelet.publish("csi-pod-a", a, node.attributes(), pod="default/a")
    await node.kubelet.publish("csi-pod-b", b, {"source": f"file://{node.tmp / 'src'}"},
                               pod="default/b")
    for rel in MODEL:
        assert os.stat(a / rel).st_ino == os.stat(b / rel).st_ino, rel
    await node.kubelet.unpublish("csi-pod-a", a)
    assert_same_tree(b, MODEL)  # One pod's release leaves the other's files alone.
    await node.kubelet.unpublish("csi-pod-b", b)


@pytest.mark.parametrize(("attributes", "words"), [
    ({}, "name the weights"),
    ({"source": "hf://org/repo", "manifest_id": "sha256:" + "a" * 64}, "not both"),
    ({"manifest_id": "sha256:" + "a" * 64, "allow_pattern": "*.json"}, "unknown volume attr"),
    ({"source": "hf://org/repo", "allow_patterns": '["*.json"'}, "not a JSON list"),
    ({"source": "nope://x"}, "volumeAttributes.source"),
    ({"manifest_id": "sha256:xyz"}, "manifest_id"),
])
async def test_bad_attributes_are_invalid_argument(
    node: Node, attributes: dict[str, str], words: str,
) -> None:
    target = pod_target(node.pods)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await node.kubelet.publish("csi-bad", target, attributes)
    assert _code(err.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert words in (err.value.details() or ""), err.value.details()
    assert "\n" not in (err.value.details() or "")
    assert node.holds() == [] and mounts.mount_points_under(node.pods) == []


async def test_a_bad_volume_id_or_target_is_invalid_argument(node: Node) -> None:
    target = pod_target(node.pods)
    for volume_id, path in (("../etc", target), ("csi-x", Path("relative/mount")),
                            ("csi-x", node.pods / "no-such-pod" / "mount")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await node.kubelet.publish(volume_id, path, node.attributes())
        assert _code(err.value) == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()


async def test_a_never_mirrored_source_is_not_found_and_leaves_nothing(node: Node) -> None:
    target = pod_target(node.pods)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await node.kubelet.publish("csi-nf", target, {"source": f"file://{node.tmp}/never"})
    assert _code(err.value) == grpc.StatusCode.NOT_FOUND, err.value.details()
    assert "mirror" in (err.value.details() or "")
    assert node.holds() == [] and not (node.csi_trees / "csi-nf").exists()
    assert mounts.mount_points_under(node.pods) == []


# -- eviction --------------------------------------------------------------------------------


async def test_eviction_spares_held_trees_and_takes_released_ones(node: Node) -> None:
    other = await mirror_into(open_store(f"file://{node.tmp / 'store'}"),
                              make_model(node.tmp / "src2", OTHER), CHUNK)
    held, released = pod_target(node.pods), pod_target(node.pods)
    await node.kubelet.publish("csi-held", held, node.attributes())
    await node.kubelet.publish("csi-released", released, {"manifest_id": other.id})
    assert_same_tree(released, OTHER)
    await node.kubelet.unpublish("csi-released", released)
    assert _cached(node) == _digests(node.model) | _digests(other)

    _gc(node)  # Evict everything evictable.
    assert_same_tree(held, MODEL)
    assert _cached(node) == _digests(node.model), "held blobs kept, released ones evicted"

    await node.kubelet.unpublish("csi-held", held)
    _gc(node)
    assert _cached(node) == set(), "once released, the last tree's blobs are evictable too"


def _digests(manifest: Manifest) -> set[str]:
    return {f.sha256.hex for f in manifest.files}


def _cached(node: Node) -> set[str]:
    return {p.name for p in (node.agent.cache / "blobs").rglob("*") if p.is_file()}


def _gc(node: Node) -> None:
    gc = run_bdn("cache", "gc", "--cache", str(node.agent.cache), "--max-cache-bytes", "0",
                 home=node.tmp)
    assert gc.code == 0, gc.stderr


# -- crashes ---------------------------------------------------------------------------------


async def test_plugin_killed_mid_publish_then_retried(tmp_path: Path) -> None:
    _, store_root, model = await mirrored_model(tmp_path, MODEL, CHUNK)
    with FaultServer() as origin:
        url = publish_store(origin, store_root)
        # Origin stops sending after 200 KB until released: the publish is stuck mid-pull.
        origin.faults = FaultPlan(pause_after=200_000)
        async with _node(tmp_path, url, model) as node:
            target = pod_target(node.pods)
            first = asyncio.create_task(node.kubelet.publish("csi-crash", target,
                                                             node.attributes()))
            await asyncio.to_thread(origin.paused.wait, 60)
            assert origin.paused.is_set()
            assert [h["state"] for h in node.holds()] == ["publishing"]
            assert not (node.csi_trees / "csi-crash").exists(), "no partial tree"
            node.plugin.kill()
            with pytest.raises(grpc.aio.AioRpcError):
                await first
            assert mounts.mount_points_under(node.pods) == []
            await node.restart_plugin(kill=False)
            origin.release()
            await node.kubelet.publish("csi-crash", target, node.attributes())
            assert mounts.mount_state(target) == "ro"
            assert_same_tree(target, MODEL)
            await node.kubelet.unpublish("csi-crash", target)
            assert node.holds() == [] and mounts.mount_points_under(node.pods) == []
            assert not (node.csi_trees / "csi-crash").exists()


async def test_a_restart_finishes_releases_and_drops_holds_of_vanished_pods(node: Node) -> None:
    target = pod_target(node.pods)
    await node.kubelet.publish("csi-gone", target, node.attributes())
    # The pod is gone while the plugin was down, and its mount with it.
    await node.restart_plugin()
    mounts.unmount(target)
    pod_dir = target.parents[3]
    for p in sorted(pod_dir.rglob("*"), reverse=True):
        p.rmdir()
    pod_dir.rmdir()
    # A leftover tree no hold names (a publish the pod left before it was done).
    (node.csi_trees / "csi-orphan" / "w").mkdir(parents=True)
    await node.restart_plugin()
    assert node.holds() == []
    assert sorted(os.listdir(node.csi_trees)) == []
