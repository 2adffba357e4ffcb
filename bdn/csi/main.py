"""``bdn csi``: start the CSI node plugin, serve until SIGTERM, stop.

Start-up finishes what a previous run left (interrupted releases, holds
whose pod is gone, leftover trees: :meth:`NodeService.recover`) before the
socket opens, so kubelet never sees a half-recovered plugin. On SIGTERM the
server stops taking calls and gives running ones a short grace; a publish
cut short stays recorded as ``publishing`` and kubelet's retry resumes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import grpc

from bdn.agent.client import AgentClient
from bdn.csi.holds import HoldStore
from bdn.csi.node import NodeService
from bdn.csi.server import CsiServicer, handlers
from bdn.daemon.lifecycle import serve_until_signalled
from bdn.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_DRIVER_NAME = "csi.bdn.dev"
"""The CSIDriver object's name (deploy/base/csi-driver.yaml)."""

DEFAULT_STOP_GRACE_S = 5.0
"""Seconds running calls get when the plugin stops; kubelet retries the rest."""

PUBLISH_POLL_INTERVAL = 0.02
"""Seconds between the agent progress polls of a publish: a warm tree is done in
tens of milliseconds, and a poll on the local socket costs well under one."""

_DRIVER_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,61}[A-Za-z0-9])?")


@dataclass(frozen=True, slots=True)
class CsiConfig:
    """What ``bdn csi`` needs; built from flags by :mod:`bdn.cli.csi`.

    Attributes:
        endpoint: the unix socket kubelet and the registrar call.
        agent: the node agent's pod API (``unix:///.../agent.sock``).
        trees_root: a ``--trees-root`` of that agent; trees go in ``<it>/csi``.
        state_dir: where hold records live (must survive restarts: a hostPath).
        node_id: this node's id for NodeGetInfo (the Kubernetes node name).
        driver_name: the CSIDriver's name.
        poll_interval: seconds between progress polls of the agent.
    """

    endpoint: Path
    agent: str
    trees_root: Path
    state_dir: Path
    node_id: str
    driver_name: str = DEFAULT_DRIVER_NAME
    poll_interval: float = PUBLISH_POLL_INTERVAL

    def __post_init__(self) -> None:
        if not _DRIVER_NAME.fullmatch(self.driver_name):
            raise ConfigError(f"{self.driver_name!r} is not a CSI driver name; use up to 63 "
                              "letters, digits, '.' and '-', e.g. csi.bdn.dev",
                              field="--driver-name")
        if not self.node_id.strip():
            raise ConfigError("is empty; pass the Kubernetes node name, e.g. "
                              "--node-id $(NODE_NAME) from spec.nodeName", field="--node-id")
        for flag, path in (("--endpoint", self.endpoint), ("--trees-root", self.trees_root),
                           ("--state-dir", self.state_dir)):
            if not path.is_absolute():
                raise ConfigError(f"{path} must be an absolute path", field=flag)
        if len(os.fsencode(self.endpoint)) > 107:
            raise ConfigError(f"{self.endpoint} is longer than a unix socket path may be "
                              "(107 bytes); use a shorter path", field="--endpoint")
        if not self.agent.startswith(("unix:///", "http://", "https://")):
            raise ConfigError(f"{self.agent!r} is not an agent address; use the agent's pod "
                              "socket, e.g. unix:///var/run/bdn/agent.sock", field="--agent")
        if self.poll_interval <= 0:
            raise ConfigError("must be more than 0 seconds", field="--poll-interval")


class CsiPlugin:
    """The plugin as a :class:`~bdn.daemon.lifecycle.Service`."""

    def __init__(self, config: CsiConfig) -> None:
        self.config = config
        self.agent = AgentClient(config.agent, poll_interval=config.poll_interval)
        self.node = NodeService(self.agent, config.trees_root, HoldStore(config.state_dir))
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        """Recover, then listen on the endpoint (replacing a stale socket file only)."""
        await self.node.recover()
        endpoint = self.config.endpoint
        endpoint.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_socket(endpoint)
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(handlers(CsiServicer(
            self.node, self.agent, driver_name=self.config.driver_name,
            node_id=self.config.node_id)))
        server.add_insecure_port(f"unix://{endpoint}")
        await server.start()
        self._server = server
        log.info("bdn csi %s serving on %s (agent %s, trees %s)", self.config.driver_name,
                 endpoint, self.config.agent, self.node.trees)

    async def drain(self, force: asyncio.Event) -> None:
        """Nothing to drain: holds are durable, and kubelet retries cut calls."""

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(DEFAULT_STOP_GRACE_S)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(self.config.endpoint).st_mode):
                os.unlink(self.config.endpoint)


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket left by a previous run; refuse to replace anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"{path} exists and is not a socket; remove it or choose another "
                          "--endpoint", field="--endpoint")
    path.unlink()


async def serve(config: CsiConfig) -> int:
    """Run the plugin until SIGTERM/SIGINT; returns the exit status."""
    return await serve_until_signalled(CsiPlugin(config), "bdn csi")


def run(config: CsiConfig) -> int:
    """The ``bdn csi`` process (set up logging first)."""
    return asyncio.run(serve(config))


__all__ = ["CsiConfig", "CsiPlugin", "run", "serve"]
