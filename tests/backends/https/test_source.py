"""HttpsSource: one file or named files of a folder at plain URLs, pinned by ETag /
Last-Modified, read in ranges or (when the server ignores Range) as one stream,
with an Authorization header from a secret. Servers: nginx (ETag, If-Match) and
the fault-injecting aiohttp origin, both on loopback over plain HTTP (the source
class reads any URL; only the config parser insists on https://)."""

from __future__ import annotations

import os
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from bdn.backends import open_source
from bdn.backends.base import RangeReader, ReopenableReader
from bdn.backends.http.pinned import PinnedReader
from bdn.backends.http.source import HttpsSource, https_source_from_entry
from bdn.backends.local.store import FileStore
from bdn.config.secrets import SecretResolver
from bdn.config.weights import AuthConfig, WeightsEntry
from bdn.errors import ConfigError, SourceError, SourceNotFound
from bdn.http import HttpClient
from bdn.mirror.run import MirrorOptions, _mirror
from bdn.store import Store
from bdn.transfer import FileTask, TransferConfig, TransferEngine
from bench.nginx import Nginx
from tests.httpserver import FaultPlan, FaultServer

TOKEN = "zzFAKE-http-TOKEN-4242"  # Distinctive: must never appear in an error.


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    if shutil.which("nginx") is None:
        pytest.skip("nginx is not installed (apt-get install nginx; .ci/run does)")
    root = tmp_path / "www"
    (root / "m").mkdir(parents=True)
    with Nginx(root, tmp_path / "nginx") as server:
        yield server


async def read(src: HttpsSource, path: str, start: int, end: int) -> bytes:
    obj = next(o for o in await src.list() if o.path == path)
    reader = src.reader(obj)
    return b"".join([bytes(p) async for p in reader.open_range(start, end)])


async def test_single_file_listed_with_etag_and_read_in_ranges(
        nginx: Nginx, http: HttpClient) -> None:
    data = os.urandom(300_000)
    (nginx.root / "m" / "model.bin").write_bytes(data)
    src = HttpsSource(nginx.url("m/model.bin"), http=http)
    [obj] = await src.list()
    assert (obj.path, obj.size) == ("model.bin", len(data)) and obj.etag
    assert await read(src, "model.bin", 1000, 250_000) == data[1000:250_000]


async def test_file_replaced_mid_mirror_fails_clearly(nginx: Nginx, http: HttpClient) -> None:
    path = nginx.root / "m" / "model.bin"
    path.write_bytes(b"a" * 10_000)
    src = HttpsSource(nginx.url("m/model.bin"), http=http)
    [obj] = await src.list()
    path.write_bytes(b"b" * 10_000)
    os.utime(path, (1_000_000_000, 1_000_000_000))  # a new mtime: nginx's ETag changes
    with pytest.raises(SourceError, match="changed upstream while it was being mirrored"):
        _ = [p async for p in src.reader(obj).open_range(0, 5000)]


async def test_folder_with_named_files_mirrors_then_moves_nothing(
        nginx: Nginx, http: HttpClient, tmp_path: Path) -> None:
    (nginx.root / "m" / "config.json").write_bytes(b'{"a": 1}')
    (nginx.root / "m" / "w.bin").write_bytes(os.urandom(200_000))
    entry = WeightsEntry(source="https://example.com/m/", allow_patterns=("config.json", "w.bin"))
    src = HttpsSource(nginx.url("m/"), files=("config.json", "w.bin"), http=http)
    layout = Store(FileStore(tmp_path / "store"))
    first = await _mirror(entry, src, layout, MirrorOptions(), None, None)
    assert first.files == 2 and first.bytes_transferred == 200_008
    again = await _mirror(entry, src, layout, MirrorOptions(), None, None)
    assert again.manifest_id == first.manifest_id and again.bytes_transferred == 0


async def test_server_without_range_is_read_as_one_stream(
        fault_server: FaultServer, http: HttpClient, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024)
    fault_server.put("big.bin", data)
    fault_server.faults = FaultPlan(ignore_range=True)
    entry = WeightsEntry(source="https://example.com/big.bin")
    src = HttpsSource(fault_server.url("big.bin"), http=http)
    layout = Store(FileStore(tmp_path / "store"))
    result = await _mirror(entry, src, layout, MirrorOptions(chunk_size=1024 * 1024), None, None)
    assert result.bytes_stored == len(data)
    assert fault_server.stats.get_requests <= 2  # the probe, then one stream


