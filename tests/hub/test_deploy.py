"""deploy/: pods reach their own node's Hub endpoint (agent ``--hf-listen`` on a hostPort,
``HF_ENDPOINT`` from the node IP through the downward API)."""

from __future__ import annotations

from pathlib import Path

from tests.deploy.test_manifests import (
    _agent,
    _daemon_args,
    container,
    container_env,
    flag,
    one,
    pod_spec,
)


def test_agent_serves_the_hub_endpoint_on_a_host_port(tmp_path: Path) -> None:
    from bdn.cli.agent import agent_config

    _, agent, args = _agent()
    host, port = flag(args, "--hf-listen").rsplit(":", 1)
    hf = next(p for p in agent["ports"] if p["name"] == "hf")
    assert hf["containerPort"] == hf["hostPort"] == int(port)
    assert agent_config(_daemon_args(agent, tmp_path)).hf_listen == (host, int(port))


def test_example_model_points_hf_endpoint_at_its_own_nodes_agent() -> None:
    _, _, args = _agent()
    port = flag(args, "--hf-listen").rsplit(":", 1)[1]
    server = container(pod_spec(one("Deployment", "example-model")), "server")
    env = container_env(server)
    assert env["HF_ENDPOINT"] == f"http://192.0.2.10:{port}/hf", "the node IP (status.hostIP)"
