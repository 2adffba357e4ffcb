"""A real ``bdn csi`` process and a kubelet-like gRPC client for it.

- :class:`PluginProcess` runs ``python -m bdn csi`` with its own socket and
  state directory; :meth:`PluginProcess.kill` is SIGKILL (a crash), and
  :func:`start_plugin` can start it again on the same directories.
- :class:`Kubelet` calls the plugin over its unix socket the way kubelet
  does (the CSI method paths, the ``csi_pb2`` messages), and lays out pod
  directories like kubelet's ``pods/<uid>/volumes/kubernetes.io~csi/<vol>/``.
- :func:`mount_capable` says whether this process may bind-mount (root with
  CAP_SYS_ADMIN); the tests skip, with that reason printed, when not.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bdn.csi import mounts
from bdn.csi.proto import csi_pb2 as pb
from tests.e2e.agents import AgentProcess, free_ports, running, start_agent, wait_ready
from tests.fixtures import bdn_env

DRIVER = "csi.bdn.dev"


def mount_capable() -> str | None:
    """``None`` when bind mounts work here, else why not (the skip reason)."""
    if os.geteuid() != 0:
        return "the CSI tests bind-mount trees and need root (run the suite as root)"
    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d, "src"), Path(d, "dst")
        src.mkdir()
        dst.mkdir()
        try:
            mounts.bind_read_only(src, dst)
        except OSError as err:
            return f"bind mounts are not permitted here ({err}); needs CAP_SYS_ADMIN"
        mounts.unmount(dst)
    return None


@dataclass
class PluginProcess:
    """One ``bdn csi`` subprocess."""

    proc: subprocess.Popen[bytes]
    socket: Path
    log: Path

    def kill(self) -> None:
        """SIGKILL and reap: a crash, with no cleanup of its own."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        """SIGTERM, then wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_plugin(base: Path, *, agent: str, trees_root: Path, state_dir: Path,
                 extra: tuple[str, ...] = ()) -> PluginProcess:
    """Start ``bdn csi`` with its socket in ``base`` (short: unix paths max 107 bytes)."""
    socket = base / "csi.sock"
    log = base / f"csi-{uuid.uuid4().hex[:6]}.log"
    argv = [sys.executable, "-m", "bdn", "-v", "csi", "--endpoint", str(socket),
            "--agent", agent, "--trees-root", str(trees_root), "--state-dir", str(state_dir),
            "--node-id", "node-1", *extra]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                env=bdn_env(base), cwd=Path(__file__).resolve().parents[2])
    return PluginProcess(proc, socket, log)


class Kubelet:
    """Calls a plugin's CSI services over its socket, as kubelet would."""

    def __init__(self, socket: Path) -> None:
        self.channel = grpc.aio.insecure_channel(f"unix://{socket}")

    async def close(self) -> None:
        await self.channel.close()

    async def call(self, service: str, method: str, request: Any, response: Any,
                   timeout: float = 120) -> Any:
        stub = self.channel.unary_unary(
            f"/csi.v1.{service}/{method}", request_serializer=request.SerializeToString,
            response_deserializer=response.FromString)
        return await stub(request, timeout=timeout)

    async def wait_ready(self, plugin: PluginProcess, timeout: float = 60) -> None:
        """Wait until the plugin answers Probe; fail with its log if it exits first."""
        deadline = time.monotonic() + timeout
        while True:
            if plugin.proc.poll() is not None:
                raise AssertionError(f"bdn csi exited {plugin.proc.returncode}: {plugin.logs()}")
            try:
                await self.call("Identity", "Probe", pb.ProbeRequest(), pb.ProbeResponse,
                                timeout=2)
                return
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"bdn csi never answered: {plugin.logs()}") from None
                await _pause()

    async def publish(self, volume_id: str, target: Path, attributes: Mapping[str, str],
                      *, pod: str = "default/model-0") -> None:
        namespace, name = pod.split("/")
        context = {**attributes, "csi.storage.k8s.io/pod.namespace": namespace,
                   "csi.storage.k8s.io/pod.name": name,
                   "csi.storage.k8s.io/ephemeral": "true"}
        cap = pb.VolumeCapability(
            mount=pb.VolumeCapability.MountVolume(),
            access_mode=pb.VolumeCapability.AccessMode(
                mode=pb.VolumeCapability.AccessMode.SINGLE_NODE_WRITER))
        request = pb.NodePublishVolumeRequest(
            volume_id=volume_id, target_path=str(target), volume_capability=cap,
            readonly=True, volume_context=context)
        await self.call("Node", "NodePublishVolume", request, pb.NodePublishVolumeResponse)

    async def unpublish(self, volume_id: str, target: Path) -> None:
        request = pb.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=str(target))
        await self.call("Node", "NodeUnpublishVolume", request, pb.NodeUnpublishVolumeResponse)


def pod_target(pods: Path, volume: str = "weights") -> Path:
    """A new pod's volume target, with its parent made as kubelet makes it."""
    parent = pods / str(uuid.uuid4()) / "volumes" / "kubernetes.io~csi" / volume
    parent.mkdir(parents=True)
    return parent / "mount"


async def _pause() -> None:
    import asyncio

    await asyncio.sleep(0.05)


@contextlib.contextmanager
def unmount_all_under(root: Path) -> Iterator[None]:
    """On the way out, unmount whatever is still mounted under ``root`` (even on failure)."""
    try:
        yield
    finally:
        for point in reversed(mounts.mount_points_under(root)):
            with contextlib.suppress(OSError):
                mounts.unmount(Path(point))


@contextlib.asynccontextmanager
async def node_agent(base: Path, store: str, trees_root: Path) -> AsyncIterator[AgentProcess]:
    """The node's ``bdn agent`` for the plugin: a process named "a" under ``base`` on a
    free port, without a token, over ``store``, building trees under ``trees_root``;
    ready, and stopped after."""
    agent = start_agent(base, "a", free_ports(1)[0], store=store, token=None,
                        trees=[trees_root])
    with running([agent]):
        await wait_ready([agent])
        yield agent
