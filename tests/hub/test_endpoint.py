"""The real ``huggingface_hub`` client against ``bdn serve``'s Hub endpoint (HF_ENDPOINT).

MiniLM is mirrored from our Hub-compatible server into a store (conftest); the
Hub server is gone by the time these run, so every byte comes from the store
through the node cache. Covers snapshot_download (in a fresh process, as
unmodified model code runs it; and with allow_patterns), hf_hub_download,
resume of an interrupted download, model_info / list_repo_files, private
repos, and the Hub's answers to bad requests.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.hub.conftest import PRIVATE, REPO, TOKEN, Mirrored, point_hf_client

hf = pytest.importorskip("huggingface_hub")
# The module-level helpers (hf.model_info, ...) are bound to an HfApi made at import,
# with the endpoint of that moment; a fresh HfApi() reads the patched one.


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def request(url: str, *, method: str = "GET",
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one raw request (errors included)."""
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


_LOAD = """
import hashlib, json, sys
from pathlib import Path
from huggingface_hub import snapshot_download
from safetensors.numpy import load_file
folder = Path(snapshot_download(sys.argv[1], cache_dir=sys.argv[2]))
tensors = load_file(folder / "model.safetensors")
print(json.dumps({
    "files": {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
              for p in folder.rglob("*") if p.is_file()},
    "tensors": len(tensors),
}))
"""


