"""The ``bdn`` command line: builds the parser and dispatches, nothing more.

Each command group registers its flags from its own module (``cli/mirror.py``,
``cli/pull.py``, ...) and imports what it runs only when it runs, so
``bdn --help`` loads no SDK. The flows themselves are :mod:`bdn.api`'s.

The environment is read once, here (``BDN_STORE``, ``BDN_SECRETS_DIR``,
``AWS_ENDPOINT_URL``), and passed down as values. User mistakes end in one
line on stderr naming the fix and exit status 2; failures of the world
(network, storage) exit 1; neither prints a traceback unless ``-v`` is given.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from bdn import __version__
from bdn.cli import agent, bench, csi, demo, mirror, mirror_server, plan, pull, serve
from bdn.cli import simulate as simulate_cli
from bdn.errors import BdnError, ConfigError, MountConflict, SecretError

if TYPE_CHECKING:
    from bdn.cli.common import Subparsers

# Exit statuses: a table, not branches scattered over commands.
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
_USAGE_ERRORS: tuple[type[BaseException], ...] = (ConfigError, SecretError, MountConflict)

# In the order `bdn --help` lists them.
_COMMAND_GROUPS: tuple[Callable[[Subparsers], None], ...] = (
    mirror.register,  # mirror, manifest, store
    pull.register,  # pull, cache
    plan.register,
    agent.register,
    csi.register,
    serve.register,
    mirror_server.register,
    demo.register,
    bench.register,
    simulate_cli.register,
)


def build_parser() -> argparse.ArgumentParser:
    """The whole ``bdn`` parser; each command sets ``func(args) -> exit status``."""
    parser = argparse.ArgumentParser(
        prog="bdn",
        description="Mirror model weights once into content-addressed storage; pull them fast.",
    )
    parser.add_argument("--version", action="version", version=f"bdn {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log progress and debug detail"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in _COMMAND_GROUPS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of the ``bdn`` console script; returns the exit status."""
    env = dict(os.environ if environ is None else environ)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        # Commands read the environment only through this snapshot.
        args.environ = env
        code: int = func(args)
        return code
    except KeyboardInterrupt:
        print("bdn: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BdnError as err:
        if args.verbose:
            logging.getLogger("bdn").exception("failed")
        print(f"bdn: error: {err}", file=sys.stderr)
        return EXIT_USAGE if isinstance(err, _USAGE_ERRORS) else EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
