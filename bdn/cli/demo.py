"""``bdn demo``: registered here so that building the parser does not import
:mod:`bdn.demo` (rich, the agent client, the mirror); it loads when the demo runs."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bdn.cli.common import Subparsers


def register(sub: Subparsers) -> None:
    """Add ``bdn demo`` to the ``bdn`` parser."""
    p = sub.add_parser(
        "demo",
        help="mirror a synthetic model and a fine-tune, pull both on 4 local agents, report",
        description="Build a synthetic model and a fine-tune sharing 6 of its 8 shards, mirror "
        "both, start agents on loopback as a ring, pull both models on every agent at once, "
        "print bytes per tier, then clean up. Needs ~4x the model size of free disk.",
    )
    p.add_argument("--size", default="1GiB", help="size of the base model (default 1GiB)")
    p.add_argument("--agents", type=int, default=4, help="node agents in the ring (default 4)")
    p.add_argument("--fanout", type=int, default=2, metavar="K",
                   help="the agents' --fanout: an owner sends each chunk to K peers and "
                   "redirects the rest to them (default 2, so 4 agents show redirects; 0: off)")
    p.add_argument("--workdir", metavar="DIR", help="parent of the demo's temporary directory")
    p.add_argument("--keep", action="store_true", help="keep the demo directory afterwards")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo (:func:`bdn.demo.demo_command`)."""
    from bdn.demo import demo_command

    return demo_command(args)
