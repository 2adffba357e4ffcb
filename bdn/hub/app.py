"""The Hub-compatible read endpoint: an aiohttp app for ``bdn serve`` and the node agent.

Everything answers under :data:`PREFIX`, so ``HF_ENDPOINT=http://HOST:PORT/hf``
is all unmodified model code needs (``from_pretrained``, ``snapshot_download``,
``hf_hub_download``). The routes are the part of the Hub API that
``huggingface_hub`` uses to download:

``GET /hf/api/models/{owner}/{name}[/revision/{rev}][?blobs=true]``
    revision info: ``sha`` (the commit) and ``siblings``;
``GET /hf/api/models/{owner}/{name}/tree/{rev}[/{path}][?recursive=true]``
    the file tree, in one page;
``HEAD|GET /hf/{owner}/{name}/resolve/{rev}/{path}``
    the file: ``X-Repo-Commit``, ``ETag`` (the git blob id), for LFS files
    ``X-Linked-Etag`` (the sha256) and ``X-Linked-Size``, ``Accept-Ranges``,
    ``Content-Length``, and one ``Range`` (206). Bytes come from
    :class:`~bdn.hub.blobs.BlobReader`, never from a redirect.

Revisions, access and error answers: :mod:`bdn.hub.revisions`,
:mod:`bdn.hub.answers`. The endpoint only reads, except with pull-through on
(:mod:`bdn.hub.upstream`): then an unmirrored public revision is mirrored once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from bdn.backends.base import BlobStore
from bdn.cache import NodeCache
from bdn.config.secrets import SecretResolver
from bdn.errors import BdnError, ManifestInvalid
from bdn.hub.answers import HubError, bad_request, blob_id, is_lfs, lfs_pointer_size, parse_range
from bdn.hub.blobs import BlobReader
from bdn.hub.revisions import Revisions, Snapshot
from bdn.hub.upstream import PullThrough, UpstreamConfig
from bdn.manifest import validate_path
from bdn.pull import DEFAULT_PULL_OPTIONS, PullOptions, Tier

log = logging.getLogger(__name__)

PREFIX = "/hf"
"""Path prefix of every route: clients set ``HF_ENDPOINT=http://HOST:PORT/hf``."""

_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")
"""A branch, tag or commit pull-through may ask upstream for (no '..' segments: checked too)."""

DEFAULT_REVISION = "main"
"""What ``/api/models/{repo}`` (no revision) answers, as the Hub's default branch."""


@dataclass(frozen=True, slots=True)
class HubContext:
    """What the endpoint reads from (owned and closed by the caller).

    ``tiers``: the agent's peer tier; ``None`` in ``bdn serve`` (origin only).
    ``secrets``: resolves the auth secrets named by private mirrors.
    """

    store: BlobStore
    cache: NodeCache
    secrets: SecretResolver
    options: PullOptions = DEFAULT_PULL_OPTIONS
    tiers: Tier | None = None
    upstream: UpstreamConfig | None = None
    """Pull-through (``--hf-upstream``, :mod:`bdn.hub.upstream`); ``None``: off."""


def hub_app(ctx: HubContext) -> web.Application:
    """The endpoint's app; its cleanup cancels fills still running."""
    hub = _Hub(ctx)
    app = web.Application()
    app.router.add_route("*", PREFIX + "/{tail:.*}", hub.handle)
    app.on_cleanup.append(hub.close)
    return app


