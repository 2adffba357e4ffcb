"""The node agent serves the Hub endpoint on ``--hf-listen``, with its pulls' path.

A real ``bdn agent`` process over the store MiniLM was mirrored into (conftest);
``huggingface_hub`` downloads through it and gets the mirrored bytes; the
agent's own answers and flags stay as they were.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from tests.e2e.agents import free_ports, running, short_dir, start_agent, wait_ready
from tests.hub.conftest import REPO, Mirrored

hf = pytest.importorskip("huggingface_hub")


async def test_agent_serves_hf_endpoint_on_hf_listen(
        mirrored: Mirrored, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hf_constants

    port, hf_port = free_ports(2)
    endpoint = f"http://127.0.0.1:{hf_port}/hf"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(hf_constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    with short_dir() as base, running([start_agent(
            base, "a", port, store=f"file://{mirrored.store}",
            extra=["--hf-listen", f"127.0.0.1:{hf_port}"])]) as (agent,):
        await wait_ready([agent])
        path = await asyncio.to_thread(hf.hf_hub_download, REPO, "model.safetensors",
                                       cache_dir=tmp_path / "hf")
        want = (mirrored.model_dir / "model.safetensors").read_bytes()
        assert hashlib.sha256(Path(path).read_bytes()).digest() == hashlib.sha256(want).digest()
        info = await asyncio.to_thread(hf.HfApi().model_info, REPO)
        assert info.sha == mirrored.commit
        assert await asyncio.to_thread(agent.stop) == 0