def test_unmodified_snapshot_download_in_a_fresh_process_gets_the_mirrored_bytes(
        hub: str, mirrored: Mirrored, tmp_path: Path) -> None:
    env = {**os.environ, "HF_ENDPOINT": hub}
    out = subprocess.run([sys.executable, "-c", _LOAD, REPO, str(tmp_path / "hf")], env=env,
                         capture_output=True, text=True, timeout=300, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    want = {p.relative_to(mirrored.model_dir).as_posix(): sha256(p)
            for p in mirrored.model_dir.rglob("*") if p.is_file()}
    assert got["files"] == want
    assert got["tensors"] > 0


def test_snapshot_download_with_allow_patterns_takes_only_those(
        hub: str, mirrored: Mirrored, tmp_path: Path) -> None:
    folder = Path(hf.snapshot_download(REPO, allow_patterns=["*.json"],
                                       cache_dir=tmp_path / "hf"))
    got = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert got == {"config.json", "config_sentence_transformers.json", "data_config.json",
                   "modules.json", "sentence_bert_config.json", "special_tokens_map.json",
                   "tokenizer.json", "tokenizer_config.json", "1_Pooling/config.json"}
    assert sha256(folder / "tokenizer.json") == sha256(mirrored.model_dir / "tokenizer.json")


def test_revision_mirrored_with_allow_patterns_serves_only_what_it_mirrored(
        hub: str, mirrored: Mirrored, tmp_path: Path) -> None:
    # json-only points at the same commit as main, which was mirrored whole: the files of
    # every manifest of that commit are served.
    assert "model.safetensors" in hf.HfApi().list_repo_files(REPO, revision="json-only")
    # A commit mirrored only in part: the private copy left out vocab.txt.
    with pytest.raises(hf.errors.EntryNotFoundError) as err:
        hf.hf_hub_download(PRIVATE, "vocab.txt", cache_dir=tmp_path / "hf", token=TOKEN)
    assert "allow_patterns" in str(err.value) or err.value.response.status_code == 404


def test_hf_hub_download_streams_one_file_from_a_cold_cache(
        hub: str, mirrored: Mirrored, tmp_path: Path) -> None:
    path = Path(hf.hf_hub_download(REPO, "model.safetensors", cache_dir=tmp_path / "hf"))
    assert sha256(path) == sha256(mirrored.model_dir / "model.safetensors")
    # Warm now: the same bytes from the node cache, and the headers the client reads.
    status, headers, _ = request(f"{hub}/{REPO}/resolve/main/model.safetensors", method="HEAD")
    size = (mirrored.model_dir / "model.safetensors").stat().st_size
    assert status == 200
    assert headers["X-Repo-Commit"] == mirrored.commit
    assert headers["X-Linked-Etag"] == f'"{sha256(mirrored.model_dir / "model.safetensors")}"'
    assert headers["X-Linked-Size"] == headers["Content-Length"] == str(size)
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["ETag"].startswith('"') and len(headers["ETag"]) == 42


class CuttingProxy:
    """A loopback TCP proxy to the endpoint that cuts the first response to a GET whose
    request line names ``path`` after ``after`` bytes, as a dropped connection would;
    it records every request head it forwards."""

    def __init__(self, upstream: str, path: str, after: int) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self._upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self._path, self._after = path, after
        self._armed = threading.Lock()  # Held once the cut is spent.
        self.requests: list[str] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}{parsed.path}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # Closed.
            upstream = socket.create_connection(self._upstream)
            left: list[int] = []  # Response bytes still to pass before the cut, once armed.
            threading.Thread(target=self._requests, args=(client, upstream, left),
                             daemon=True).start()
            threading.Thread(target=self._responses, args=(client, upstream, left),
                             daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket, left: list[int]) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(1 << 16):
                head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
                if head.startswith(("GET ", "HEAD ")):
                    self.requests.append(head)
                    line = head.split("\r\n", 1)[0]
                    if (line.startswith("GET ") and self._path in line
                            and self._armed.acquire(blocking=False)):
                        left.append(self._after)  # Before the request goes on: no race.
                upstream.sendall(data)
            upstream.shutdown(socket.SHUT_WR)

    def _responses(self, client: socket.socket, upstream: socket.socket, left: list[int]) -> None:
        with contextlib.suppress(OSError):
            while data := upstream.recv(1 << 16):
                if left:
                    if len(data) >= left[0]:
                        client.sendall(data[: left[0]])
                        break  # The cut: both sides closed below, mid-body.
                    left[0] -= len(data)
                client.sendall(data)
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def test_interrupted_download_resumes_with_a_range(
        hub: str, mirrored: Mirrored, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection drops 25 MB into the 87 MB shard; the client asks again from the
    last piece it wrote (it writes 10 MiB at a time: ``Range: bytes=N-``) and the
    endpoint sends exactly the rest."""
    source = mirrored.model_dir / "model.safetensors"
    proxy = CuttingProxy(hub, "model.safetensors", after=25_000_000)
    point_hf_client(monkeypatch, proxy.endpoint)
    try:
        path = Path(hf.hf_hub_download(REPO, "model.safetensors", cache_dir=tmp_path / "hf"))
    finally:
        proxy.close()
    assert sha256(path) == sha256(source)
    gets = [h.lower() for h in proxy.requests
            if h.startswith("GET ") and "model.safetensors" in h.split("\r\n", 1)[0]]
    assert len(gets) == 2 and "range:" not in gets[0], gets
    resumed_at = int(gets[1].split("range: bytes=", 1)[1].split("-", 1)[0])
    assert 0 < resumed_at < 25_000_000
    # The range it resumed with, asked directly: 206 and exactly those bytes.
    status, headers, body = request(f"{hub}/{REPO}/resolve/main/model.safetensors",
                                    headers={"Range": f"bytes={resumed_at}-{resumed_at + 99}"})
    assert status == 206 and body == source.read_bytes()[resumed_at : resumed_at + 100]
    assert headers["Content-Range"] == (
        f"bytes {resumed_at}-{resumed_at + 99}/{source.stat().st_size}")


def test_model_info_and_list_repo_files(hub: str, mirrored: Mirrored) -> None:
    info = hf.HfApi().model_info(REPO, files_metadata=True)
    assert info.sha == mirrored.commit
    by_name = {s.rfilename: s for s in info.siblings or []}
    shard = by_name["model.safetensors"]
    assert shard.lfs is not None
    assert shard.lfs.sha256 == sha256(mirrored.model_dir / "model.safetensors")
    assert by_name["config.json"].size == (mirrored.model_dir / "config.json").stat().st_size
    want = sorted(p.relative_to(mirrored.model_dir).as_posix()
                  for p in mirrored.model_dir.rglob("*") if p.is_file())
    assert sorted(hf.HfApi().list_repo_files(REPO)) == want
    assert hf.HfApi().model_info(REPO, revision=mirrored.commit).sha == mirrored.commit


def test_private_repo_needs_the_token_its_mirror_used(
        hub: str, mirrored: Mirrored, tmp_path: Path) -> None:
    with pytest.raises(hf.errors.RepositoryNotFoundError):
        hf.HfApi().model_info(PRIVATE, token=False)
    with pytest.raises(hf.errors.RepositoryNotFoundError):
        hf.HfApi().model_info(PRIVATE, token="hf_not_the_right_one")
    assert hf.HfApi().model_info(PRIVATE, token=TOKEN).sha == mirrored.private_commit
    path = hf.hf_hub_download(PRIVATE, "config.json", cache_dir=tmp_path / "hf", token=TOKEN)
    assert Path(path).read_bytes() == (mirrored.model_dir / "config.json").read_bytes()


def test_unknown_repo_answers_repo_not_found_saying_how_to_mirror(hub: str) -> None:
    with pytest.raises(hf.errors.RepositoryNotFoundError):
        hf.HfApi().model_info("nobody/nothing")
    status, headers, body = request(f"{hub}/api/models/nobody/nothing")
    assert status == 401 and headers["X-Error-Code"] == "RepoNotFound"
    assert "bdn mirror hf://nobody/nothing@main" in json.loads(body)["error"]
    status, headers, _ = request(f"{hub}/api/models/nobody/nothing",
                                 headers={"Authorization": "Bearer hf_someone"})
    assert status == 404 and headers["X-Error-Code"] == "RepoNotFound"


def test_unknown_revision_answers_revision_not_found(hub: str, tmp_path: Path) -> None:
    with pytest.raises(hf.errors.RevisionNotFoundError):
        hf.hf_hub_download(REPO, "config.json", revision="v9", cache_dir=tmp_path / "hf")
    status, headers, _ = request(f"{hub}/api/models/{REPO}/revision/v9")
    assert status == 404 and headers["X-Error-Code"] == "RevisionNotFound"
    assert f"bdn mirror hf://{REPO}@v9" in headers["X-Error-Message"]


@pytest.mark.parametrize("path", ["%2E%2E/%2E%2E/etc/passwd", "1_Pooling/%2E%2E/%2E%2E/x",
                                  "%2Fetc%2Fpasswd"])
def test_traversal_path_is_refused(hub: str, path: str) -> None:
    status, headers, body = request(f"{hub}/{REPO}/resolve/main/{path}")
    assert status == 400 and "not a file path in a repo" in headers["X-Error-Message"]
    assert b"root:x:" not in body


def test_malformed_or_unsatisfiable_range_answers_416(hub: str, mirrored: Mirrored) -> None:
    size = (mirrored.model_dir / "config.json").stat().st_size
    for bad in ("bytes=abc", "items=0-1", f"bytes={size}-", "bytes=0-1,5-6"):
        status, headers, _ = request(f"{hub}/{REPO}/resolve/main/config.json",
                                     headers={"Range": bad})
        assert status == 416, bad
        assert headers["Content-Range"] == f"bytes */{size}"
        assert "bytes=START-[END]" in headers["X-Error-Message"] or "bytes" in headers[
            "X-Error-Message"]


def test_writes_are_refused(hub: str) -> None:
    status, headers, _ = request(f"{hub}/{REPO}/resolve/main/config.json", method="PUT")
    assert status == 405 and "only serves reads" in headers["X-Error-Message"]
