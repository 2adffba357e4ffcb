"""A Hugging Face Hub-compatible HTTP server on loopback, for tests and ``bdn bench``.

:class:`HfServer` runs two aiohttp apps in a background thread with its own
event loop, each on ``127.0.0.1:<free port>``:

- the **Hub** (:attr:`HfServer.endpoint`), answering the routes the real
  ``huggingface_hub`` client calls for metadata and downloads:

  ``GET  /api/models/{owner}/{name}[/revision/{rev}][?blobs=true]``
      revision info: ``sha`` and ``siblings`` (with ``?blobs=true``: ``size``,
      ``blobId`` and ``lfs {sha256, size, pointerSize}``);
  ``GET  /api/models/{owner}/{name}/tree/{rev}[/{path}]?recursive=&expand=&cursor=``
      the tree listing, paginated with a ``Link: <...>; rel="next"`` header
      (1000 entries a page, 50 with ``expand``; :attr:`HfServer.page_size` overrides);
  ``HEAD|GET /{owner}/{name}/resolve/{rev}/{path}``
      ``X-Repo-Commit`` on every answer; small files answer ``200`` with
      ``ETag`` = the git blob id and honour ``Range``; LFS files answer ``302``
      to the CDN with ``X-Linked-Etag`` = the sha256 and ``X-Linked-Size``;

  and errors as the Hub sends them: ``X-Error-Code`` (``RepoNotFound``,
  ``RevisionNotFound``, ``GatedRepo``, ``EntryNotFound``), ``X-Error-Message``
  and a JSON ``{"error": ...}`` body; ``401`` with ``Invalid credentials in
  Authorization header`` for a token the server does not know;

- the **CDN** (:attr:`HfServer.cdn_url`): ``HEAD|GET /lfs/{sha256}?expires=&signature=``,
  served with ``sendfile`` and ``Range``/``206``; a bad or rotated signature
  answers ``403`` (:meth:`HfServer.rotate_cdn_key` expires every URL handed out).

Repos live in memory as commits of files whose bytes are on disk: bytes given
as ``bytes`` are written under the server's root directory, keyed by sha256;
a :class:`~pathlib.Path` is served in place (so a 2 GiB bench repo is never
copied). Files matching :data:`LFS_SUFFIXES` or of at least
:attr:`HfServer.lfs_threshold` bytes are LFS. Commit SHAs are derived from the
tree and the parent, so the same commits always get the same SHAs.

Every request is recorded (:attr:`HfServer.seen`) with its headers, and bytes
of bodies are counted per host (:attr:`HfServer.bytes_served`), so tests can
assert, e.g., that the CDN never saw an ``Authorization`` header.

Fixtures: ``hf_server_session`` (one server per session) and ``hf_server``
(the same, repos/tokens/records reset around each test). Import both into a
test module to use them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import os
import tempfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from aiohttp import web

from tests.loopback import LoopbackApps, listen, parse_range, server_fixtures

__all__ = [
    "LFS_SUFFIXES",
    "HfFile",
    "HfServer",
    "Seen",
    "git_blob_oid",
    "hf_server",
    "hf_server_session",
    "lfs_pointer",
]

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".onnx", ".msgpack", ".gguf")
"""What a typical ``.gitattributes`` on the Hub tracks with LFS."""

DEFAULT_LFS_THRESHOLD = 10 * 1024 * 1024
"""The Hub refuses non-LFS files from 10 MiB on; larger files are LFS here too."""

_HASH_PIECE = 8 * 1024 * 1024
_INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


def git_blob_oid(data: bytes) -> str:
    """The git object id of a blob with content ``data`` (what the Hub calls ``blobId``)."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file git stores in place of an LFS file."""
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"
    ).encode()


@dataclass(frozen=True, slots=True)
class HfFile:
    """One file of a commit: where its bytes are and the ids the Hub publishes."""

    path: str
    size: int
    blob_id: str
    data: Path
    sha256: str | None = None  # LFS files only
    pointer_size: int | None = None

    @property
    def is_lfs(self) -> bool:
        return self.sha256 is not None


