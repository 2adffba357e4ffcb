"""What every ``bdn bench`` sub-command does around its measurements."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console

from bdn.config.units import parse_size
from bench.harness import BenchAbort, bench_workdir, require_free_space, sigterm_as_exit
from bench.report import BenchReport, Report, emit_report, progress_console
from bench.tools import ensure_tools, machine_facts


def common_options(args: argparse.Namespace) -> dict[str, Any]:
    """The option fields every bench shares, from its parsed flags."""
    return {
        "shards": args.shards,
        "shard_size": parse_size(args.shard_size, field="--shard-size"),
        "repeat": args.repeat,
        "workdir": Path(args.workdir) if args.workdir else None,
        "keep": args.keep,
    }


class RunOptions(Protocol):
    """The option fields every bench's options have for its work directory and report."""

    @property
    def workdir(self) -> Path | None: ...

    @property
    def keep(self) -> bool: ...

    @property
    def repeat(self) -> int: ...


@contextlib.contextmanager
def bench_run(
    command: str,
    options: RunOptions,
    console: Console,
    *,
    needs: int,
    tools: Sequence[str] = (),
) -> Iterator[tuple[Path, BenchReport]]:
    """How a bench starts: a fresh work directory (removed on exit unless ``keep``)
    holding at least ``needs`` free bytes, else ``BenchAbort`` before any work, and
    the report of ``bdn bench COMMAND``, headed by this machine's facts (``tools``'
    versions, the work directory's filesystem)."""
    with bench_workdir(options.workdir, keep=options.keep, console=console) as wd:
        require_free_space(wd, needs)
        yield wd, BenchReport(command, machine_facts(tools, wd), options.repeat)


def run_command(
    name: str,
    args: argparse.Namespace,
    run: Callable[[Console, dict[str, str]], Report],
    *,
    tools: Sequence[str] = (),
) -> int:
    """Install missing reference ``tools`` if allowed, ``run`` the bench, print its
    report (:func:`bench.report.emit_report`); returns the exit status (a
    ``BenchAbort`` prints one line and exits with its code, 2 by default)."""
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
