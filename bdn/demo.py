"""``bdn demo``: the whole system on one machine, with no set-up, then cleaned away.

It builds a synthetic model (safetensors-shaped shards) and a fine-tune that
shares most of them, mirrors both into a store of its own, starts several node
agents on loopback as one ring, has every agent pull both models at once, and
prints where the bytes came from, and what each agent sent its peers: as the
owner of a chunk, or passed on as a fan-out holder (``--fanout K``,
:mod:`bdn.peer.fanout`). Everything lives in one temporary directory that is
removed at the end (``--keep`` leaves it for a look).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from rich.console import Console
from rich.table import Table

from bdn.agent.client import AgentClient, request_for, to_pull_result
from bdn.backends import open_store
from bdn.config.secrets import SecretResolver
from bdn.config.units import format_bytes, parse_size
from bdn.config.weights import WeightsEntry
from bdn.errors import BdnError, ConfigError
from bdn.fleet import FleetAgent, loopback_fleet, wait_ready
from bdn.mirror import MirrorOptions, MirrorResult, run_mirror
from bdn.pull import PullResult

MiB = 1024 * 1024
SHARDS = 8
SHARED = 6
"""Shards the fine-tune shares with its base, as a LoRA-merged head would."""


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """Knobs of ``bdn demo``: model size, agents, where to work, whether to keep it."""

    size: int = 1024 * MiB
    agents: int = 4
    keep: bool = False
    workdir: Path | None = None
    fanout: int = 2


def demo_command(args: argparse.Namespace) -> int:
    options = DemoOptions(
        size=parse_size(args.size, field="--size"),
        agents=args.agents,
        keep=args.keep,
        workdir=Path(args.workdir).expanduser() if args.workdir else None,
        fanout=args.fanout,
    )
    if options.agents < 1 or options.size < SHARDS * MiB:
        raise ConfigError("needs at least 1 agent and 8MiB", field="bdn demo")
    if options.fanout < 0:
        raise ConfigError(f"--fanout {options.fanout}: give 0 (off) or more", field="--fanout")
    return run_demo(options, Console())


def run_demo(options: DemoOptions, console: Console) -> int:
    """Run the demo; returns 0 when every tree was materialized and verified."""
    with _workdir(options) as work:
        console.print(f"[bold]bdn demo[/] in {work}")
        base, tuned = _make_models(work, options.size)
        console.print(
            f"built a {format_bytes(options.size)} model in {SHARDS} shards and a "
            f"fine-tune sharing {SHARED} of them"
        )
        store = f"file://{work / 'store'}"
        mirrored = asyncio.run(_mirror_both(store, base, tuned))
        for label, res in zip(("base", "fine-tune"), mirrored, strict=True):
            console.print(
                f"mirrored {label}: {res.manifest_id[:19]}…  "
                f"{format_bytes(res.bytes_stored)} stored, "
                f"{format_bytes(res.bytes_deduplicated)} deduplicated"
            )
        with _ring(work, store, options.agents, options.fanout) as agents:
            console.print(f"started {len(agents)} agents on loopback as one ring "
                          f"(--fanout {options.fanout})")
            started = time.monotonic()
            results = asyncio.run(_pull_everywhere(agents, mirrored))
            wall = time.monotonic() - started
            sent = asyncio.run(_sent_by_each(agents))
        _verify(results, base, tuned)
        _report(console, results, mirrored, wall, options)
        _report_sent(console, sent)
        if options.keep:
            console.print(f"kept {work}")
    return 0


# -- building ----------------------------------------------------------------------


def _make_models(work: Path, size: int) -> tuple[Path, Path]:
    """Write the base model and its fine-tune (hardlinking the shared shards)."""
    base, tuned = work / "models" / "base", work / "models" / "fine-tune"
    base.mkdir(parents=True)
    tuned.mkdir(parents=True)
    shard = size // SHARDS
    for i in range(SHARDS):
        name = f"model-{i + 1:05d}-of-{SHARDS:05d}.safetensors"
        _write_shard(base / name, shard, f"layer{i}")
        if i < SHARED:
            os.link(base / name, tuned / name)
        else:
            _write_shard(tuned / name, shard, f"layer{i}.tuned")
    for root, arch in ((base, "base"), (tuned, "fine-tune")):
        (root / "config.json").write_text(json.dumps({"model_type": "bdn-demo", "variant": arch}))
    return base, tuned


def _write_shard(path: Path, size: int, tensor: str) -> None:
    """A safetensors-shaped file: an 8-byte header length, a JSON header, random data."""
    body = max(size - 256, 0)
    header = json.dumps(
        {tensor: {"dtype": "BF16", "shape": [body // 2], "data_offsets": [0, body // 2 * 2]}}
    ).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        left = body
        while left:
            n = min(left, 16 * MiB)
            f.write(os.urandom(n))
            left -= n


async def _mirror_both(store_uri: str, base: Path, tuned: Path) -> list[MirrorResult]:
    store = open_store(store_uri)
    try:
        out = []
        for src in (base, tuned):
            out.append(
                await run_mirror(
                    WeightsEntry(source=f"file://{src}"),
                    store=store,
                    secrets=SecretResolver(None, {}),
                    options=MirrorOptions(),
                )
            )
        return out
    finally:
        await store.close()


# -- agents ------------------------------------------------------------------------


@contextlib.contextmanager
def _workdir(options: DemoOptions) -> Iterator[Path]:
    parent = options.workdir or Path(tempfile.gettempdir())
    work = Path(tempfile.mkdtemp(prefix="bdn-demo-", dir=parent))
    try:
        yield work
    finally:
        if not options.keep:
            _remove_tree(work)


def _remove_tree(path: Path) -> None:
    """Remove a directory that holds read-only (0555) materialized trees."""
    for root, dirs, _ in os.walk(path):
        for d in dirs:
            full = os.path.join(root, d)
            if not os.path.islink(full):
                os.chmod(full, stat.S_IRWXU)
    shutil.rmtree(path)


@contextlib.contextmanager
def _ring(work: Path, store: str, count: int, fanout: int) -> Iterator[list[FleetAgent]]:
    """``count`` agents on loopback as one ring (``--fanout fanout``), each in
    ``work/agent-N``, ready."""
    token = work / "token"
    token.write_text(secrets.token_hex(16))
    # The agents' own probe interval (2 s): a shorter one let a CPU-starved
    # machine drop live peers mid-pull and read their chunks from origin again
    # (1 GiB demo with two busy loops beside it: 1.50x the distinct content
    # at 0.5 s, 1.25x at 2 s; 1.00x either way on an idle machine).
    with loopback_fleet(count, store=store, roots=work, token_file=token,
                        extra=["--fanout", str(fanout)]) as agents:
        asyncio.run(wait_ready(agents, members=count, timeout=60, interval=0.1))
        yield agents


async def _pull_everywhere(
    agents: list[FleetAgent], mirrored: list[MirrorResult]
) -> list[tuple[str, str, PullResult]]:
    async def one(agent: FleetAgent, label: str, manifest_id: str) -> tuple[str, str, PullResult]:
        mount = agent.spec.root / "models" / label
        status = await AgentClient(agent.address).pull(request_for(manifest_id, mount))
        return agent.name, label, to_pull_result(status)

    jobs = [
        one(a, label, m.manifest_id)
        for a in agents
        for label, m in zip(("base", "fine-tune"), mirrored, strict=True)
    ]
    return list(await asyncio.gather(*jobs))


# -- reporting ---------------------------------------------------------------------


def _verify(results: list[tuple[str, str, PullResult]], base: Path, tuned: Path) -> None:
    """Every materialized tree holds the source's files (sizes and a sample of bytes)."""
    for _, label, res in results:
        src = base if label == "base" else tuned
        for f in src.rglob("*"):
            if not f.is_file():
                continue
            got = res.path / f.relative_to(src)
            if got.stat().st_size != f.stat().st_size:
                raise BdnError(f"{got} has the wrong size")
            with open(f, "rb") as a, open(got, "rb") as b:
                if a.read(MiB) != b.read(MiB):
                    raise BdnError(f"{got} differs from its source")