class _Hub:
    """Request parsing and the three answers; one per app."""

    def __init__(self, ctx: HubContext) -> None:
        self.revisions = Revisions(ctx.store, ctx.secrets)
        self.blobs = BlobReader(ctx.store, ctx.cache, options=ctx.options, tiers=ctx.tiers)
        self.upstream = (None if ctx.upstream is None else
                         PullThrough(ctx.upstream, ctx.store, ctx.secrets))

    async def close(self, _app: web.Application | None = None) -> None:
        if self.upstream is not None:
            await self.upstream.close()
        await self.blobs.close()

    async def _snapshot(self, repo: str, revision: str, token: str | None) -> Snapshot:
        """The mirrored revision; with pull-through on, an unmirrored one is mirrored first."""
        try:
            return await self.revisions.snapshot(repo, revision, token)
        except HubError as err:
            if (self.upstream is None or not err.unmirrored or not _REVISION.fullmatch(revision)
                    or ".." in revision):
                raise
        await self.upstream.pull(repo, revision, token)
        return await self.revisions.snapshot(repo, revision, token)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._route(request)
        except HubError as err:
            return err.response()

    async def _route(self, request: web.Request) -> web.StreamResponse:
        raw = request.rel_url.raw_path[len(PREFIX):].strip("/")
        parts = [unquote(p) for p in raw.split("/")]
        token = _bearer(request)
        if len(parts) >= 4 and parts[:2] == ["api", "models"]:
            _only(request, "GET", "HEAD")
            repo, rest = f"{parts[2]}/{parts[3]}", parts[4:]
            if not rest:
                return await self._info(request, repo, DEFAULT_REVISION, token)
            if rest[0] == "revision" and len(rest) >= 2:
                return await self._info(request, repo, "/".join(rest[1:]), token)
            if rest[0] == "tree" and len(rest) >= 2:
                return await self._tree(request, repo, rest[1], "/".join(rest[2:]), token)
        elif len(parts) >= 5 and parts[2] == "resolve":
            _only(request, "GET", "HEAD")
            return await self._resolve(request, f"{parts[0]}/{parts[1]}", parts[3],
                                       "/".join(parts[4:]), token)
        raise HubError(404, None, f"{request.path} is not a route of this Hub endpoint; it "
                                  "answers /hf/api/models/... and /hf/{repo}/resolve/...")

    async def _info(self, request: web.Request, repo: str, revision: str,
                    token: str | None) -> web.Response:
        snap = await self._snapshot(repo, revision, token)
        blobs = request.query.get("blobs", "").lower() == "true"
        siblings = [_sibling(path, snap, blobs) for path in sorted(snap.files)]
        body = {
            "_id": hashlib.sha256(repo.encode()).hexdigest()[:24],
            "id": repo, "modelId": repo, "author": repo.split("/")[0],
            "sha": snap.commit, "private": snap.private, "gated": False, "disabled": False,
            "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
            "usedStorage": sum(e.size for e, _ in snap.files.values()),
        }
        return web.json_response(body)

    async def _tree(self, request: web.Request, repo: str, revision: str, path: str,
                    token: str | None) -> web.Response:
        snap = await self._snapshot(repo, revision, token)
        recursive = request.query.get("recursive", "").lower() == "true"
        listing = _tree(snap, path.strip("/"), recursive)
        if listing is None:
            raise HubError(404, "EntryNotFound",
                           f"folder {path!r} is not in the mirror of {repo}@{revision}",
                           {"X-Repo-Commit": snap.commit})
        return web.json_response(listing)

    async def _resolve(self, request: web.Request, repo: str, revision: str, path: str,
                       token: str | None) -> web.StreamResponse:
        try:
            validate_path(path)
        except ManifestInvalid as err:
            raise bad_request(f"{path!r} is not a file path in a repo ({err}); name a file "
                              "relative to the repo root, without '..'") from None
        snap = await self._snapshot(repo, revision, token)
        entry, manifest = snap.entry(path)
        headers = {"X-Repo-Commit": snap.commit, "ETag": f'"{blob_id(entry)}"',
                   "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if is_lfs(entry):
            headers["X-Linked-Etag"] = f'"{entry.sha256.hex}"'
            headers["X-Linked-Size"] = str(entry.size)
        span = parse_range(request.headers.get("Range"), entry.size)
        start, end = span if span is not None else (0, entry.size)
        if span is not None:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{entry.size}"
        headers["Content-Length"] = str(end - start)
        status = 206 if span is not None else 200
        if request.method == "HEAD":
            return web.Response(status=status, headers=headers)
        return await self._send(request, status, headers, snap, (entry, manifest), start, end)

    async def _send(self, request: web.Request, status: int, headers: dict[str, str],
                    snap: Snapshot, found: Any, start: int, end: int) -> web.StreamResponse:
        """Send the bytes with ``sendfile``, span by span as they are verified; an error
        before the first byte is an answer, after it a cut connection (the client resumes
        with a Range)."""
        entry, manifest = found
        spans = self.blobs.spans(manifest, entry, start, end)
        resp = web.StreamResponse(status=status, headers=headers)
        try:
            try:
                span = await anext(spans, None)
            except BdnError as err:
                log.warning("%s@%s/%s: %s", snap.repo, snap.revision, entry.path, err)
                raise HubError(502, None, f"{entry.path} could not be fetched from the store: "
                                          f"{err}") from err
            await resp.prepare(request)
            loop = asyncio.get_running_loop()
            while span is not None:
                transport = request.transport
                if transport is None or transport.is_closing():
                    return resp  # The client went away; the fill runs on.
                try:
                    if span.length:  # sendfile refuses a count of 0 (an empty file).
                        await loop.sendfile(transport, span.file, span.offset, span.length)
                except ConnectionError:
                    return resp  # As above: it resumes with a Range if it wants the rest.
                span = await anext(spans, None)
        finally:
            await spans.aclose()
        await resp.write_eof()
        return resp


def _bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _only(request: web.Request, *methods: str) -> None:
    if request.method not in methods:
        raise HubError(405, None, f"{request.method} is not allowed here: this endpoint only "
                                  f"serves reads ({', '.join(methods)})")


def _sibling(path: str, snap: Snapshot, blobs: bool) -> dict[str, Any]:
    entry, _ = snap.files[path]
    sibling: dict[str, Any] = {"rfilename": path}
    if blobs:
        sibling.update(blobId=blob_id(entry), size=entry.size)
        if is_lfs(entry):
            sibling["lfs"] = {"sha256": entry.sha256.hex, "size": entry.size,
                              "pointerSize": lfs_pointer_size(entry)}
    return sibling


def _tree(snap: Snapshot, base: str, recursive: bool) -> list[dict[str, Any]] | None:
    """Folders then files under ``base`` ("" for the root); None if no such folder."""
    prefix = f"{base}/" if base else ""
    under = sorted(p for p in snap.files if p.startswith(prefix))
    if prefix and not under:
        return None
    folders: set[str] = set()
    files: list[str] = []
    for path in under:
        dirs = path[len(prefix):].split("/")[:-1]
        depth = len(dirs) if recursive else min(1, len(dirs))
        folders.update(prefix + "/".join(dirs[:d]) for d in range(1, depth + 1))
        if recursive or not dirs:
            files.append(path)
    out: list[dict[str, Any]] = [
        {"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0, "path": f}
        for f in sorted(folders)]
    for path in files:
        entry, _ = snap.files[path]
        item: dict[str, Any] = {"type": "file", "oid": blob_id(entry), "size": entry.size,
                                "path": path}
        if is_lfs(entry):
            item["lfs"] = {"oid": entry.sha256.hex, "size": entry.size,
                           "pointerSize": lfs_pointer_size(entry)}
        out.append(item)
    return out
