"""Absurd peer chunk requests answer 400 with a one-line JSON error, never 500.

Against a real agent (in this process, on real sockets) over a ``file://``
store: the parameters are checked when the request is parsed, and a ``size``
that is not the blob's is found out at origin after the read fails.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bdn.digest import MAX_CHUNK_SIZE
from bdn.manifest import FileEntry
from tests.agent import in_process_agent
from tests.e2e.agents import TOKEN, http_json, mirrored_model
from tests.fixtures import pattern_bytes

CHUNK = 64 * 1024
MODEL = {"model.safetensors": pattern_bytes(3, 3 * CHUNK + 7)}
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HUGE = "9" * 19  # the largest number the wire's 19-digit fields carry


@dataclass(frozen=True)
class Peer:
    """The agent's peer address and the one file of its mirrored model."""

    address: str
    entry: FileEntry

    def path(self, index: str = "0", *, size: str | None = None,
             chunk_size: str | None = None) -> str:
        e = self.entry
        return (f"/v1/chunks/{e.sha256.hex}/{index}?size={size or e.size}"
                f"&chunk_size={chunk_size or CHUNK}&xxh3={e.chunks[0]}")


@pytest.fixture
async def peer(tmp_path: Path) -> AsyncIterator[Peer]:
    _, store_root, manifest = await mirrored_model(tmp_path, MODEL, CHUNK)
    async with in_process_agent(tmp_path, f"file://{store_root}") as agent:
        yield Peer("http://{}:{}".format(*agent.config.listen), manifest.files[0])


def _absurd(p: Peer) -> dict[str, tuple[str, str]]:
    """Name -> (request path, what its error must say)."""
    size = p.entry.size
    return {
        "negative index": (p.path("-1"), "index must be a whole number"),
        "non-numeric index": (p.path("one"), "index must be a whole number"),
        "index of 20 digits": (p.path("1" * 20), "index must be a whole number"),
        "non-numeric chunk_size": (p.path(chunk_size="64k"), "chunk_size must be a whole"),
        "negative chunk_size": (p.path(chunk_size="-4"), "chunk_size must be a whole"),
        "zero chunk_size": (p.path(chunk_size="0"), "chunk_size must be from 1 to"),
        "huge chunk_size": (p.path(chunk_size=HUGE), "chunk_size must be from 1 to"),
        "chunk_size just over the cap": (
            p.path(chunk_size=str(MAX_CHUNK_SIZE + 1)), f"from 1 to {MAX_CHUNK_SIZE} bytes"),
        "index past the declared size": (p.path("4"), "chunk 4 does not exist"),
        "huge index": (p.path(HUGE), "does not exist"),
        "huge size": (p.path(size=HUGE), f"is not the size of blob {p.entry.sha256}"),
        "huge size and index": (p.path("1000000000", size=HUGE), f"({size} bytes)"),
        "size one chunk too big": (p.path("3", size=str(size + CHUNK)), "is not the size"),
        "size too small": (p.path(size="5"), "send the size the manifest records"),
    }


async def test_absurd_chunk_requests_answer_400_with_the_reason(peer: Peer) -> None:
    for name, (path, needle) in _absurd(peer).items():
        code, body = await http_json(peer.address, "GET", path, headers=AUTH)
        assert code == 400, (name, code, body)
        assert isinstance(body, dict) and set(body) == {"error"}, (name, body)
        assert "\n" not in body["error"] and needle in body["error"], (name, body)


async def test_a_good_request_is_still_served(peer: Peer) -> None:
    code, _ = await http_json(peer.address, "GET", peer.path(), headers=AUTH)
    assert code == 200
