"""``bdn csi``: run the CSI node plugin that mounts agent-built trees into pods.

Flags only (a DaemonSet passes them as args, with ``$(NODE_NAME)`` from the
downward API). The plugin lives in the ``csi`` package, imported only when
the command runs, so ``bdn --help`` loads no gRPC.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from bdn.cli.common import DaemonCommand, Flag, add_flags

if TYPE_CHECKING:
    from bdn.cli.common import Subparsers
    from bdn.csi.main import CsiConfig

_FLAGS: tuple[Flag, ...] = (
    ("--endpoint", {"metavar": "PATH", "required": True,
                    "help": "unix socket kubelet calls, e.g. "
                    "/var/lib/kubelet/plugins/csi.bdn.dev/csi.sock"}),
    ("--agent", {"metavar": "ADDRESS", "required": True,
                 "help": "the node agent's pod socket, e.g. unix:///var/run/bdn/agent.sock"}),
    ("--trees-root", {"metavar": "DIR", "required": True,
                      "help": "a --trees-root of that agent; each volume's tree is built in "
                      "DIR/csi/<volume id>, a directory that belongs to this plugin"}),
    ("--state-dir", {"metavar": "DIR", "required": True,
                     "help": "where holds (volume -> mount, tree) are recorded; must survive "
                     "restarts of the plugin, e.g. /var/lib/bdn/csi"}),
    ("--node-id", {"metavar": "NAME", "required": True,
                   "help": "this node's id for kubelet: the Kubernetes node name"}),
    ("--driver-name", {"metavar": "NAME", "default": None,
                       "help": "the CSIDriver object's name (default csi.bdn.dev)"}),
    ("--poll-interval", {"metavar": "SECONDS", "type": float, "default": None,
                         "help": "seconds between progress polls of the agent while a "
                         "publish waits for its tree (default 0.02)"}),
)


def register(sub: Subparsers) -> None:
    """Add ``csi`` to the ``bdn`` parser."""
    p = sub.add_parser(
        "csi",
        help="run the CSI node plugin: pods mount weights as csi: inline volumes",
        description="Serve the CSI Identity and Node services on a unix socket. A publish "
        "asks the node agent for the volume's tree, waits until it is complete and "
        "verified, and bind-mounts it read-only at the pod's path; an unpublish unmounts "
        "it and releases the tree. Needs root (mounts). SIGTERM stops it.",
    )
    add_flags(p, _FLAGS)
    p.set_defaults(func=DaemonCommand("bdn.csi.main", csi_config))


def csi_config(args: argparse.Namespace) -> CsiConfig:
    """The plugin's configuration from flags.

    Raises:
        ConfigError: a relative path, an empty node id, a malformed driver
            name or agent address.
    """
    from bdn.csi.main import DEFAULT_DRIVER_NAME, PUBLISH_POLL_INTERVAL, CsiConfig

    return CsiConfig(
        endpoint=Path(args.endpoint),
        agent=args.agent,
        trees_root=Path(args.trees_root),
        state_dir=Path(args.state_dir),
        node_id=args.node_id,
        driver_name=args.driver_name or DEFAULT_DRIVER_NAME,
        poll_interval=args.poll_interval or PUBLISH_POLL_INTERVAL,
    )
