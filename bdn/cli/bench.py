"""``bdn bench``: a forwarder to the benches of a source checkout.

The benches live in the checkout's top-level ``bench/`` folder, not in the
wheel, so this registers ``bench`` without importing them: every argument
after ``bench`` is handed, unparsed, to ``bench.main(argv)``, which builds the
bench parser (``bdn bench --help`` and ``bdn bench transfer --help`` print its
help). Without a checkout, a one-line error says how to get one.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import bdn
from bdn.errors import ConfigError

if TYPE_CHECKING:
    from bdn.cli.common import Subparsers

CHECKOUT_HINT = (
    "the benches run from a source checkout, not an installed wheel: "
    "git clone <bdn repository> && cd bdn && pip install -e '.[dev]' && bdn bench ..."
)


def register(sub: Subparsers) -> None:
    """Add ``bench``, whose arguments all go to the checkout's ``bench.main``."""
    # add_help=False and no option prefix: even -h/--help belongs to bench.main, so
    # argparse takes every word after `bench` as the remainder.
    p = sub.add_parser(
        "bench",
        help="measure BDN against reference tools (curl, aria2c, cp) in the same run",
        add_help=False,
        prefix_chars="\0",
    )
    p.add_argument("bench_argv", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    """Run ``bench.main`` of the checkout this ``bdn`` was installed from."""
    checkout = Path(bdn.__file__).resolve().parents[1]
    if not (checkout / "bench" / "__init__.py").is_file():
        raise ConfigError(CHECKOUT_HINT, field="bdn bench")
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    # Imported by name: bench/ is not part of the bdn package (nor of its type check).
    bench = importlib.import_module("bench")
    code: int = bench.main(list(args.bench_argv))
    return code
