"""``bdn serve``: the Hugging Face Hub-compatible read endpoint on one machine, no agent.

Model code pulls mirrored weights through it unmodified, with
``HF_ENDPOINT=http://HOST:PORT/hf``. The endpoint lives in :mod:`bdn.hub`
(imported only when the command runs, so ``bdn --help`` stays fast).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from bdn.cli.common import (
    DaemonCommand,
    FlagOrEnv,
    add_cache_flags,
    add_store_flags,
    settings,
)

if TYPE_CHECKING:
    from bdn.cli.common import Subparsers
    from bdn.hub.serve import ServeConfig

ENV_TWINS = {"listen": "BDN_SERVE_LISTEN"}


def register(sub: Subparsers) -> None:
    """Add ``serve`` to the ``bdn`` parser."""
    p = sub.add_parser(
        "serve",
        help="serve mirrored hf:// models over the Hub's download API (HF_ENDPOINT=.../hf)",
        description="Answer the part of the Hugging Face Hub API that from_pretrained, "
        "snapshot_download and hf_hub_download use, from the store's mirrors, through an "
        "in-process node cache. Point clients at it with HF_ENDPOINT=http://HOST:PORT/hf. "
        "Reads only: models must be mirrored first (bdn mirror hf://ORG/REPO@REV).",
    )
    add_store_flags(p)
    add_cache_flags(p)
    p.add_argument("--listen", metavar="HOST:PORT",
                   help="address to serve on (env BDN_SERVE_LISTEN; default 127.0.0.1:8080)")
    p.set_defaults(func=DaemonCommand("bdn.hub.serve", serve_config))


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """The endpoint's configuration from flags, then ``args.environ``, then defaults.

    Raises:
        ConfigError: a malformed ``--listen``.
    """
    from bdn.daemon.address import parse_hostport
    from bdn.hub.serve import DEFAULT_SERVE_LISTEN, ServeConfig

    flags = FlagOrEnv(args, ENV_TWINS)
    listen = parse_hostport(flags.text("listen") or DEFAULT_SERVE_LISTEN, field="--listen")
    return ServeConfig(settings=settings(args), listen=listen)
