"""``bdn bench herd``: options, CLI wiring, the namespace plan as data, a live
two-node namespace setup (root only) and one tiny real run on loopback.

Nothing here asserts a speed. The tiny run checks what the bench counts:
origin bytes at the origin (nginx's log), about 1x the model for the ring and
about N x for the naive agents.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from bdn.errors import ConfigError
from bdn.fleet import AgentSpec, FleetAgent, agent_env, free_ports
from bench.harness import GiB, MiB
from bench.herd import options_from_args, run_herd_bench
from bench.herd_delay import DelayRelay
from bench.herd_fleet import agent_argv, netns_nodes, ring_changes_since
from bench.herd_origin import OriginTally, origin_config, tally_log
from bench.herd_report import HerdBenchOptions, HerdCase, HerdReport, HerdRun, parse_nodes
from bench.netns import (
    NetnsPlan,
    Topology,
    existing_namespaces,
    netns_unavailable,
    new_plan,
    setup_commands,
    tbf_args,
    teardown_commands,
)
from bench.tools import MachineFacts
from tests.bench.support import parse_bench, quiet_console


def _parse(*argv: str) -> argparse.Namespace:
    return parse_bench("herd", *argv)


# -- options ----------------------------------------------------------------------


def test_defaults_follow_the_mode() -> None:
    loopback = HerdBenchOptions()
    loopback.check()
    assert (loopback.mode, loopback.fleet_sizes, loopback.model_bytes) == (
        "loopback", (2, 4, 8), 2 * GiB)
    assert (loopback.shards, loopback.repeat) == (8, 1)
    shaped = HerdBenchOptions(netns=True)
    assert (shaped.mode, shaped.fleet_sizes, shaped.model_bytes) == ("netns", (2, 4), GiB)
    assert (shaped.origin_mbps, shaped.peer_mbps) == (100.0, 1000.0)
    big = HerdBenchOptions(nodes=(8,), size=8 * GiB, netns=True)
    assert (big.fleet_sizes, big.model_bytes) == ((8,), 8 * GiB)


@pytest.mark.parametrize(
    ("changes", "flag"),
    [
        ({"nodes": (1,)}, "--nodes"),
        ({"nodes": (2, 65)}, "--nodes"),
        ({"nodes": ()}, "--nodes"),
        ({"shards": 0}, "--shards"),
        ({"repeat": 0}, "--repeat"),
        ({"size": 7}, "--size"),
        ({"origin_mbps": 0.0}, "--origin-mbps"),
        ({"peer_mbps": -1.0}, "--peer-mbps"),
        ({"owner_fault": "slow", "netns": True}, "--owner-fault"),
        ({"owner_fault": "frozen", "start": "together"}, "--owner-fault"),
        ({"owner_fault": "slow", "owner_delay": 0.0}, "--owner-delay"),
    ],
)
def test_check_rejects_unusable_values(changes: dict[str, object], flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        HerdBenchOptions(**changes).check()  # type: ignore[arg-type]


def test_parse_nodes() -> None:
    assert parse_nodes("2,4,8") == (2, 4, 8)
    assert parse_nodes(" 4, 2 ,4,") == (4, 2)
    for bad in ("", "two", "2;4", ","):
        with pytest.raises(ConfigError, match="--nodes"):
            parse_nodes(bad)


# -- CLI wiring ---------------------------------------------------------------------


def test_register_adds_bench_herd() -> None:
    args = _parse()
    assert callable(args.func)
    assert (args.nodes, args.size, args.shards, args.repeat) == (None, None, 8, 1)
    assert not (args.netns or args.keep or args.json or args.no_install)
    assert (args.origin_mbps, args.peer_mbps) == (100.0, 1000.0)
    options = options_from_args(_parse(
        "--nodes", "2,4", "--size", "8GiB", "--shards", "4", "--repeat", "3", "--netns",
        "--origin-mbps", "50", "--peer-mbps", "500", "--workdir", "/x", "--keep",
    ))
    assert options == HerdBenchOptions(
        nodes=(2, 4), size=8 * GiB, shards=4, repeat=3, netns=True, origin_mbps=50.0,
        peer_mbps=500.0, workdir=Path("/x"), keep=True,
    )


def test_bad_flags_name_the_flag() -> None:
    with pytest.raises(ConfigError, match="--size"):
        options_from_args(_parse("--size", "lots"))
    with pytest.raises(ConfigError, match="--nodes"):
        options_from_args(_parse("--nodes", "many"))


# -- the origin and the agents' command lines ------------------------------------------


def test_origin_logs_bytes_sent_and_listens_where_told(tmp_path: Path) -> None:
    conf = origin_config(listen=["10.213.1.1:8080", "10.213.2.1:8080"],
                         unix_socket=tmp_path / "o.sock", root=tmp_path / "store",
                         state_dir=tmp_path / "nginx", as_root=False)
    assert "$bytes_sent $body_bytes_sent" in conf
    assert f"access_log {tmp_path / 'nginx' / 'access.log'} herd;" in conf
    assert "listen 10.213.1.1:8080;" in conf and "listen 10.213.2.1:8080;" in conf
    assert f"listen unix:{tmp_path / 'o.sock'};" in conf
    assert "user root" not in conf


def test_tally_log_counts_every_byte_and_blob_bodies_apart() -> None:
    log = (
        "2376 2100 200 100.5 0.000 10.213.1.2 /manifests/abc.json\n"
        "67109168 67108864 206 103.25 2.1 10.213.1.2 /blobs/sha256/ab/abcd\n"
        "garbage line\n"
        "150 0 200 99.0 0.000 unix: /\n"
    )
    assert tally_log(log) == OriginTally(2376 + 67109168 + 150, 67108864, 3, 103.25)
    assert tally_log("") == OriginTally()


def test_agent_command_lines_for_ring_and_naive(tmp_path: Path) -> None:
    spec = AgentSpec("n0", "127.0.0.1:7001", "http://127.0.0.1:8080", tmp_path / "n0",
                     tmp_path / "n0.sock")
    peers = ["127.0.0.1:7001", "127.0.0.1:7002"]
    ring = agent_argv(spec, "ring", peers, tmp_path / "token")
    naive = agent_argv(spec, "naive", peers, tmp_path / "token")
    assert ring[:4] == [sys.executable, "-m", "bdn", "agent"]
    assert ring[ring.index("--peers") + 1] == "127.0.0.1:7001,127.0.0.1:7002"
    assert "--peers" not in naive
    for argv in (ring, naive):
        assert argv[argv.index("--token-file") + 1] == str(tmp_path / "token")
        assert argv[argv.index("--listen") + 1] == "127.0.0.1:7001"
        assert argv[argv.index("--socket") + 1] == str(tmp_path / "n0.sock")


def test_agent_env_drops_what_would_steer_an_agent(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.setenv("BDN_STORE", "file:///elsewhere")
    monkeypatch.setenv("https_proxy", "http://proxy:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    env = agent_env(tmp_path)
    assert env["HOME"] == str(tmp_path)
    assert not {"BDN_STORE", "https_proxy", "HTTP_PROXY"} & set(env)
    assert env["PATH"] == os.environ["PATH"]


def test_ring_changes_are_counted_from_the_agent_log_after_a_time(tmp_path: Path) -> None:
    agent = FleetAgent(AgentSpec("n0", "127.0.0.1:1", "http://x", tmp_path, tmp_path / "a.sock"),
                       subprocess.Popen([sys.executable, "-c", ""]))
    agent.proc.wait(10)
    assert ring_changes_since(agent, 0) == 0  # no log yet
    lines = [
        {"ts": "2026-01-01T00:00:00.000+00:00", "msg": "ring membership changed"},
        {"ts": "2026-01-01T00:00:05.000+00:00", "msg": "pull started"},
        {"ts": "2026-01-01T00:00:06.500+00:00", "msg": "ring membership changed"},
    ]
    agent.log.write_text("\n".join(json.dumps(line) for line in lines) + "\nnot json\n")
    start = 1767225605.0  # 2026-01-01T00:00:05Z
    assert ring_changes_since(agent, start) == 1
    assert ring_changes_since(agent, 0) == 2
    # Joins while the ring forms at start-up are not changes: counted after it settled.
    lines.insert(1, {"ts": "2026-01-01T00:00:00.500+00:00", "msg": "ring settled"})
    agent.log.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    assert ring_changes_since(agent, 0) == 1


def test_netns_nodes_run_in_their_namespace_over_their_own_origin_link() -> None:
    plan = NetnsPlan("bdnhtest", 4)
    nodes = netns_nodes(2, plan)
    assert [n.listen for n in nodes] == ["10.213.0.10:7070", "10.213.0.11:7070"]
    assert [n.store for n in nodes] == ["http://10.213.1.1:8080", "http://10.213.2.1:8080"]
    assert nodes[1].argv_prefix == ("ip", "netns", "exec", "bdnhtest-n1")


# -- the namespace plan, as data --------------------------------------------------------


def test_tbf_rates_are_megabytes_per_second() -> None:
    assert tbf_args(100)[:3] == ["tbf", "rate", "800mbit"]
    assert tbf_args(1000)[:3] == ["tbf", "rate", "8000mbit"]
    assert tbf_args(0.5)[2] == "4mbit"
    for mbps in (0.5, 100, 1000):
        args = tbf_args(mbps)
        burst, limit = int(args[args.index("burst") + 1]), int(args[args.index("limit") + 1])
        assert burst >= 64 * 1024 and limit >= 2 * burst  # a GSO packet always fits


def test_setup_commands_build_only_inside_our_namespaces() -> None:
    plan = NetnsPlan("bdnhab12cd", 3, origin_mbps=100, peer_mbps=1000)
    cmds = setup_commands(plan)
    added = [c[3] for c in cmds if c[:3] == ["ip", "netns", "add"]]
    assert added == plan.namespaces == ["bdnhab12cd-o", "bdnhab12cd-s", "bdnhab12cd-n0",
                                        "bdnhab12cd-n1", "bdnhab12cd-n2"]
    for c in cmds:
        if c[:3] == ["ip", "netns", "add"]:
            continue
        # Every other command names one of our namespaces: nothing lands in the caller's.
        assert c[1] == "-n" and c[2] in plan.namespaces, c
        if "link" in c and "add" in c:
            assert len(c[c.index("add") + 1]) <= 15  # IFNAMSIZ
            if "veth" in c:
                assert c[-2] == "netns" and c[-1] in plan.namespaces
    # Each node: one shaped origin link (origin side) and a peer link shaped both ways.
    shaped = [(c[2], c[6], c[10]) for c in cmds if c[0] == "tc"]
    assert len(shaped) == 3 * plan.nodes
    assert (plan.origin_ns, "o1", "800mbit") in shaped
    assert (plan.switch_ns, "p1", "8000mbit") in shaped
    assert (plan.node_ns(1), "peer", "8000mbit") in shaped
    addresses = [c[5] for c in cmds if c[3:5] == ["addr", "add"]]
    assert len(addresses) == len(set(addresses)) == 3 * plan.nodes
    assert all(a.startswith("10.213.") for a in addresses)
    assert teardown_commands(plan) == [["ip", "netns", "del", ns]
                                       for ns in reversed(plan.namespaces)]


def test_plans_are_validated_and_unique() -> None:
    assert new_plan(2, origin_mbps=1, peer_mbps=1).tag != new_plan(
        2, origin_mbps=1, peer_mbps=1).tag
    for bad in ({"nodes": 0}, {"nodes": 201}, {"origin_mbps": 0}, {"tag": "a-b"}):
        with pytest.raises(ValueError):
            NetnsPlan(**{"tag": "bdnhx", "nodes": 2, **bad})  # type: ignore[arg-type]


# -- a live two-node setup (root only) ----------------------------------------------------

_FETCH = """
import sys, time, urllib.request
deadline = time.monotonic() + 10
while True:
    try:
        print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.1)
