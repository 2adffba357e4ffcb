"""``bdn agent`` as a real process: start, serve both faces, drain on a signal, refuse
unsafe set-ups."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import stat
from pathlib import Path

import pytest

from bdn.agent.client import AgentClient, request_for
from bdn.cli.agent import agent_config, register
from bdn.errors import ConfigError
from tests.e2e.agents import (
    TOKEN,
    assert_same_tree,
    free_ports,
    http_json,
    mirrored_model,
    publish_store,
    running,
    short_dir,
    start_agent,
    wait_ready,
)
from tests.fixtures import pattern_bytes, run_bdn
from tests.httpserver import FaultPlan, FaultServer

CHUNK = 256 * 1024
MODEL = {
    "config.json": b"{}",
    "weights.safetensors": pattern_bytes(21, 8 * CHUNK + 3),
}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_serves_both_faces_then_drains_a_running_pull_and_exits_0(
    tmp_path: Path, fault_server: FaultServer, sig: signal.Signals
) -> None:
    _, store_root, manifest = await mirrored_model(tmp_path, MODEL, CHUNK)
    origin = publish_store(fault_server, store_root)
    (port,) = free_ports(1)
    with short_dir() as base, running(
        [start_agent(base, "a", port, store=origin, token=None)]
    ) as (agent,):
        await wait_ready([agent])
        assert stat.S_IMODE(agent.socket.stat().st_mode) == 0o660
        for address in (agent.agent_address, agent.url):
            code, body = await http_json(address, "GET", "/healthz")
            assert code == 200 and body["status"] == "ok", address
            code, text = await http_json(address, "GET", "/metrics")
            assert code == 200 and "bdn_pull_bytes_total" in text
        # Without a token the pull API is on the socket only: a loopback port is
        # open to every local user.
        code, _ = await http_json(agent.url, "POST", "/v1/pulls",
                                  request_for(manifest.id, tmp_path / "tcp"))
        assert code == 403

        # A pull slow enough to be in flight when the signal arrives.
        fault_server.faults = FaultPlan(bytes_per_second=512 * 1024)
        mount = tmp_path / "models" / "m"
        pull = asyncio.create_task(
            AgentClient(agent.agent_address).pull(request_for(manifest.id, mount))
        )
        while fault_server.stats.bytes_by_object == {} or not any(
            k.startswith("blobs/") for k in fault_server.stats.bytes_by_object
        ):
            assert not pull.done(), pull
            await asyncio.sleep(0.02)
        agent.signal(sig)
        # Draining: not healthy any more, no new pulls, but the running one finishes.
        for _ in range(200):
            code, body = await http_json(agent.agent_address, "GET", "/healthz")
            if code == 503:
                break
            await asyncio.sleep(0.01)
        assert (code, body["status"]) == (503, "draining")
        code, body = await http_json(agent.agent_address, "POST", "/v1/pulls",
                                     request_for(manifest.id, tmp_path / "other"))
        assert code == 503 and "shutting down" in body["error"]
        status = await pull
        assert status["state"] == "succeeded"
        assert_same_tree(mount, MODEL)
        assert await asyncio.to_thread(agent.proc.wait, 60) == 0
        assert not agent.socket.exists()
        lines = [json.loads(line) for line in agent.logs().splitlines() if line.strip()]
        messages = [rec["msg"] for rec in lines]
        assert "agent started" in messages and "draining" in messages
        assert messages[-1] == "agent stopped"
        assert any(rec.get("pull_id") == status["id"] for rec in lines)


@pytest.mark.parametrize("listen", ["0.0.0.0:7070", "10.1.2.3:7070", "node-1.example:7070"])
def test_refuses_a_non_loopback_listen_without_a_token(tmp_path: Path, listen: str) -> None:
    res = run_bdn("agent", "--listen", listen, "--cache", str(tmp_path / "c"), home=tmp_path,
                  timeout=60)
    assert res.code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "--token-file" in lines[0] and listen.rsplit(":", 1)[0] in lines[0]


async def test_a_non_loopback_listen_with_a_token_serves_peers_only_with_it(
    tmp_path: Path,
) -> None:
    (port,) = free_ports(1)
    with short_dir() as base, running(
        [start_agent(base, "a", port, store=f"file://{tmp_path}/store",
                     advertise=f"127.0.0.1:{port}", extra=["--listen", f"0.0.0.0:{port}"])]
    ) as (agent,):
        await wait_ready([agent])
        chunk = f"/v1/chunks/{'ab' * 32}/0?size=1&chunk_size=1&xxh3={'0' * 32}"
        code, _ = await http_json(agent.url, "GET", chunk)
        assert code == 401
        code, _ = await http_json(agent.url, "GET", chunk,
                                  headers={"Authorization": f"Bearer {TOKEN}"})
        assert code == 404  # Past the token: the (empty) origin has no such blob.
        assert await asyncio.to_thread(agent.stop) == 0


async def test_a_second_agent_on_the_same_socket_is_refused(tmp_path: Path) -> None:
    first_port, second_port = free_ports(2)
    store = f"file://{tmp_path}/store"
    with short_dir() as base, running([start_agent(base, "a", first_port, store=store)]) as (a,):
        await wait_ready([a])
        res = await asyncio.to_thread(
            run_bdn, "agent", "--store", store, "--cache", str(tmp_path / "c2"),
            "--listen", f"127.0.0.1:{second_port}", "--socket", str(a.socket),
            home=tmp_path, timeout=60,
        )
        assert res.code == 2
        assert "already serving" in res.stderr and len(res.stderr.strip().splitlines()) == 1
        code, _ = await http_json(a.agent_address, "GET", "/healthz")
        assert code == 200, "the first agent's socket survived"
        assert await asyncio.to_thread(a.stop) == 0


def test_bad_flags_are_one_line_usage_errors(tmp_path: Path) -> None:
    for args, needle in [
        (["--listen", "127.0.0.1"], "--listen"),
        (["--token-file", str(tmp_path / "missing")], "--token-file"),
        (["--advertise", "0.0.0.0:7070"], "--advertise"),
        (["--chunk-cache-bytes", "lots"], "--chunk-cache-bytes"),
    ]:
        res = run_bdn("agent", "--cache", str(tmp_path / "c"), *args, home=tmp_path, timeout=60)
        assert res.code == 2, (args, res.stderr)
        assert needle in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def _agent_args(argv: list[str], environ: dict[str, str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bdn")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["agent", *argv])
    args.environ = environ
    return args


def test_every_flag_has_an_environment_twin_and_flags_win(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(f"{TOKEN}\n")
    env = {
        "BDN_CACHE_DIR": str(tmp_path / "cache"),
        "BDN_STORE": "http://origin.example/bdn",
        "BDN_CACHE_MAX_BYTES": "2GiB",
        "BDN_AGENT_LISTEN": "0.0.0.0:9001",
        "BDN_AGENT_ADVERTISE": "10.0.0.7:9001",
        "BDN_PEERS": "10.0.0.7:9001, 10.0.0.8:9001",
        "BDN_TOKEN_FILE": str(token),
        "BDN_RING_REPLICAS": "2",
        "BDN_CHUNK_CACHE_BYTES": "1GiB",
    }
    config = agent_config(_agent_args([], env))
    assert config.settings.cache_dir == tmp_path / "cache"
    assert config.settings.store_uri == "http://origin.example/bdn"
    assert config.settings.cache_max_bytes == 2 * 1024**3
    assert config.listen == ("0.0.0.0", 9001) and config.advertise == "10.0.0.7:9001"
    assert config.socket_path == tmp_path / "cache" / "agent.sock"
    assert config.membership.static_peers == ("10.0.0.7:9001", "10.0.0.8:9001")
    assert config.membership.dns_name is None
    assert config.token == TOKEN
    assert config.ring.replicas == 2 and config.chunk_cache_bytes == 1024**3

    flags = agent_config(_agent_args(
        ["--listen", "127.0.0.1:9100", "--advertise", "127.0.0.1:9100", "--peers-dns",
         "agents.bdn.svc", "--socket", str(tmp_path / "s.sock")], env))
    assert flags.listen == ("127.0.0.1", 9100)
    assert flags.membership.dns_name == "agents.bdn.svc" and flags.membership.static_peers == ()
    assert flags.membership.peer_port == 9100
    assert flags.socket_path == tmp_path / "s.sock"

    with pytest.raises(ConfigError, match="not both"):
        agent_config(_agent_args([], {**env, "BDN_PEERS_DNS": "agents.bdn.svc"}))
