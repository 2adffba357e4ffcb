"""Where a pod may have the agent write a tree: each attack of issue #11 against a real
``bdn agent`` process, then the paths that must keep working.

Before the fix, every one of these requests was accepted: a tree appeared under
/etc, another user's directory was replaced by a root-owned one, a tree inside
the cache broke the next pull, a symlinked parent sent the tree wherever it
pointed, and a re-pull deleted a file the user had added to a tree.
"""

from __future__ import annotations

import argparse
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bdn.agent.client import AgentClient, request_for
from bdn.agent.config import AgentConfig
from bdn.backends import open_store
from bdn.cli.agent import agent_config
from bdn.cli.main import build_parser
from bdn.config.settings import Settings
from bdn.errors import ConfigError, MountConflict
from bdn.manifest import Manifest
from tests.e2e.agents import (
    AgentProcess,
    assert_same_tree,
    free_ports,
    http_json,
    mirror_into,
    mirrored_model,
    running,
    short_dir,
    start_agent,
    wait_ready,
)
from tests.fixtures import make_model, pattern_bytes

MODEL = {"config.json": b'{"n": 1}', "w/model.safetensors": pattern_bytes(3, 300_000)}
OTHER = {"config.json": b'{"n": 2}', "w/model.safetensors": pattern_bytes(4, 200_000)}


@dataclass
class Node:
    """One running agent whose only operator-given trees root is ``allowed``."""

    agent: AgentProcess
    allowed: Path
    model: Manifest
    other: Manifest

    @property
    def pod(self) -> str:
        return self.agent.agent_address

    async def post(self, manifest: Manifest, mount: Path | str) -> tuple[int, object]:
        return await http_json(self.pod, "POST", "/v1/pulls", request_for(manifest.id, mount))

    def refusal(self, mount: Path | str) -> str:
        return (f"mount_location: {mount} is outside the directories this agent may write "
                f"trees in ({self.agent.spec.root}, {self.allowed}); use a path under one of "
                f"them, e.g. {self.agent.spec.root}/my-model, or have the operator add a root "
                "with `bdn agent --trees-root DIR`")


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    _, store_root, model = await mirrored_model(tmp_path, MODEL, 128 * 1024)
    other = await mirror_into(open_store(f"file://{store_root}"),
                              make_model(tmp_path / "src2", OTHER), 128 * 1024)
    allowed = tmp_path / "trees"
    with short_dir() as base:
        agent = start_agent(base, "a", free_ports(1)[0], store=f"file://{store_root}",
                            token=None, trees=[allowed])
        with running([agent]):
            await wait_ready([agent])
            yield Node(agent, allowed, model, other)


async def test_a_tree_under_etc_is_refused_before_anything_is_written(node: Node) -> None:
    mount = Path("/etc") / f"bdn-test-{uuid.uuid4().hex[:8]}"
    code, body = await node.post(node.model, mount)
    assert (code, body) == (400, {"error": node.refusal(mount)})
    assert not mount.exists()
    with pytest.raises(ConfigError, match="outside the directories"):
        await AgentClient(node.pod).pull(request_for(node.model.id, mount))


