"""``--hf-upstream`` and ``--hf-upstream-token-secret`` on ``bdn serve`` and ``bdn agent``:
off by default, parsed the same way by both, one-line errors for what cannot work."""

from __future__ import annotations

import pytest

from bdn.cli.agent import agent_config
from bdn.cli.serve import serve_config
from bdn.errors import ConfigError
from bdn.hub.upstream import DEFAULT_UPSTREAM, UpstreamConfig
from tests.deploy.test_manifests import parse_cli


def serve(*argv: str, env: dict[str, str] | None = None) -> UpstreamConfig | None:
    ns = parse_cli(["serve", "--store", "file:///tmp/h3-none", *argv])
    ns.environ = env or {}
    return serve_config(ns).upstream


def test_pull_through_is_off_by_default_on_serve_and_agent() -> None:
    assert serve() is None
    ns = parse_cli(["agent", "--store", "file:///tmp/h3-none"])
    ns.environ = {}
    assert agent_config(ns).hf_upstream is None


def test_hf_upstream_without_a_url_is_the_hub_and_with_one_is_that_url() -> None:
    assert serve("--hf-upstream") == UpstreamConfig(endpoint=DEFAULT_UPSTREAM)
    got = serve("--hf-upstream", "http://127.0.0.1:9/", "--hf-upstream-token-secret", "hf")
    assert got == UpstreamConfig(endpoint="http://127.0.0.1:9", token_secret="hf")
    assert serve(env={"BDN_HF_UPSTREAM": "https://hub.example"}) == UpstreamConfig(
        endpoint="https://hub.example")
    ns = parse_cli(["agent", "--store", "file:///tmp/h3-none", "--hf-upstream"])
    ns.environ = {}
    assert agent_config(ns).hf_upstream == UpstreamConfig(endpoint=DEFAULT_UPSTREAM)


@pytest.mark.parametrize(("argv", "says"), [
    (["--hf-upstream-token-secret", "hf"], "--hf-upstream is not"),
    (["--hf-upstream", "ftp://x"], "is not an http"),
])
def test_what_cannot_work_is_one_line_naming_the_flag(argv: list[str], says: str) -> None:
    with pytest.raises(ConfigError, match=says) as err:
        serve(*argv)
    assert "\n" not in str(err.value)