async def test_authorization_comes_from_the_secret(fault_server: FaultServer,
                                                   http: HttpClient) -> None:
    fault_server.put("w.bin", b"x" * 100)
    for value, header in ((TOKEN, f"Bearer {TOKEN}"), (f"Basic {TOKEN}", f"Basic {TOKEN}")):
        secrets = SecretResolver(None, {"BDN_SECRET_HTTP_AUTH_TOKEN": value})
        entry = WeightsEntry(source="https://example.com/w.bin", auth=AuthConfig(
            auth_method="CUSTOM_SECRET", auth_secret_name="http_auth_token"))
        src = https_source_from_entry(entry, secrets=secrets, http=http)
        src._files, src.uri = ("w.bin",), fault_server.url("w.bin")  # point it at loopback
        await src.list()
        assert fault_server.stats.last_headers["Authorization"] == header


async def test_missing_file_and_unpinned_identity(fault_server: FaultServer,
                                                  http: HttpClient) -> None:
    with pytest.raises(SourceNotFound, match="does not exist"):
        await HttpsSource(fault_server.url("nope.bin"), http=http).list()
    fault_server.put("w.bin", b"x")
    src = HttpsSource(fault_server.url("w.bin"), http=http)
    later = HttpsSource(fault_server.url("w.bin"), http=http)
    # No ETag, no Last-Modified: a later mirror never sees the same identity (it reads
    # again, deduped by hash); one mirror's second listing does, so sizes are compared.
    assert (await src.list())[0].identity != (await later.list())[0].identity
    assert (await src.list())[0].identity == (await src.list())[0].identity


def test_folder_needs_literal_allow_patterns(http: HttpClient) -> None:
    for patterns in (None, ("*.bin",)):
        with pytest.raises(ConfigError, match="name each file in allow_patterns"):
            open_source(WeightsEntry(source="https://example.com/m/", allow_patterns=patterns),
                        secrets=SecretResolver(None, {}), http=http)


def _engine_task(reader: RangeReader, size: int, dest: Path) -> FileTask:
    return FileTask(reader, size, dest, 64 * 1024, label="model.bin")


async def test_a_worker_process_reads_the_pinned_version(
        nginx: Nginx, http: HttpClient, tmp_path: Path) -> None:
    """The reader crosses into a data-plane worker with its pin: the bytes of the listed
    version come through, and a file replaced since the listing is the same one-line
    error there as here, never the new bytes."""
    path = nginx.root / "m" / "model.bin"
    data = os.urandom(300_000)
    path.write_bytes(data)
    src = HttpsSource(nginx.url("m/model.bin"), http=http,
                      authorization=f"Bearer {TOKEN}")
    [obj] = await src.list()
    reader = src.reader(obj)
    assert isinstance(reader, ReopenableReader)
    spec = reader.reopen_spec()
    assert spec is not None and TOKEN not in repr(spec)
    assert pickle.loads(pickle.dumps(spec)).headers["Authorization"] == f"Bearer {TOKEN}"
    # One chunk at a time and a tie goes to a worker: every chunk runs in the worker.
    config = TransferConfig(max_connections_per_file=1, workers=2, worker_min_bytes=0)
    async with TransferEngine(config) as engine:
        await engine.fetch(_engine_task(reader, obj.size, tmp_path / "ok"))
        assert len(engine.worker_pids()) == 1
        assert (tmp_path / "ok").read_bytes() == data
        path.write_bytes(os.urandom(300_000))
        os.utime(path, (1_000_000_000, 1_000_000_000))  # a new mtime: nginx's ETag changes
        with pytest.raises(SourceError, match="changed upstream while it was being mirrored"):
            await engine.fetch(_engine_task(reader, obj.size, tmp_path / "changed"))
        assert len(engine.worker_pids()) == 1  # The worker answered; it did not die.


def test_a_reader_that_signs_each_range_stays_in_its_process(http: HttpClient) -> None:
    signed = PinnedReader(lambda: http, lambda: "https://example.com/x?sig=fresh", 10,
                          where="example.com/x", etag='"v1"')
    assert signed.reopen_spec() is None