async def test_another_users_empty_directory_is_never_replaced(node: Node,
                                                               tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a directory another user owns needs root")
    outside = tmp_path / "home" / "alice"
    inside = node.allowed / "alice"
    for directory in (outside, inside):
        directory.mkdir(parents=True)
        os.chown(directory, 4242, 4242)
    code, body = await node.post(node.model, outside)
    assert (code, body) == (400, {"error": node.refusal(outside)})
    # Inside a root the request is accepted, but the pull adopts no one else's directory.
    with pytest.raises(MountConflict, match=f"{inside} is an empty directory owned by uid 4242"):
        await AgentClient(node.pod).pull(request_for(node.model.id, inside))
    for directory in (outside, inside):
        st = directory.stat()
        assert (st.st_uid, os.listdir(directory)) == (4242, [])


async def test_a_tree_inside_the_cache_is_refused_and_later_pulls_work(node: Node) -> None:
    # The agent's own directory is a trees root too (tests/e2e/agents), and holds its cache.
    cache = node.agent.cache.resolve()
    for mount in (cache / "blobs" / "sha256" / "ab", cache, node.agent.spec.root):
        code, body = await node.post(node.model, mount)
        assert code == 400, body
        assert isinstance(body, dict) and str(mount) in body["error"]
    code, body = await node.post(node.model, cache / "blobs" / "sha256" / "ab")
    assert body == {"error": f"mount_location: {cache}/blobs/sha256/ab would put a tree on the "
                    f"agent's own files ({cache}); use a path under {node.agent.spec.root}, "
                    f"{node.allowed}, e.g. {node.agent.spec.root}/my-model"}
    assert not (cache / "blobs" / "sha256" / "ab").exists()
    status = await AgentClient(node.pod).pull(request_for(node.model.id, node.allowed / "m"))
    assert status["state"] == "succeeded"
    assert_same_tree(node.allowed / "m", MODEL)


async def test_a_symlinked_parent_is_refused(node: Node, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    node.allowed.mkdir()
    (node.allowed / "link").symlink_to(target)
    mount = node.allowed / "link" / "m"
    code, body = await node.post(node.model, mount)
    assert (code, body) == (400, {"error": (
        f"mount_location: {mount}: {node.allowed}/link is a symlink, and the agent follows "
        f"none below its trees root {node.allowed}; use the real directory, without links")})
    assert os.listdir(target) == []


@pytest.mark.parametrize("same", [True, False], ids=["same-manifest", "other-manifest"])
async def test_a_users_file_in_a_tree_survives_a_re_pull(node: Node, same: bool) -> None:
    mount = node.allowed / "m"
    client = AgentClient(node.pod)
    await client.pull(request_for(node.model.id, mount))
    os.chmod(mount, 0o755)
    (mount / "notes.txt").write_text("mine")
    again = node.model if same else node.other
    with pytest.raises(MountConflict) as info:
        await client.pull(request_for(again.id, mount))
    assert f"mount location {mount} holds 1 path(s) BDN did not put there: notes.txt" in str(
        info.value)
    assert (mount / "notes.txt").read_text() == "mine"
    assert_same_tree(mount, {**MODEL, "notes.txt": b"mine"})


async def test_allowed_root_pulls_and_an_instant_re_pull(node: Node) -> None:
    mount = node.allowed / "team" / "m"
    client = AgentClient(node.pod)
    first = await client.pull(request_for(node.model.id, mount))
    assert first["materialized"] == "hardlink"
    inode = mount.stat().st_ino
    again = await client.pull(request_for(node.model.id, mount))
    assert again["materialized"] == "unchanged" and again["bytes_from_origin"] == 0
    assert mount.stat().st_ino == inode
    swapped = await client.pull(request_for(node.other.id, mount))
    assert swapped["materialized"] == "hardlink"
    assert_same_tree(mount, OTHER)


# -- configuration ---------------------------------------------------------------------------


def parse(argv: list[str], environ: dict[str, str]) -> AgentConfig:
    ns: argparse.Namespace = build_parser().parse_args(["agent", *argv])
    ns.environ = environ
    return agent_config(ns)


def test_trees_roots_from_flags_env_and_default(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    base = ["--cache", str(cache), "--store", f"file://{tmp_path}/store"]
    assert parse(base, {}).allowed_trees_roots == (cache / "trees",)
    env = {"BDN_AGENT_TREES_ROOT": f"{tmp_path}/a:{tmp_path}/b/:"}
    assert parse(base, env).allowed_trees_roots == (tmp_path / "a", tmp_path / "b")
    flags = [*base, "--trees-root", str(tmp_path / "c"), "--trees-root", str(tmp_path / "d")]
    assert parse(flags, env).allowed_trees_roots == (tmp_path / "c", tmp_path / "d")


@pytest.mark.parametrize(("root", "message"), [
    ("/", "must not be the filesystem root"),
    ("{cache}", "is (or is inside) the node cache"),
    ("{cache}/blobs", "the only trees root allowed there is {cache}/trees"),
    ("{store}/x", "is (or is inside) the store"),
])
def test_unsafe_trees_roots_are_refused_at_start(tmp_path: Path, root: str,
                                                 message: str) -> None:
    names = {"cache": str(tmp_path / "cache"), "store": str(tmp_path / "store")}
    with pytest.raises(ConfigError, match=message.format(**names).replace("(", r"\(")
                       .replace(")", r"\)")):
        AgentConfig(settings=Settings(store_uri=f"file://{tmp_path}/store",
                                      cache_dir=tmp_path / "cache"),
                    listen=("127.0.0.1", 7070), advertise="127.0.0.1:7070",
                    socket_path=tmp_path / "a.sock",
                    trees_roots=(Path(root.format(**names)),))