def _report(
    console: Console,
    results: list[tuple[str, str, PullResult]],
    mirrored: list[MirrorResult],
    wall: float,
    options: DemoOptions,
) -> None:
    table = Table(title="where every agent's bytes came from")
    for col in ("agent", "model", "from origin", "from peers", "from node cache", "seconds"):
        table.add_column(col, justify="left" if col in ("agent", "model") else "right")
    for name, label, res in sorted(results, key=lambda r: (r[0], r[1])):
        table.add_row(
            name,
            label,
            format_bytes(res.bytes_from_origin),
            format_bytes(res.bytes_from_peers),
            format_bytes(res.bytes_from_node_cache),
            f"{res.seconds:.2f}",
        )
    console.print(table)
    unique = sum(m.bytes_stored for m in mirrored)
    origin = sum(r.bytes_from_origin for _, _, r in results)
    trees = sum(r.total_bytes for _, _, r in results)
    console.print(f"wall time for {len(results)} pulls on {options.agents} agents: {wall:.2f} s")
    console.print(
        f"bytes materialized: {format_bytes(trees)}; distinct content: "
        f"{format_bytes(unique)}; read from origin: {format_bytes(origin)} "
        f"= [bold]{origin / unique:.2f}x[/] the distinct content "
        f"(naive: {trees / unique:.1f}x)"
    )
    console.print(
        f"dedup: the fine-tune's mirror stored {format_bytes(mirrored[1].bytes_stored)} "
        f"of {format_bytes(mirrored[1].total_bytes)}; every agent got the shared "
        "shards once for both models"
    )


