"""The agent's wire, written once (bdn.agent.protocol), and the import boundary around it."""

from __future__ import annotations

import ast
import doctest
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from urllib.parse import parse_qsl, urlsplit

import pytest

import bdn.agent.client
import bdn.agent.config
import bdn.agent.protocol
import bdn.daemon.address
from bdn import errors
from bdn.agent.protocol import (
    CHUNK_ROUTE,
    ERROR_TYPES,
    STATUS_ERRORS,
    ChunkRef,
    PullStatus,
    chunk_path,
    error_for_status,
    error_of,
    parse_chunk_ref,
    status_for,
)
from bdn.digest import MAX_CHUNK_SIZE, Digest

ROOT = Path(__file__).resolve().parents[2]
XXH3 = "0123456789abcdef" * 2
DIGEST = Digest("ab" * 32)


def _parse(path: str) -> ChunkRef:
    """Read a chunk path the way the server's router does: route parts, then the query."""
    parts = urlsplit(path)
    prefix = CHUNK_ROUTE.split("{")[0]
    assert parts.path.startswith(prefix)
    digest, index = parts.path[len(prefix):].split("/")
    return parse_chunk_ref(digest, index, dict(parse_qsl(parts.query)))


@pytest.mark.parametrize(("index", "blob_size", "chunk_size"),
                         [(0, 1, 4), (2, 10, 4), (0, 4, 4), (9, 10 * 64, 64)])
def test_a_chunk_path_reads_back_as_the_same_ref(
    index: int, blob_size: int, chunk_size: int
) -> None:
    ref = ChunkRef(DIGEST, index, blob_size, chunk_size, XXH3)
    assert chunk_path(ref).startswith(f"/v1/chunks/{DIGEST.hex}/{index}?")
    assert _parse(chunk_path(ref)) == ref


GOOD = {"size": "10", "chunk_size": "4", "xxh3": XXH3}
MALFORMED = [
    ("AB" * 32, "0", GOOD, "64 lowercase hex"),
    ("ab" * 31, "0", GOOD, "64 lowercase hex"),
    ("ab" * 32, "-1", GOOD, "index must be"),
    ("ab" * 32, "3", GOOD, "chunk 3 does not exist"),
    ("ab" * 32, "0", {**GOOD, "size": "x"}, "size must be"),
    ("ab" * 32, "0", {"chunk_size": "4", "xxh3": XXH3}, "size must be"),
    ("ab" * 32, "0", {**GOOD, "chunk_size": "0"}, "chunk_size must be from 1 to"),
    ("ab" * 32, "0", {**GOOD, "chunk_size": "-4"}, "chunk_size must be a whole number"),
    ("ab" * 32, "0", {**GOOD, "chunk_size": str(MAX_CHUNK_SIZE + 1)},
     "chunk_size must be from 1 to"),
    ("ab" * 32, "0", {**GOOD, "chunk_size": "9" * 19}, "chunk_size must be from 1 to"),
    ("ab" * 32, "x", GOOD, "index must be a whole number"),
    ("ab" * 32, "1" * 20, GOOD, "index must be a whole number"),
    ("ab" * 32, "9" * 19, GOOD, r"has 3 \(indices 0 to 2\)"),
    ("ab" * 32, "0", {**GOOD, "size": "0"}, "has none"),
    ("ab" * 32, "0", {**GOOD, "xxh3": XXH3.upper()}, "xxh3 must be"),
    ("ab" * 32, "0", {"size": "10", "chunk_size": "4"}, "xxh3 must be"),
]


@pytest.mark.parametrize(("digest", "index", "query", "needle"), MALFORMED)
def test_malformed_chunk_requests_are_named(
    digest: str, index: str, query: dict[str, str], needle: str
) -> None:
    with pytest.raises(ValueError, match=needle) as caught:
        parse_chunk_ref(digest, index, query)
    assert "\n" not in str(caught.value)


def test_the_largest_chunk_a_peer_serves_is_accepted() -> None:
    query = {"size": str(MAX_CHUNK_SIZE), "chunk_size": str(MAX_CHUNK_SIZE), "xxh3": XXH3}
    assert parse_chunk_ref("ab" * 32, "0", query).end == MAX_CHUNK_SIZE


def test_error_statuses_map_both_ways() -> None:
    for status, cls in STATUS_ERRORS.items():
        err = error_for_status(status, "m")
        assert type(err) is cls and str(err) == "m"
        assert status_for(err) == status
    for status in (403, 404, 500, 502, 503):
        assert type(error_for_status(status, "m")) is errors.TransferError
    assert status_for(errors.TransferError("m")) == 500


def test_every_bdn_error_name_reads_back_as_itself_or_a_base() -> None:
    classes = [c for c in vars(errors).values() if isinstance(c, type)
               and issubclass(c, errors.BdnError) and c is not errors.BdnError]
    assert len(classes) >= 20
    for cls in classes:
        err = error_of(cls.__name__, "agent x: boom")
        assert issubclass(cls, type(err)), cls
        assert str(err) == "agent x: boom"
    assert set(ERROR_TYPES) == {c.__name__ for c in classes}
    assert type(error_of("BdnError", "m")) is errors.TransferError
    assert type(error_of(None, "m")) is errors.TransferError


def test_pull_status_reads_back_and_tolerates_nulls() -> None:
    done = PullStatus("pull-1", "succeeded", "sha256:" + "a" * 64, "/models/m", 5, 5,
                      1, 2, 3, files=4, tree_bytes=9, materialized="copy", seconds=1.5)
    assert PullStatus.from_dict(done.to_dict()) == done
    assert list(done.to_dict())[:4] == ["id", "state", "manifest_id", "mount_location"]
    running = PullStatus.from_dict({"id": "pull-2", "state": "running",
                                    "mount_location": "/m", "files": None})
    assert running.files == 0 and running.bytes_done == 0 and running.error is None
    with pytest.raises(KeyError):
        PullStatus.from_dict({"id": "pull-3"})


@pytest.mark.parametrize("module", [bdn.agent.protocol, bdn.agent.client, bdn.agent.config,
                                    bdn.daemon.address], ids=lambda m: m.__name__)
def test_doctests(module: ModuleType) -> None:
    assert doctest.testmod(module).failed == 0


def _bdn_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n.startswith("bdn.agent.")}


def test_the_library_imports_only_the_protocol_and_the_client_of_the_agent() -> None:
    allowed = {"bdn.agent.protocol", "bdn.agent.client"}
    offenders = {}
    for path in sorted((ROOT / "bdn").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("bdn/agent/") or rel == "bdn/cli/agent.py":
            continue
        modules = {n for n in _bdn_imports(path) if n.count(".") == 2}
        if modules - allowed:
            offenders[rel] = sorted(modules - allowed)
    assert offenders == {}
    init = ast.parse((ROOT / "bdn/agent/__init__.py").read_text(encoding="utf-8"))
    assert all(isinstance(n, ast.Expr) for n in init.body), "bdn/agent/__init__.py imports"


def test_the_protocol_is_pure() -> None:
    code = ("import sys, bdn.agent.protocol; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('aiohttp', 'diskcache', 'prometheus_client') or m.startswith('bdn.agent.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT, timeout=60).stdout
    assert out.strip() == "['bdn.agent.protocol']"
