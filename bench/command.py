"""What every ``bdn bench`` sub-command does around its measurements."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from bdn.config.units import parse_size
from bench.harness import BenchAbort, sigterm_as_exit
from bench.report import BenchReport, emit_report, progress_console
from bench.tools import ensure_tools


def common_options(args: argparse.Namespace) -> dict[str, Any]:
    """The option fields every bench shares, from its parsed flags."""
    return {
        "shards": args.shards,
        "shard_size": parse_size(args.shard_size, field="--shard-size"),
        "repeat": args.repeat,
        "workdir": Path(args.workdir) if args.workdir else None,
        "keep": args.keep,
    }


def run_command(
    name: str,
    args: argparse.Namespace,
    run: Callable[[Console, dict[str, str]], BenchReport],
    *,
    tools: Sequence[str] = (),
) -> int:
    """Install missing reference ``tools`` if allowed, ``run`` the bench, print its
    report; returns the exit status (a ``BenchAbort`` prints one line and exits 2)."""
    console = progress_console()
    try:
        with sigterm_as_exit():
            unavailable = (
                ensure_tools(tools, allow_install=not args.no_install, console=console)
                if tools
                else {}
            )
            report = run(console, unavailable)
    except BenchAbort as err:
        print(f"bdn bench {name}: {err}", file=sys.stderr)
        return err.exit_code
    emit_report(report, as_json=args.json)
    return report.exit_code
