"""Real ``bdn mirror-server`` processes: SIGKILL mid-job, resume, SIGTERM drain, secrets unlogged.

The source is an S3 prefix on moto, reached through :class:`ThrottledRelay`,
which slows object bodies down so a kill lands while the job is moving bytes
(the relay, not the server, is instrumented; nothing in the server knows it
is being tested).
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bdn.backends import open_store
from bdn.store import Store
from bench.mirror_server import MirrorServerProcess, start_mirror_server
from bench.threaded_app import ThreadedApp
from tests.conftest import MotoS3
from tests.fixtures import bdn_env, make_model, pattern_bytes

TOKEN = "e2e-mirror-token-7d2c91"
KiB = 1024
SECRET_NAME = "aws_creds"

# Object bodies are relayed in pieces of this size, each followed by its share of sleep.
_PIECE = 16 * KiB
_HOP_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})


@dataclass
class ThrottledRelay(ThreadedApp):
    """Relays HTTP to moto; object GET bodies under ``slow_prefix`` go at ``rate`` bytes/s.

    Runs its own event loop in a thread. ``body_bytes`` counts object bytes relayed
    per key path; ``rate=None`` relays at full speed.
    """

    upstream: str
    slow_prefix: str
    rate: float | None = None
    port: int = 0
    body_bytes: dict[str, int] = field(default_factory=dict)
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def bytes_under(self, prefix: str) -> int:
        with self._lock:
            return sum(n for k, n in self.body_bytes.items() if k.startswith(prefix))

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_route("*", "/{tail:.*}", self._relay)
        return app

    async def _relay(self, request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        body = await request.read()
        async with aiohttp.ClientSession(auto_decompress=False) as s, s.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body,
            allow_redirects=False,
        ) as up:
            resp = web.StreamResponse(status=up.status, headers={
                k: v for k, v in up.headers.items() if k.lower() not in _HOP_HEADERS})
            if up.content_length is not None:
                resp.content_length = up.content_length
            await resp.prepare(request)
            if request.method == "HEAD":
                return resp
            counted = request.method == "GET" and request.path.startswith(self.slow_prefix)
            try:
                async for piece in up.content.iter_chunked(_PIECE):
                    await resp.write(piece)
                    if counted:
                        with self._lock:
                            self.body_bytes[request.path] = (
                                self.body_bytes.get(request.path, 0) + len(piece))
                        if self.rate:
                            await asyncio.sleep(len(piece) / self.rate)
                await resp.write_eof()
            except ConnectionResetError:
                pass  # The client was killed mid-body: what this relay is for.
            return resp


def s3_secret(moto: MotoS3, **extra: str) -> str:
    return json.dumps({"aws_access_key_id": moto.access_key_id,
                       "aws_secret_access_key": moto.secret_access_key, **extra})


def s3_weights(bucket: str, prefix: str, mount: str,
               secret: str = SECRET_NAME) -> list[dict[str, Any]]:
    return [{"source": f"s3://{bucket}/{prefix}", "mount_location": mount,
             "auth": {"auth_method": "CUSTOM_SECRET", "auth_secret_name": secret}}]


def upload(moto: MotoS3, bucket: str, prefix: str, files: dict[str, bytes]) -> int:
    client = moto.client()
    for path, data in files.items():
        client.put_object(Bucket=bucket, Key=f"{prefix}/{path}", Body=data)
    return sum(len(v) for v in files.values())


def record(server: MirrorServerProcess, jid: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((server.state_dir / "jobs" / f"{jid}.json").read_text())
    return data


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.fixture
def relay(moto_s3: MotoS3) -> Iterator[ThrottledRelay]:
    with ThrottledRelay(moto_s3.endpoint_url, slow_prefix="/") as r:
        yield r


@pytest.fixture
async def servers() -> AsyncIterator[list[MirrorServerProcess]]:
    """Every server a test starts; killed (if still running) on the way out."""
    started: list[MirrorServerProcess] = []
    yield started
    for s in started:
        await s.close()
        if s.proc.poll() is None:
            s.kill()


async def until(cond: Any, what: str, tries: int = 3000) -> None:
    for _ in range(tries):
        if await cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_sigkilled_server_resumes_the_job_which_completes_once(
    tmp_path: Path, moto_s3: MotoS3, s3_bucket: str, relay: ThrottledRelay,
    servers: list[MirrorServerProcess],
) -> None:
    files = {"config.json": b'{"layers": 2}',
             "tokenizer.json": pattern_bytes(3, 64 * KiB),
             "model-1.safetensors": pattern_bytes(1, 1024 * KiB),
             "model-2.safetensors": pattern_bytes(2, 1024 * KiB)}
    total = upload(moto_s3, s3_bucket, "llama", files)
    relay.rate = 256 * KiB  # Each 1 MiB shard takes ~4 s; the small files well under 1 s.
    store = tmp_path / "store"
    env = bdn_env(tmp_path, {"AWS_ENDPOINT_URL": relay.url,
                             "BDN_SECRET_AWS_CREDS": s3_secret(moto_s3)})
    first = start_mirror_server(tmp_path / "srv", store=f"file://{store}", env=env, token=TOKEN,
                                 allow=["s3://"])
    servers.append(first)
    await first.wait_ready()
    jid = await first.submit(s3_weights(s3_bucket, "llama", "/models/llama"))

    async def mid_transfer() -> bool:
        # The small files are stored and indexed (by source identity and by content id,
        # so a re-run knows them from their listing), the shards are on their way.
        return (len(files_under(store / "index")) >= 4
                and relay.bytes_under(f"/{s3_bucket}/llama/model") > 0)

    await until(mid_transfer, "the job to be mid-transfer")
    first.kill()
    assert record(first, jid)["state"] == "running"
    assert (await first.request("GET", "/healthz", token=None))[0] == 0  # Really gone.

    relay.rate = None
    before = relay.bytes_under(f"/{s3_bucket}/llama/")
    second = start_mirror_server(tmp_path / "srv", store=f"file://{store}", env=env, token=TOKEN,
                                 allow=["s3://"])
    servers.append(second)
    await second.wait_ready()
    done = (await second.wait_jobs([jid], timeout=120))[jid]
    assert done["state"] == "succeeded", done
    # Completed exactly once: one mirror of the entry ever finished, in the second attempt.
    assert done["attempts"] == 2 and done["mirrors"] == 1
    m = await second.metrics()
    assert m['bdn_mirror_runs_total{outcome="succeeded"}'] == 1
    assert m['bdn_mirror_jobs{state="succeeded"}'] == 1
    # The resumed run re-read only what was not stored yet: not the small files.
    resumed_read = relay.bytes_under(f"/{s3_bucket}/llama/") - before
    assert resumed_read <= total - len(files["tokenizer.json"]) - len(files["config.json"])
    layout = Store(open_store(f"file://{store}"))
    report = await layout.check(deep=True)
    assert report.ok and report.manifests == 1, report.problems
    manifest = await layout.get_manifest(done["manifests"][0]["manifest_id"])
    assert sorted(f.path for f in manifest.files) == sorted(files)
    # Submitting the same weights again answers the finished job; nothing runs.
    code, again = await second.request("POST", "/v1/mirrors",
                                       {"weights": s3_weights(s3_bucket, "llama",
                                                              "/models/llama")})
    assert code == 200 and again["state"] == "succeeded"
    assert second.stop() == 0


async def test_sigterm_drains_running_jobs_and_exits_0(
    tmp_path: Path, moto_s3: MotoS3, s3_bucket: str, relay: ThrottledRelay,
    servers: list[MirrorServerProcess],
) -> None:
    upload(moto_s3, s3_bucket, "small", {"w.safetensors": pattern_bytes(5, 256 * KiB)})
    upload(moto_s3, s3_bucket, "big", {"w.safetensors": pattern_bytes(6, 2048 * KiB)})
    relay.rate = 512 * KiB
    env = bdn_env(tmp_path, {"AWS_ENDPOINT_URL": relay.url,
                             "BDN_SECRET_AWS_CREDS": s3_secret(moto_s3)})
    store = f"file://{tmp_path / 'store'}"

    async def sigterm_mid_job(name: str, *extra: str) -> tuple[MirrorServerProcess, str]:
        """Start a server, submit model ``name``, SIGTERM it once bytes move; it exits 0."""
        server = start_mirror_server(tmp_path / name, store=store, env=env, token=TOKEN,
                                     extra=extra, allow=["s3://"])
        servers.append(server)
        await server.wait_ready()
        jid = await server.submit(s3_weights(s3_bucket, name, f"/m/{name}"))

        async def moving() -> bool:
            return relay.bytes_under(f"/{s3_bucket}/{name}/") > 0

        await until(moving, "bytes to move")
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0
        return server, jid

    # A drain long enough: the running job finishes, the process exits 0.
    server, jid = await sigterm_mid_job("small")
    assert record(server, jid)["state"] == "succeeded"
    assert '"msg": "draining"' in server.logs()

    # A drain deadline shorter than the job: exit 0 anyway, the job left to resume.
    server, jid = await sigterm_mid_job("big", "--drain-timeout", "0.2")
    assert record(server, jid)["state"] == "running"
    assert "drain deadline reached" in server.logs()


async def test_no_secret_value_reaches_the_logs_or_the_state_dir(
    tmp_path: Path, moto_s3: MotoS3, s3_bucket: str, servers: list[MirrorServerProcess],
) -> None:
    upload(moto_s3, s3_bucket, "m", {"w.safetensors": pattern_bytes(7, 64 * KiB)})
    secret_values = ["SESSION-TOKEN-d1st1nct-9f3a", "BROKEN-d1st1nct-0c7e"]
    env = bdn_env(tmp_path, {
        "AWS_ENDPOINT_URL": moto_s3.endpoint_url,
        # moto accepts any keys: the distinctive session token travels with every request.
        "BDN_SECRET_AWS_CREDS": s3_secret(moto_s3, aws_session_token=secret_values[0]),
        # A malformed secret, so the error path is exercised too.
        "BDN_SECRET_BAD_CREDS": json.dumps({"aws_access_key_id": "AKIAEXAMPLE",
                                            "password": secret_values[1]}),
    })
    # -v: DEBUG logging must not leak either.
    server = start_mirror_server(tmp_path / "srv", store=f"file://{tmp_path / 'store'}",
                                 env=env, token=TOKEN, verbose=True, allow=["s3://"])
    servers.append(server)
    await server.wait_ready()
    good = await server.submit(s3_weights(s3_bucket, "m", "/m/good"))
    bad = await server.submit(s3_weights(s3_bucket, "m", "/m/bad", secret="bad_creds"))
    missing = await server.submit(s3_weights(f"{s3_bucket}-nope", "m", "/m/missing"))
    done = await server.wait_jobs([good, bad, missing], timeout=120)
    assert done[good]["state"] == "succeeded", done[good]
    assert done[bad]["state"] == "failed" and "aws_secret_access_key" in done[bad]["error"]
    assert done[missing]["state"] == "failed"
    assert server.stop() == 0
    logs = server.logs()
    lines = [line for line in logs.splitlines() if line.strip()]
    assert lines and all(json.loads(line) for line in lines)  # JSON, one object a line.
    assert any(json.loads(line).get("level") == "debug" for line in lines)
    assert any(json.loads(line).get("job_id") == bad for line in lines)
    state = "".join(p.read_text() for p in (server.state_dir / "jobs").iterdir())
    for value in [*secret_values, moto_s3.secret_access_key]:
        assert value not in logs
        assert value not in state
    assert SECRET_NAME in state  # Names are kept: the next start resolves them again.



async def test_a_file_source_outside_the_allowlist_is_refused_and_nothing_is_read(
    tmp_path: Path, servers: list[MirrorServerProcess],
) -> None:
    """The attack of issue #11: a client token holder names the server's own secrets dir."""
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    secret_value = b"STOLEN-SECRET-VALUE-4a7e19"
    (secrets_dir / "hf_access_token").write_bytes(secret_value)
    allowed = tmp_path / "models"
    make_model(allowed / "m", {"w.safetensors": pattern_bytes(9, 8 * KiB)})
    store = tmp_path / "store"
    env = bdn_env(tmp_path, {"BDN_SECRETS_DIR": str(secrets_dir)})
    server = start_mirror_server(tmp_path / "srv", store=f"file://{store}", env=env,
                                 token=TOKEN, allow=[f"file://{allowed}"])
    servers.append(server)
    await server.wait_ready()
    attack = [{"source": f"file://{secrets_dir}", "mount_location": "/models/loot"}]
    code, body = await server.request("POST", "/v1/mirrors", {"weights": attack})
    assert code == 403, body
    assert body["error"] == (
        f"weights[0].source: {'file://' + str(secrets_dir)!r} is not allowed on this mirror "
        "server; its operator allows sources with --allow-source PREFIX (env "
        "BDN_MIRROR_ALLOW_SOURCES), e.g. --allow-source file:///DIR")
    # A symlink inside an allowed dir that leads to the secrets is refused the same way.
    (allowed / "link").symlink_to(secrets_dir)
    link = [{"source": f"file://{allowed}/link", "mount_location": "/models/loot"}]
    assert (await server.request("POST", "/v1/mirrors", {"weights": link}))[0] == 403
    # The allowed dir still mirrors.
    jid = await server.submit([{"source": f"file://{allowed}/m", "mount_location": "/m"}])
    assert (await server.wait_jobs([jid], timeout=120))[jid]["state"] == "succeeded"
    assert server.stop() == 0
    for path in files_under(store):
        assert secret_value not in path.read_bytes(), f"{path} holds the secret"
    assert secret_value.decode() not in server.logs()