"""


def _serve(topo: Topology, ns: str, address: str, directory: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "http.server", "--bind", address, "--directory",
            str(directory), "8000"]
    return subprocess.Popen(topo.exec_argv(ns, argv), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _fetch(topo: Topology, ns: str, url: str) -> str:
    proc = subprocess.run(topo.exec_argv(ns, [sys.executable, "-c", _FETCH, url]),
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_a_two_node_namespace_setup_carries_http_and_is_torn_down(tmp_path: Path) -> None:
    why = netns_unavailable()
    if why:
        print(f"skipping: {why}")
        pytest.skip(why)
    (tmp_path / "hello.txt").write_text("hello from origin\n")
    plan = new_plan(2, origin_mbps=100, peer_mbps=1000)
    servers: list[subprocess.Popen[bytes]] = []
    with Topology(plan) as topo:
        assert set(plan.namespaces) <= existing_namespaces()
        try:
            servers.append(_serve(topo, plan.origin_ns, plan.origin_addr(0), tmp_path))
            servers.append(_serve(topo, plan.node_ns(1), plan.peer_addr(1), tmp_path))
            # Node 0 reaches origin over its own link, and node 1 across the switch.
            assert _fetch(topo, plan.node_ns(0),
                          f"http://{plan.origin_addr(0)}:8000/hello.txt") == "hello from origin"
            assert _fetch(topo, plan.node_ns(0),
                          f"http://{plan.peer_addr(1)}:8000/hello.txt") == "hello from origin"
        finally:
            for server in servers:
                server.kill()
                server.wait(10)
    assert not set(plan.namespaces) & existing_namespaces()


# -- reporting ------------------------------------------------------------------------------


def _facts() -> MachineFacts:
    return MachineFacts(2, 8 * GiB, "6.1", "3.11", "ext4 (/dev/x)", {"nginx": "1.22"})


def test_report_ratios_aims_and_json() -> None:
    model = 1000
    run = HerdRun(2.0, OriginTally(1010, 1000, 9, 5.0), 1.5, 1000, 3000)
    slow = HerdRun(8.0, OriginTally(4040, 4000, 33, 9.0), 7.5, 4000, 0)
    report = HerdReport(_facts(), HerdBenchOptions(nodes=(4,), netns=True), "t")
    report.cases = [HerdCase(4, "ring", model, [run]), HerdCase(4, "naive", model, [slow])]
    assert report.wall_ratio(4) == pytest.approx(0.25)
    lines = {aim.metric: (got, met) for aim, got, met in report.aim_lines()}
    assert lines == {"wall": (pytest.approx(0.25), True), "origin": (pytest.approx(1.01), True)}
    out = quiet_console()
    report.render(out)
    text = out.file.getvalue()  # type: ignore[attr-defined]
    assert "0.250x" in text and "ring wall time <= 0.35x naive" in text and "(met)" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["nodes"][0]["ring"]["runs"][0]["origin_busy_s"] == 1.5
    assert data["exit_code"] == report.exit_code == 0
    report.cases[1].error = "agent n1 exited 1"
    assert report.exit_code == 1 and report.wall_ratio(4) is None
    # On loopback only the origin aim applies; N = 4 not run says so.
    loop = HerdReport(_facts(), HerdBenchOptions(nodes=(2,)), "t",
                      [HerdCase(2, "ring", model), HerdCase(2, "naive", model)])
    out = quiet_console()
    loop.render(out)
    assert [a.metric for a, _, _ in loop.aim_lines()] == ["origin"]
    assert "N = 4 not run" in out.file.getvalue()  # type: ignore[attr-defined]


def test_an_owner_fault_is_reported_against_the_all_alive_ring_of_the_same_run() -> None:
    model = 1000
    alive = HerdRun(2.0, OriginTally(1010, 1000, 9, 5.0), 1.5, 1000, 3000)
    frozen = HerdRun(3.0, OriginTally(1010, 1000, 9, 5.0), 2.5, 1000, 3000,
                     hedges={"unresponsive": 2, "won": 2})
    options = HerdBenchOptions(nodes=(4,), owner_fault="frozen")
    assert options.variants == ("ring", "frozen")
    report = HerdReport(_facts(), options, "t",
                        [HerdCase(4, "ring", model, [alive]), HerdCase(4, "frozen", model,
                                                                        [frozen])])
    assert report.fault_ratio(4) == pytest.approx(1.5)
    assert report.aim_lines() == []  # The ring/naive aims are not this run's.
    out = quiet_console()
    report.render(out)
    text = out.file.getvalue()  # type: ignore[attr-defined]
    assert "1.500x" in text and "<= 2x" in text and "unresponsive=2 won=2" in text
    assert json.loads(json.dumps(report.to_dict()))["nodes"][0]["fault_ratio"] == 1.5


async def test_the_slow_owner_relay_delays_chunk_requests_only() -> None:
    hits: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(body=b"x" * 10, headers={"X-BDN-Chunk-Source": "cache"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    (port,) = free_ports(1)
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        with DelayRelay(f"127.0.0.1:{port}", delay=3600.0) as relay:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://{relay.address}/healthz") as resp:
                    assert (resp.status, await resp.read()) == (200, b"x" * 10)
                held = asyncio.ensure_future(session.get(f"http://{relay.address}/v1/chunks/a/0"))
                while relay.delayed == 0:
                    await asyncio.sleep(0.01)
                assert not held.done() and hits == ["/healthz"]  # Held, not forwarded.
                held.cancel()
                await asyncio.gather(held, return_exceptions=True)
    finally:
        await runner.cleanup()


# -- a tiny real run --------------------------------------------------------------------------


def test_tiny_herd_counts_origin_bytes_at_the_origin(tmp_path: Path) -> None:
    if shutil.which("nginx") is None:
        print("skipping: nginx not installed (apt-get install nginx)")
        pytest.skip("nginx not installed")
    options = HerdBenchOptions(nodes=(2,), size=4 * MiB, shards=4, workdir=tmp_path)
    report = run_herd_bench(options, console=quiet_console())
    ring, naive = report.case(2, "ring"), report.case(2, "naive")
    assert ring is not None and naive is not None
    assert ring.error is None and naive.error is None, (ring.error, naive.error)
    model = 4 * MiB
    for case, copies in ((ring, 1), (naive, 2)):
        (run,) = case.runs
        # nginx logged every blob byte (and the manifests and headers on top).
        assert run.origin.requests > 0
        assert run.origin.blob_body_bytes >= copies * model
        assert run.origin.bytes_sent > run.origin.blob_body_bytes
        # The agents' own counters agree with the origin about blob bytes (a body cut
        # short by a hedged fallback could count a little more at the sender).
        assert abs(run.agents_origin_bytes - run.origin.blob_body_bytes) <= model // 100
    assert ring.origin_ratio is not None and ring.origin_ratio <= 1.05
    assert naive.origin_ratio is not None and 1.95 <= naive.origin_ratio <= 2.1
    assert ring.runs[0].from_peers > 0 and naive.runs[0].from_peers == 0
    assert report.exit_code == 0
    json.dumps(report.to_dict())
    assert list(tmp_path.iterdir()) == []  # the work directory was removed