@dataclass(frozen=True, slots=True)
class _Commit:
    sha: str
    files: Mapping[str, HfFile]
    title: str
    date: str


@dataclass(slots=True)
class _Repo:
    repo_id: str
    commits: dict[str, _Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    readers: frozenset[str] | None = None  # private: tokens that may read it
    gated_granted: frozenset[str] | None = None  # gated: tokens granted access


@dataclass(frozen=True, slots=True)
class Seen:
    """One request as the server received it."""

    host: str  # "hub" or "cdn"
    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    status: int


class HfServer:
    """The Hub and its CDN; see the module docstring. Thread-safe from the caller's side.

    Args:
        root: directory for file contents given as bytes (a temp dir if omitted,
            removed by :meth:`stop`).
        lfs_threshold: size from which any file is LFS.

    Attributes (the knobs a test may set; :meth:`reset` restores them):
        page_size: tree listing entries per page (``None``: the Hub's 1000 / 50).
        omit_blob_metadata: answer ``?blobs=true`` with bare siblings, as for a
            repo too large for the Hub to describe inline.
        seen: every request, in order of arrival.
        bytes_served: body bytes per host (``"hub"``, ``"cdn"``), counted as each
            response starts (a body the client abandons still counts whole).
    """

    def __init__(self, root: Path | None = None, *, lfs_threshold: int = DEFAULT_LFS_THRESHOLD):
        self._tmp = None if root is not None else tempfile.TemporaryDirectory(prefix="hfserver-")
        self.root = Path(root if root is not None else self._tmp.name)  # type: ignore[union-attr]
        self.lfs_threshold = lfs_threshold
        self.page_size: int | None = None
        self.omit_blob_metadata = False
        self._failures: list[int] = []
        self._lock = threading.Lock()
        self._repos: dict[str, _Repo] = {}
        self._tokens: set[str] = set()
        self._cdn_key = os.urandom(16)
        self._hashes: dict[tuple[str, int, int, int], tuple[str, str]] = {}
        self._lfs: dict[str, Path] = {}  # sha256 -> bytes, for the CDN
        self._request_ids = itertools.count(1)
        self.seen: list[Seen] = []
        self.bytes_served: dict[str, int] = {"hub": 0, "cdn": 0}
        self._apps = LoopbackApps()
        self._hub_sock, hub_port = listen()
        self._cdn_sock, cdn_port = listen()
        self.endpoint = f"http://127.0.0.1:{hub_port}"
        self.cdn_url = f"http://127.0.0.1:{cdn_port}"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> HfServer:
        hub = web.Application()
        hub.router.add_route("GET", "/api/models/{rest:.+}", self._api)
        hub.router.add_route("*", "/{rest:.+}", self._resolve)
        cdn = web.Application()
        cdn.router.add_route("*", "/lfs/{sha256}", self._cdn)
        # Recorded as the headers go out, before the body: a client that has
        # its bytes always finds the request already recorded.
        cdn.on_response_prepare.append(self._cdn_prepared)
        self._apps.start([(hub, self._hub_sock), (cdn, self._cdn_sock)])
        return self

    def stop(self) -> None:
        self._apps.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> HfServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget repos, tokens, records and counters (file hashes stay cached)."""
        with self._lock:
            self._repos.clear()
            self._tokens.clear()
            self._lfs.clear()
            self.page_size = None
            self.omit_blob_metadata = False
            self._failures = []
            self.seen = []
            self.bytes_served = {"hub": 0, "cdn": 0}

    def reset_stats(self) -> None:
        """Forget the request records and byte counters only."""
        with self._lock:
            self.seen = []
            self.bytes_served = {"hub": 0, "cdn": 0}

    # ------------------------------------------------------------------ repos

    def commit(
        self,
        repo_id: str,
        files: Mapping[str, bytes | Path],
        *,
        branch: str = "main",
        title: str = "Upload model",
    ) -> str:
        """Make ``files`` (the whole tree) the new head of ``branch``; return the commit SHA.

        The commit's parent is the branch's current head, so the SHA depends on
        the history as well as the tree, like git's.
        """
        tree = {path: self._file(path, data) for path, data in sorted(files.items())}
        with self._lock:
            repo = self._repos.setdefault(repo_id, _Repo(repo_id))
            parent = repo.refs.get(branch, "")
            digest = hashlib.sha1(f"parent {parent}\n{title}\n".encode())
            for f in tree.values():
                digest.update(f"{f.path}\x00{f.blob_id}\n".encode())
            sha = digest.hexdigest()
            date = f"2024-01-{1 + len(repo.commits) % 28:02d}T12:00:00.000Z"
            repo.commits[sha] = _Commit(sha, tree, title, date)
            self._lfs.update({f.sha256: f.data for f in tree.values() if f.sha256 is not None})
            repo.refs[branch] = sha
        return sha

    def commit_dir(self, repo_id: str, directory: Path, **kwargs: Any) -> str:
        """:meth:`commit` every file under ``directory`` (served in place)."""
        files: dict[str, bytes | Path] = {
            p.relative_to(directory).as_posix(): p
            for p in sorted(directory.rglob("*"))
            if p.is_file()
        }
        return self.commit(repo_id, files, **kwargs)

    def tag(self, repo_id: str, name: str, commit: str) -> None:
        """Point ref ``name`` (a tag or branch) at ``commit``."""
        with self._lock:
            self._repos[repo_id].refs[name] = commit

    def make_private(self, repo_id: str, *tokens: str) -> None:
        """Only ``tokens`` may see ``repo_id`` (others get ``RepoNotFound``)."""
        with self._lock:
            self._repos[repo_id].readers = frozenset(tokens)
            self._tokens.update(tokens)

    def make_gated(self, repo_id: str, *granted: str) -> None:
        """Metadata stays public; file downloads need one of ``granted`` (``GatedRepo``)."""
        with self._lock:
            self._repos[repo_id].gated_granted = frozenset(granted)
            self._tokens.update(granted)

    def add_token(self, token: str) -> None:
        """A token of a valid user (with no special access)."""
        with self._lock:
            self._tokens.add(token)

    def fail_next(self, status: int, count: int = 1) -> None:
        """Answer the next ``count`` Hub requests (API or resolve) with ``status``."""
        with self._lock:
            self._failures.extend([status] * count)

    def rotate_cdn_key(self) -> None:
        """Invalidate every CDN URL handed out so far (as if they had all expired)."""
        with self._lock:
            self._cdn_key = os.urandom(16)

    def files(self, repo_id: str, revision: str = "main") -> Mapping[str, HfFile]:
        """The files of ``repo_id`` at ``revision``."""
        with self._lock:
            repo = self._repos[repo_id]
            return repo.commits[repo.refs.get(revision, revision)].files

    def requests_to(self, host: str) -> list[Seen]:
        """Recorded requests to ``"hub"`` or ``"cdn"``."""
        with self._lock:
            return [s for s in self.seen if s.host == host]

    def _file(self, path: str, data: bytes | Path) -> HfFile:
        if isinstance(data, bytes):
            size = len(data)
            lfs = self._is_lfs(path, size)
            sha256 = hashlib.sha256(data).hexdigest()
            where = self.root / "objects" / sha256
            if not where.exists():
                where.parent.mkdir(parents=True, exist_ok=True)
                tmp = where.with_name(f"{sha256}.{os.getpid()}.{threading.get_ident()}.tmp")
                tmp.write_bytes(data)
                tmp.replace(where)
            oid = git_blob_oid(lfs_pointer(sha256, size) if lfs else data)
        else:
            where = data
            size = data.stat().st_size
            lfs = self._is_lfs(path, size)
            sha256, oid = self._hash_file(data, lfs)
        if lfs:
            return HfFile(path, size, oid, where, sha256, len(lfs_pointer(sha256, size)))
        return HfFile(path, size, oid, where)

    def _is_lfs(self, path: str, size: int) -> bool:
        return path.endswith(LFS_SUFFIXES) or size >= self.lfs_threshold

    def _hash_file(self, path: Path, lfs: bool) -> tuple[str, str]:
        """(sha256, blob id) of a file, cached by identity so shared shards hash once."""
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, int(lfs))
        with self._lock:
            hit = self._hashes.get(key)
        if hit is not None:
            return hit
        sha = hashlib.sha256()
        git = hashlib.sha1(b"blob %d\x00" % st.st_size)
        with path.open("rb") as fh:
            while piece := fh.read(_HASH_PIECE):
                sha.update(piece)
                if not lfs:
                    git.update(piece)
        sha256 = sha.hexdigest()
        oid = git_blob_oid(lfs_pointer(sha256, st.st_size)) if lfs else git.hexdigest()
        with self._lock:
            self._hashes[key] = (sha256, oid)
        return sha256, oid

    # ------------------------------------------------------------------ access

    def _record(self, host: str, request: web.Request, status: int) -> None:
        with self._lock:
            self.seen.append(Seen(host, request.method, request.path, request.query_string,
                                  dict(request.headers), status))

    def _count(self, host: str, n: int) -> None:
        with self._lock:
            self.bytes_served[host] += n

    def _error(self, request: web.Request, status: int, code: str | None, message: str,
               headers: Mapping[str, str] | None = None) -> web.Response:
        extra = {"X-Error-Message": message, "X-Request-Id": f"req-{next(self._request_ids)}"}
        if code is not None:
            extra["X-Error-Code"] = code
        self._record("hub", request, status)
        return web.Response(status=status, text=json.dumps({"error": message}),
                            content_type="application/json", headers={**extra, **(headers or {})})

    def _find(
        self, request: web.Request, repo_id: str, revision: str | None, *, data: bool
    ) -> tuple[_Repo, _Commit] | web.Response:
        """The repo and commit a request may see, or the Hub's error answer."""
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else None
        with self._lock:
            failure = self._failures.pop(0) if self._failures else None
        if failure is not None:
            return self._error(request, failure, None, "injected failure",
                               {"Retry-After": "0"})
        with self._lock:
            known = token is None or token in self._tokens
            repo = self._repos.get(repo_id)
        if not known:
            return self._error(request, 401, None, _INVALID_CREDENTIALS)
        if repo is None or (repo.readers is not None and token not in repo.readers):
            # Like the Hub: a private repo is indistinguishable from a missing one,
            # and an anonymous caller gets 401 rather than 404.
            return self._error(request, 401 if token is None else 404, "RepoNotFound",
                               "Repository not found")
        if data and repo.gated_granted is not None and token not in repo.gated_granted:
            if token is None:
                return self._error(
                    request, 401, "GatedRepo",
                    f"Access to model {repo_id} is restricted. You must have access to it and "
                    "be authenticated to access it. Please log in.")
            return self._error(
                request, 403, "GatedRepo",
                f"Access to model {repo_id} is restricted and you are not in the authorized "
                f"list. Visit {self.endpoint}/{repo_id} to ask for access.")
        sha = repo.refs.get(revision or "main", revision or "")
        commit = repo.commits.get(sha)
        if commit is None:
            return self._error(request, 404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return repo, commit

    # ------------------------------------------------------------------ hub: api

    async def _api(self, request: web.Request) -> web.Response:
        parts = [unquote(p) for p in request.rel_url.raw_path.split("/")[3:]]
        if len(parts) < 2:
            return self._error(request, 404, None, "Not Found")
        repo_id, rest = f"{parts[0]}/{parts[1]}", parts[2:]
        if not rest:
            return self._info(request, repo_id, None)
        if rest[0] == "revision" and len(rest) >= 2:
            return self._info(request, repo_id, "/".join(rest[1:]))
        if rest[0] == "tree" and len(rest) >= 2:
            return self._tree(request, repo_id, rest[1], "/".join(rest[2:]))
        return self._error(request, 404, None, "Not Found")

    def _info(self, request: web.Request, repo_id: str, revision: str | None) -> web.Response:
        found = self._find(request, repo_id, revision, data=False)
        if isinstance(found, web.Response):
            return found
        repo, commit = found
        blobs = request.query.get("blobs", "").lower() == "true"
        siblings = []
        for f in commit.files.values():
            sibling: dict[str, Any] = {"rfilename": f.path}
            if blobs and not self.omit_blob_metadata:
                sibling.update(blobId=f.blob_id, size=f.size)
                if f.is_lfs:
                    sibling["lfs"] = {"sha256": f.sha256, "size": f.size,
                                      "pointerSize": f.pointer_size}
            siblings.append(sibling)
        owner = repo_id.split("/")[0]
        body = {
            "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": owner,
            "sha": commit.sha,
            "lastModified": commit.date,
            "createdAt": "2024-01-01T00:00:00.000Z",
            "private": repo.readers is not None,
            "gated": "manual" if repo.gated_granted is not None else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(f.size for f in commit.files.values()),
        }
        return self._json(request, body)

    def _tree(self, request: web.Request, repo_id: str, revision: str,
              path: str) -> web.Response:
        found = self._find(request, repo_id, revision, data=False)
        if isinstance(found, web.Response):
            return found
        _, commit = found
        recursive = request.query.get("recursive", "").lower() == "true"
        expand = request.query.get("expand", "").lower() == "true"
        entries = _tree_entries(commit, path, recursive, expand)
        if entries is None:
            return self._error(request, 404, "EntryNotFound",
                               f"{path} does not exist on \"{revision}\"")
        size = self.page_size or (50 if expand else 1000)
        start = int(base64.urlsafe_b64decode(request.query["cursor"]).decode()) if (
            "cursor" in request.query) else 0
        page = entries[start:start + size]
        headers = {}
        if start + size < len(entries):
            cursor = base64.urlsafe_b64encode(str(start + size).encode()).decode()
            query = f"recursive={str(recursive).lower()}&expand={str(expand).lower()}"
            where = f"/{quote(path, safe='')}" if path else ""
            url = (f"{self.endpoint}/api/models/{repo_id}/tree/{quote(revision, safe='')}"
                   f"{where}?{query}&cursor={cursor}")
            headers["Link"] = f'<{url}>; rel="next"'
        return self._json(request, page, headers)

    def _json(self, request: web.Request, body: Any,
              headers: Mapping[str, str] | None = None) -> web.Response:
        self._record("hub", request, 200)
        text = json.dumps(body)
        self._count("hub", len(text))
        return web.Response(text=text, content_type="application/json", headers=headers)

    # ------------------------------------------------------------------ hub: resolve

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        parts = request.rel_url.raw_path.lstrip("/").split("/")
        if request.method not in ("GET", "HEAD") or len(parts) < 5 or parts[2] != "resolve":
            return self._error(request, 404, None, "Not Found")
        repo_id = f"{unquote(parts[0])}/{unquote(parts[1])}"
        revision, path = unquote(parts[3]), unquote("/".join(parts[4:]))
        found = self._find(request, repo_id, revision, data=True)
        if isinstance(found, web.Response):
            return found
        _, commit = found
        f = commit.files.get(path)
        if f is None:
            return self._error(request, 404, "EntryNotFound", f"{path} does not exist",
                               {"X-Repo-Commit": commit.sha})
        headers = {"X-Repo-Commit": commit.sha, "Accept-Ranges": "bytes",
                   "X-Request-Id": f"req-{next(self._request_ids)}"}
        if f.is_lfs:
            assert f.sha256 is not None
            headers.update({
                "Location": self._signed(f.sha256),
                "ETag": f'"{f.blob_id}"',
                "X-Linked-Etag": f'"{f.sha256}"',
                "X-Linked-Size": str(f.size),
            })
            self._record("hub", request, 302)
            return web.Response(status=302, text="Found. Redirecting", headers=headers)
        headers["ETag"] = f'"{f.blob_id}"'
        return await self._send_small(request, f, headers)

    async def _send_small(self, request: web.Request, f: HfFile,
                          headers: dict[str, str]) -> web.StreamResponse:
        start, end, status = 0, f.size, 200
        if "Range" in request.headers:
            parsed = parse_range(request.headers["Range"], f.size)
            if parsed is None:
                self._record("hub", request, 416)
                return web.Response(status=416, headers={"Content-Range": f"bytes */{f.size}"})
            (start, end), status = parsed, 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{f.size}"
        headers["Content-Length"] = str(end - start)
        headers["Content-Type"] = "application/octet-stream"
        resp = web.StreamResponse(status=status, headers=headers)
        self._record("hub", request, status)
        await resp.prepare(request)
        if request.method == "GET":
            with f.data.open("rb") as fh:
                fh.seek(start)
                body = fh.read(end - start)
            self._count("hub", len(body))
            await resp.write(body)
            await resp.write_eof()
        return resp

    # ------------------------------------------------------------------ cdn

    def _signed(self, sha256: str) -> str:
        expires = "4102444800"  # Far future: expiry is simulated by rotate_cdn_key().
        with self._lock:
            signature = hmac.new(self._cdn_key, f"{sha256}:{expires}".encode(),
                                 "sha256").hexdigest()
        return f"{self.cdn_url}/lfs/{sha256}?expires={expires}&signature={signature}"

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        sha256 = request.match_info["sha256"]
        expires = request.query.get("expires", "")
        with self._lock:
            want = hmac.new(self._cdn_key, f"{sha256}:{expires}".encode(), "sha256").hexdigest()
            target = self._lfs.get(sha256)
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405)
        if not hmac.compare_digest(want, request.query.get("signature", "")):
            return web.Response(status=403, text="<Error><Code>AccessDenied</Code></Error>",
                                content_type="application/xml")
        if target is None:
            return web.Response(status=404)
        return web.FileResponse(target)  # sendfile, with aiohttp's own Range handling

    async def _cdn_prepared(self, request: web.Request, response: web.StreamResponse) -> None:
        self._record("cdn", request, response.status)
        if request.method == "GET" and response.status in (200, 206):
            self._count("cdn", response.content_length or 0)


# --------------------------------------------------------------------------- helpers


def _tree_oid(paths: Iterable[str]) -> str:
    return hashlib.sha1("\n".join(sorted(paths)).encode()).hexdigest()


def _tree_entries(commit: _Commit, base: str, recursive: bool,
                  expand: bool) -> list[dict[str, Any]] | None:
    """The tree listing under ``base`` ("" for the root), or ``None`` if no such folder."""
    prefix = f"{base.strip('/')}/" if base.strip("/") else ""
    under = [f for f in commit.files.values() if f.path.startswith(prefix)]
    if prefix and not under:
        return None
    folders: dict[str, list[str]] = {}
    files: list[HfFile] = []
    for f in under:
        dirs = f.path[len(prefix):].split("/")[:-1]
        # Recursive: every folder on the way down; otherwise only the first level.
        depths = range(1, len(dirs) + 1) if recursive else range(1, min(1, len(dirs)) + 1)
        for depth in depths:
            folders.setdefault(prefix + "/".join(dirs[:depth]), []).append(f.path)
        if recursive or not dirs:
            files.append(f)
    last = {"id": commit.sha, "title": commit.title, "date": commit.date}
    out: list[dict[str, Any]] = []
    for path in sorted(folders):
        entry: dict[str, Any] = {"type": "directory", "oid": _tree_oid(folders[path]),
                                 "size": 0, "path": path}
        if expand:
            entry["lastCommit"] = last
        out.append(entry)
    for f in sorted(files, key=lambda f: f.path):
        entry = {"type": "file", "oid": f.blob_id, "size": f.size, "path": f.path}
        if f.is_lfs:
            entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
        if expand:
            entry["lastCommit"] = last
        out.append(entry)
    return out


# --------------------------------------------------------------------------- fixtures


# ``hf_server_session``: one :class:`HfServer` for the whole session; ``hf_server``: that
# server, with repos, tokens and records reset around the test.
hf_server_session, hf_server = server_fixtures(HfServer, "hf_server")
