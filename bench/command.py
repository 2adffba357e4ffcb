"""What every ``bdn bench`` sub-command does around its measurements."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console

from bdn.config.units import parse_size
from bench.harness import BenchAbort, sigterm_as_exit
from bench.report import emit_report, progress_console
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


class _Report(Protocol):
    """What every bench's report has: its exit status (1 if a run failed)."""

    @property
    def exit_code(self) -> int: ...


def run_command(
    name: str,
    args: argparse.Namespace,
    run: Callable[[Console, dict[str, str]], _Report],
    *,
    tools: Sequence[str] = (),
    emit: Callable[..., None] = emit_report,
) -> int:
    """Install missing reference ``tools`` if allowed, ``run`` the bench, print its
    report with ``emit`` (:func:`bench.report.emit_report` by default); returns the exit
    status (a ``BenchAbort`` prints one line and exits with its code, 2 by default)."""
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
    emit(report, as_json=args.json)
    return report.exit_code
