"""HfSource against our Hub-compatible server, driven by the real huggingface_hub client.

Covers: a branch pinned to a commit, the listing (sizes, LFS sha256, nested
paths, the paginated tree fallback), ranged reads through the CDN redirect
with no token sent off the Hub, private and gated repos, and every error as a
one-line message that never carries the token.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import traceback
from pathlib import Path

import pytest

from bdn.backends.base import Source, SourceObject
from bdn.backends.hf.client import HubClient
from bdn.backends.hf.source import HfSource, hf_source_from_entry
from bdn.config.secrets import SecretResolver
from bdn.config.weights import AuthConfig, WeightsEntry
from bdn.errors import AuthError, BdnError, ConfigError, SecretError, SourceNotFound
from bdn.http import HttpClient, HttpRangeReader, RetryPolicy
from tests.backends.helpers import read_source
from tests.fixtures import pattern_bytes
from tests.hfserver import HfServer, git_blob_oid
from tests.hfserver import hf_server as hf_server
from tests.hfserver import hf_server_session as hf_server_session

TOKEN = "hf_TESTtoken_9f8e7d6c5b4a_DO_NOT_LEAK"
OTHER = "hf_OTHERuser_0a1b2c3d4e5f"
FAST = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.02)
SHARD = pattern_bytes(7, 300_000)
FILES = {
    "config.json": b'{"layers": 2}',
    "model.safetensors": SHARD,
    "tokenizer/vocab.txt": b"a\nb\nc\n",
    "sub/deep/extra.bin": pattern_bytes(8, 5000),
    "docs/read me é+%.txt": b"quoted path",
}


def source(server: HfServer, http: HttpClient, repo: str = "org/model", rev: str = "main",
           token: str | None = None) -> HfSource:
    hub = HubClient(repo, rev, token=token, endpoint=server.endpoint, retry=FAST)
    return HfSource(hub, http=http)


def by_path(objs: list[SourceObject]) -> dict[str, SourceObject]:
    return {o.path: o for o in objs}


async def test_resolve_pins_branch_to_commit(hf_server: HfServer, http: HttpClient) -> None:
    first = hf_server.commit("org/model", FILES)
    src = source(hf_server, http)
    assert isinstance(src, Source) and src.kind == "hf"
    assert src.uri == "hf://org/model@main"
    assert await src.resolve() == first
    listed = by_path(await src.list())

    # The branch moves on; the pinned source keeps listing and reading the old commit.
    second = hf_server.commit("org/model", {**FILES, "model.safetensors": pattern_bytes(9, 1000)})
    assert second != first
    assert await src.resolve() == first
    assert by_path(await src.list())["model.safetensors"].size == len(SHARD)
    assert await read_source(src, listed["model.safetensors"]) == SHARD
    resolves = [s.path for s in hf_server.requests_to("hub") if "/resolve/" in s.path]
    assert resolves and all(f"/resolve/{first}/" in p for p in resolves)

    assert await source(hf_server, http).resolve() == second
    assert await source(hf_server, http, rev=first).resolve() == first
    hf_server.tag("org/model", "v1.0", first)
    assert await source(hf_server, http, rev="v1.0").resolve() == first


async def test_list_sizes_lfs_sha256_and_nested_paths(hf_server: HfServer,
                                                      http: HttpClient) -> None:
    hf_server.commit("org/model", FILES)
    src = source(hf_server, http)
    objs = await src.list()  # Resolves on its own when needed.
    assert [o.path for o in objs] == sorted(FILES)
    for o in objs:
        data = FILES[o.path]
        assert o.size == len(data)
        assert o.identity.startswith(f"hf:{hf_server.endpoint}:org/model:")
    listed = by_path(objs)
    lfs = listed["model.safetensors"]
    assert lfs.sha256 == hashlib.sha256(SHARD).hexdigest() and lfs.etag == lfs.sha256
    assert listed["sub/deep/extra.bin"].sha256 == hashlib.sha256(FILES["sub/deep/extra.bin"]
                                                                 ).hexdigest()
    for o in objs:  # Every byte, through the Hub or the CDN; the odd name quoted.
        assert await read_source(src, o) == FILES[o.path], o.path
    small = listed["tokenizer/vocab.txt"]
    assert small.sha256 is None
    assert small.etag == git_blob_oid(FILES["tokenizer/vocab.txt"])
    assert small.identity.endswith(small.etag)


async def test_listing_falls_back_to_paginated_tree(hf_server: HfServer,
                                                    http: HttpClient) -> None:
    commit = hf_server.commit("org/model", FILES)
    expected = await source(hf_server, http).list()
    hf_server.omit_blob_metadata = True
    hf_server.page_size = 2
    hf_server.reset_stats()
    assert await source(hf_server, http).list() == expected
    trees = [s for s in hf_server.requests_to("hub") if "/tree/" in s.path]
    assert len(trees) == 5  # 5 files + 4 folders, 2 per page, pinned to the commit
    assert all(s.path == f"/api/models/org/model/tree/{commit}" for s in trees)
    assert ["cursor=" in s.query for s in trees] == [False, True, True, True, True]


async def test_ranges_through_cdn_never_carry_the_token(
    hf_server: HfServer, http: HttpClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    hf_server.commit("org/model", FILES)
    hf_server.make_private("org/model", TOKEN)
    src = source(hf_server, http, token=TOKEN)
    listed = by_path(await src.list())
    shard = listed["model.safetensors"]
    hf_server.reset_stats()
    reader = src.reader(shard)
    bounds = [(0, 100_000), (100_000, 200_000), (200_000, len(SHARD)), (12_345, 12_346)]

    async def one(start: int, end: int) -> bytes:
        return b"".join([bytes(p) async for p in reader.open_range(start, end)])

    parts = await asyncio.gather(*(one(a, b) for a, b in bounds))
    assert parts == [SHARD[a:b] for a, b in bounds]
    assert reader.supports_ranges is True

    cdn = hf_server.requests_to("cdn")
    hub = hf_server.requests_to("hub")
    assert len(cdn) == len(bounds) and all(s.status == 206 for s in cdn)
    assert all("Authorization" not in s.headers for s in cdn)
    assert TOKEN not in repr([s.headers for s in cdn]) + repr([s.query for s in cdn])
    assert [s.method for s in hub] == ["HEAD"]  # One HEAD, shared by the four ranges.
    assert hub[0].headers["Authorization"] == f"Bearer {TOKEN}"
    assert hf_server.bytes_served["cdn"] == sum(b - a for a, b in bounds)

    # A small file is read from the Hub itself, with the token.
    assert await read_source(src, listed["tokenizer/vocab.txt"], 2, 5) == b"b\nc"
    gets = [s for s in hf_server.requests_to("hub") if s.method == "GET"]
    assert gets[-1].headers["Authorization"] == f"Bearer {TOKEN}"
    assert gets[-1].headers["Range"] == "bytes=2-4"
    assert caplog.records and TOKEN not in caplog.text


async def test_aiohttp_drops_the_token_on_a_cross_origin_redirect(
    hf_server: HfServer, http: HttpClient
) -> None:
    """Belt and braces: even a plain ranged GET of the resolve URL, redirect followed
    by aiohttp, reaches the CDN without the token (aiohttp strips ``Authorization``
    when the origin changes). HfSource does not rely on it: it resolves the redirect
    itself and never hands the token to the CDN URL."""
    commit = hf_server.commit("org/model", FILES)
    hf_server.make_private("org/model", TOKEN)
    url = f"{hf_server.endpoint}/org/model/resolve/{commit}/model.safetensors"
    reader = HttpRangeReader(http, url, len(SHARD), headers={"Authorization": f"Bearer {TOKEN}"})
    assert b"".join([bytes(p) async for p in reader.open_range(0, 64)]) == SHARD[:64]
    (hub,) = hf_server.requests_to("hub")
    (cdn,) = hf_server.requests_to("cdn")
    assert hub.status == 302 and hub.headers["Authorization"] == f"Bearer {TOKEN}"
    assert "Authorization" not in cdn.headers


async def test_no_token_is_picked_up_from_the_machine(
    hf_server: HfServer, http: HttpClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # huggingface_hub would send these unless told token=False.
    monkeypatch.setenv("HF_TOKEN", OTHER)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    (tmp_path / "token").write_text(OTHER)
    hf_server.commit("org/model", FILES)
    hf_server.add_token(OTHER)
    src = source(hf_server, http)
    shard = by_path(await src.list())["model.safetensors"]
    assert await read_source(src, shard, 0, 4) == SHARD[:4]
    assert all("Authorization" not in s.headers for s in hf_server.seen)


async def test_expired_cdn_url_is_located_again(hf_server: HfServer, http: HttpClient) -> None:
    hf_server.commit("org/model", FILES)
    src = source(hf_server, http)
    shard = by_path(await src.list())["model.safetensors"]
    reader = src.reader(shard)
    first = b"".join([bytes(p) async for p in reader.open_range(0, 10)])
    hf_server.rotate_cdn_key()  # Every signed URL handed out so far is now refused.
    second = b"".join([bytes(p) async for p in reader.open_range(10, 20)])
    assert first + second == SHARD[:20]
    assert [s.status for s in hf_server.requests_to("cdn")] == [206, 403, 206]
    assert [s.method for s in hf_server.requests_to("hub") if "/resolve/" in s.path] == [
        "HEAD", "HEAD"]


async def test_private_repo_needs_the_right_token(hf_server: HfServer, http: HttpClient) -> None:
    hf_server.commit("org/model", FILES)
    hf_server.make_private("org/model", TOKEN)
    hf_server.add_token(OTHER)
    objs = by_path(await source(hf_server, http, token=TOKEN).list())
    assert set(objs) == set(FILES)

    with pytest.raises(SourceNotFound) as anonymous:
        await source(hf_server, http).resolve()
    assert "private repo needs a token" in str(anonymous.value)
    assert "auth_secret_name: hf_access_token" in str(anonymous.value)

    with pytest.raises(SourceNotFound) as other:
        await source(hf_server, http, token=OTHER).resolve()
    assert "hf_access_token" in str(other.value) and OTHER not in str(other.value)


def assert_clean(err: BaseException, *tokens: str) -> None:
    """A one-line message, and no token anywhere in the error or its chain."""
    text = "".join(traceback.format_exception(err))
    assert "\n" not in str(err)
    assert isinstance(err, BdnError)
    for token in tokens:
        assert token not in text and token not in repr(err)
        cause: BaseException | None = err
        while cause is not None:
            assert token not in repr(vars(cause)) if hasattr(cause, "__dict__") else True
            cause = cause.__cause__ or cause.__context__


async def test_gated_repo(hf_server: HfServer, http: HttpClient) -> None:
    hf_server.commit("org/gated", FILES)
    hf_server.make_gated("org/gated", OTHER)
    hf_server.add_token(TOKEN)
    for token in (None, TOKEN):
        src = source(hf_server, http, repo="org/gated", token=token)
        shard = by_path(await src.list())["model.safetensors"]  # Metadata stays public.
        with pytest.raises(AuthError) as info:
            await read_source(src, shard, 0, 10)
        message = str(info.value)
        assert "request access on the Hub page of org/gated" in message
        assert "hf_access_token secret" in message
        assert_clean(info.value, TOKEN)
    granted = source(hf_server, http, repo="org/gated", token=OTHER)
    shard = by_path(await granted.list())["model.safetensors"]
    assert await read_source(granted, shard, 0, 10) == SHARD[:10]


@pytest.mark.parametrize("token", [None, TOKEN])
async def test_repo_not_found(hf_server: HfServer, http: HttpClient, token: str | None) -> None:
    if token:
        hf_server.add_token(token)
    with pytest.raises(SourceNotFound) as info:
        await source(hf_server, http, repo="org/missing", token=token).list()
    message = str(info.value)
    assert message.startswith("Hugging Face repo org/missing not found on ")
    assert "private" in message
    assert_clean(info.value, TOKEN)


async def test_revision_not_found(hf_server: HfServer, http: HttpClient) -> None:
    hf_server.commit("org/model", FILES)
    with pytest.raises(SourceNotFound) as info:
        await source(hf_server, http, rev="no-such-branch", token=None).resolve()
    assert "revision 'no-such-branch' not found in Hugging Face repo org/model" in str(info.value)
    assert_clean(info.value)


async def test_bad_token(
    hf_server: HfServer, http: HttpClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    hf_server.commit("org/model", FILES)
    with pytest.raises(AuthError) as info:
        await source(hf_server, http, token=TOKEN).resolve()  # The server does not know it.
    assert "the hf_access_token secret is wrong" in str(info.value)
    assert info.value.status == 401
    assert_clean(info.value, TOKEN)
    assert TOKEN not in caplog.text


async def test_file_gone_from_commit(hf_server: HfServer, http: HttpClient) -> None:
    hf_server.commit("org/model", FILES)
    src = source(hf_server, http)
    await src.resolve()
    ghost = SourceObject(path="ghost.bin", size=3, identity="x")
    with pytest.raises(SourceNotFound) as info:
        await read_source(src, ghost)
    assert "ghost.bin not found in org/model@" in str(info.value)


async def test_transient_hub_errors_are_retried(hf_server: HfServer, http: HttpClient) -> None:
    hf_server.commit("org/model", FILES)
    hf_server.fail_next(503, count=2)
    src = source(hf_server, http)
    assert len(await src.list()) == len(FILES)
    hf_server.fail_next(502)
    shard = by_path(await src.list())["model.safetensors"]
    assert await read_source(src, shard, 5, 9) == SHARD[5:9]


async def test_reader_before_resolve_is_a_bug(hf_server: HfServer, http: HttpClient) -> None:
    with pytest.raises(RuntimeError):
        source(hf_server, http).reader(SourceObject(path="a", size=1, identity="a"))


# --------------------------------------------------------------------------- factory


def entry(secret: str | None = "hf_access_token") -> WeightsEntry:
    auth = AuthConfig(auth_method="CUSTOM_SECRET", auth_secret_name=secret) if secret else None
    return WeightsEntry(source="hf://org/model@main", auth=auth)


async def test_from_entry_reads_the_secret(hf_server: HfServer, http: HttpClient) -> None:
    hf_server.commit("org/model", FILES)
    hf_server.make_private("org/model", TOKEN)
    secrets = SecretResolver(None, {"BDN_SECRET_HF_ACCESS_TOKEN": f"  {TOKEN}\n"})
    src = hf_source_from_entry(entry(), secrets=secrets, endpoint=hf_server.endpoint, http=http)
    assert src.uri == "hf://org/model@main" and TOKEN not in repr(src)
    assert len(await src.list()) == len(FILES)

    public = hf_source_from_entry(entry(None), secrets=SecretResolver(None, {}),
                                  endpoint=hf_server.endpoint, http=http)
    with pytest.raises(SourceNotFound):
        await public.resolve()  # Private, and no token was configured.


def test_from_entry_secret_errors(http: HttpClient) -> None:
    with pytest.raises(SecretError, match="hf_access_token"):
        hf_source_from_entry(entry(), secrets=SecretResolver(None, {}),
                             endpoint="http://127.0.0.1:9", http=http)
    blank = SecretResolver(None, {"BDN_SECRET_HF_ACCESS_TOKEN": " \t "})
    with pytest.raises(SecretError, match="empty"):
        hf_source_from_entry(entry(), secrets=blank, endpoint="http://127.0.0.1:9", http=http)
    with pytest.raises(ConfigError):
        hf_source_from_entry(WeightsEntry(source="s3://bucket/x"), secrets=blank,
                             endpoint="http://127.0.0.1:9", http=http)
