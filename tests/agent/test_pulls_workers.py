"""The agent's data-plane worker count: automatic from its CPUs, set by ``--workers`` or
``BDN_WORKERS`` as for ``bdn pull``, resolved once at start; pulls stay bit-exact.

Real ``bdn agent`` processes pull a model from an HTTP origin over the pod API. The
count an agent resolved is read from its "agent started" log line, the one place it
reports its configuration.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bdn import fleet
from bdn.agent.client import AgentClient
from bdn.agent.protocol import request_for
from bdn.fleet import AgentSpec
from bdn.transfer.cores import available_cpus
from tests.cli import assert_one_line_error
from tests.e2e.agents import (
    TOKEN,
    AgentProcess,
    assert_same_tree,
    free_ports,
    mirrored_model,
    publish_store,
    running,
    short_dir,
    trees_flags,
    wait_ready,
)
from tests.fixtures import bdn_env, pattern_bytes, run_bdn
from tests.httpserver import FaultServer

CHUNK = 256 * 1024
FILES = {
    "model-00001.safetensors": pattern_bytes(11, 5 * CHUNK + 123),
    "model-00002.safetensors": pattern_bytes(12, 3 * CHUNK),
    "config.json": b'{"layers": 2}',
}


def start(base: Path, store: str, *, flags: list[str], env: dict[str, str]) -> AgentProcess:
    """``bdn agent`` with ``flags`` and ``env`` added to a clean environment (the shared
    ``start_agent`` helper gives no way to set one)."""
    root = base / "a0"
    root.mkdir(parents=True, exist_ok=True)
    token_file = root / "token"
    token_file.write_text(TOKEN + "\n")
    spec = AgentSpec("a0", f"127.0.0.1:{free_ports(1)[0]}", store, root, root / "a.sock")
    started = fleet.start_agent(
        spec, token_file=token_file, env=bdn_env(root, env),
        extra=["--probe-interval", "0.2", "--settle-timeout", "0", *trees_flags(None), *flags],
    )
    return AgentProcess(spec, started.proc, TOKEN)


def resolved_workers(agent: AgentProcess) -> object:
    """The worker count in the agent's "agent started" log line."""
    for line in agent.logs().splitlines():
        if line.startswith("{") and json.loads(line).get("msg") == "agent started":
            return json.loads(line)["workers"]
    raise AssertionError(f"no 'agent started' line in {agent.log}")


@pytest.mark.parametrize(("flags", "env", "expected"), [
    (["--workers", "3"], {"BDN_WORKERS": "2"}, 3),  # The flag wins over its variable.
    ([], {"BDN_WORKERS": "2"}, 2),
    ([], {}, None),  # Automatic: the CPUs the agent may use.
    (["--workers", "1"], {}, 1),
])
async def test_the_agent_resolves_its_worker_count_and_pulls_bit_exact(
    tmp_path: Path, fault_server: FaultServer, flags: list[str], env: dict[str, str],
    expected: int | None,
) -> None:
    _, store_root, manifest = await mirrored_model(tmp_path, FILES, CHUNK)
    origin = publish_store(fault_server, store_root)
    with short_dir() as base:
        agent = start(base, origin, flags=flags, env=env)
        with running([agent]):
            await wait_ready([agent])
            assert resolved_workers(agent) == (expected or available_cpus())
            client = AgentClient(agent.agent_address, poll_interval=0.05)
            mount = tmp_path / "tree"
            done = await client.pull(request_for(manifest.id, mount))
            assert done["state"] == "succeeded", done
            assert done["bytes_from_origin"] == sum(len(d) for d in FILES.values())
            assert_same_tree(mount, FILES)


def test_a_bad_agent_workers_flag_is_a_one_line_error(tmp_path: Path) -> None:
    res = run_bdn("agent", "--store", f"file://{tmp_path / 's'}", "--cache",
                  str(tmp_path / "c"), "--workers", "0", home=tmp_path)
    assert_one_line_error(res, "--workers", "whole number from 1 to 256")