SENT = {
    ("bdn_fanout_bytes_served_total", "owner"): "owner",
    ("bdn_fanout_bytes_served_total", "holder"): "holder",
    ("bdn_fanout_redirects_total", "issued"): "redirects",
}
"""What :func:`_report_sent` shows per agent: (sample, its role or side label) -> column."""


async def _sent_by_each(agents: list[FleetAgent]) -> dict[str, dict[str, float]]:
    """Per agent: chunk bytes sent as an owner and as a fan-out holder, redirects issued
    (read from its ``/metrics`` on its pod socket)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, float]] = {}
    for agent in agents:
        connector = aiohttp.UnixConnector(path=str(agent.socket))
        async with aiohttp.ClientSession(connector=connector,
                                         timeout=aiohttp.ClientTimeout(total=10)) as session, \
                session.get("http://bdn-agent/metrics") as resp:
            text = await resp.text()
        row = dict.fromkeys(SENT.values(), 0.0)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                label = sample.labels.get("role") or sample.labels.get("side")
                key = SENT.get((sample.name, label or ""))
                if key is not None:
                    row[key] += sample.value
        out[agent.name] = row
    return out


def _report_sent(console: Console, sent: dict[str, dict[str, float]]) -> None:
    table = Table(title="what every agent sent to its peers")
    for col in ("agent", "as chunk owner", "passed on (fan-out)", "redirects issued"):
        table.add_column(col, justify="left" if col == "agent" else "right")
    for name, row in sorted(sent.items()):
        table.add_row(name, format_bytes(int(row["owner"])), format_bytes(int(row["holder"])),
                      str(int(row["redirects"])))
    console.print(table)
    total = sum(r["owner"] + r["holder"] for r in sent.values())
    busiest = max((r["owner"] + r["holder"] for r in sent.values()), default=0.0)
    console.print(
        f"peers sent {format_bytes(int(total))} in all; the busiest agent sent "
        f"{format_bytes(int(busiest))}; fan-out holders passed on "
        f"{format_bytes(int(sum(r['holder'] for r in sent.values())))} that owners "
        "would otherwise have sent themselves"
    )
