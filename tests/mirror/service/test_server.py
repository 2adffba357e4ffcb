"""The mirror service's HTTP API against a service running in this process on a real socket."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bdn.backends import open_store
from bdn.cli.mirror_server import register, server_config
from bdn.config.secrets import SecretResolver
from bdn.config.settings import Settings
from bdn.config.weights import WeightsEntry, parse_weights
from bdn.daemon.jsonlog import JsonFormatter
from bdn.errors import ConfigError
from bdn.mirror.run import MirrorOptions, MirrorPlan, MirrorResult, run_mirror
from bdn.mirror.service import JobLimits, MirrorService, MirrorServiceConfig
from bdn.mirror.service.sources import SourcePolicy
from bdn.store import Store
from tests.e2e.agents import parse_metrics
from tests.fixtures import make_model, pattern_bytes

TOKEN = "mirror-test-token-5b1f0c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHUNK = 64 * 1024


class Harness:
    """A started service over a ``file://`` store, a gate in front of every mirror, and
    a client."""

    def __init__(self, service: MirrorService, store_root: Path, gate: asyncio.Event,
                 session: aiohttp.ClientSession) -> None:
        self.service = service
        self.store_root = store_root
        self.gate = gate
        self.session = session

    async def call(self, method: str, path: str, body: Any = None,
                   headers: dict[str, str] | None = None
                   ) -> tuple[int, Any, Mapping[str, str]]:
        data = body if isinstance(body, str | bytes) else None
        async with self.session.request(
            method, self.service.url + path, data=data,
            json=None if data is not None else body,
            headers=AUTH if headers is None else headers,
        ) as resp:
            text = await resp.text()
            try:
                decoded: Any = json.loads(text)
            except json.JSONDecodeError:
                decoded = text
            return resp.status, decoded, resp.headers.copy()  # Case-insensitive.

    async def wait_done(self, jid: str) -> dict[str, Any]:
        for _ in range(2000):
            code, body, _ = await self.call("GET", f"/v1/mirrors/{jid}")
            assert code == 200, body
            if body["state"] in ("succeeded", "failed"):
                return dict(body)
            await asyncio.sleep(0.01)
        raise AssertionError(f"job {jid} did not finish")


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    store_root = tmp_path / "store"
    store = open_store(f"file://{store_root}")
    gate = asyncio.Event()
    secrets = SecretResolver(None, {})

    async def gated_mirror(entry: WeightsEntry, on_plan: Callable[[MirrorPlan], None],
                           on_progress: Callable[[int], None]) -> MirrorResult:
        await gate.wait()
        return await run_mirror(entry, store=store, secrets=secrets,
                                options=MirrorOptions(chunk_size=CHUNK), on_plan=on_plan,
                                on_progress=on_progress)

    config = MirrorServiceConfig(
        settings=Settings(store_uri=f"file://{store_root}", cache_dir=tmp_path / "cache"),
        listen=("127.0.0.1", 0), state_dir=tmp_path / "state", token=TOKEN,
        limits=JobLimits(max_jobs=2), sources=SourcePolicy.parse([f"file://{tmp_path}"]),
    )
    service = MirrorService(config, mirror=gated_mirror)
    await service.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            yield Harness(service, store_root, gate, session)
    finally:
        await service.stop()
        await store.close()


def model(root: Path, seed: int) -> tuple[Path, int]:
    files = {"config.json": b'{"seed": %d}' % seed,
             "model.safetensors": pattern_bytes(seed, 3 * CHUNK + 7)}
    return make_model(root, files), sum(len(v) for v in files.values())


async def test_submit_answers_at_once_and_polls_to_manifests_per_mount(
    harness: Harness, tmp_path: Path
) -> None:
    (a, size_a), (b, size_b) = model(tmp_path / "a", 1), model(tmp_path / "b", 2)
    weights = [{"source": f"file://{a}", "mount_location": "/models/a"},
               {"source": f"file://{b}", "mount_location": "/models/b",
                "allow_patterns": ["*.safetensors", "*.json"]}]
    # Every mirror waits at the gate, so the answer cannot have waited for one.
    code, body, headers = await harness.call("POST", "/v1/mirrors", {"weights": weights})
    assert code == 202 and body["state"] == "queued", body
    assert headers["Location"] == f"/v1/mirrors/{body['id']}"
    code, polled, _ = await harness.call("GET", f"/v1/mirrors/{body['id']}")
    assert code == 200 and polled["state"] in ("queued", "running") and polled["manifests"] == []
    harness.gate.set()
    done = await harness.wait_done(body["id"])
    assert done["state"] == "succeeded" and done["error"] is None, done
    assert done["bytes_total"] == done["bytes_done"] == size_a + size_b
    layout = Store(open_store(f"file://{harness.store_root}"))
    expected = [{"mount_location": e.mount_location,
                 "manifest_id": await layout.get_ref(e.config_hash())}
                for e in parse_weights(weights)]
    assert done["manifests"] == expected
    # The same config again: the finished job, nothing re-mirrored.
    code, again, _ = await harness.call("POST", "/v1/mirrors", {"weights": weights[::-1]})
    assert code == 200 and again == {"id": body["id"], "state": "succeeded",
                                     "outcome": "succeeded"}
    code, forced, _ = await harness.call("POST", "/v1/mirrors?force=1", {"weights": weights})
    assert code == 202 and forced["outcome"] == "forced"
    assert (await harness.wait_done(body["id"]))["mirrors"] == 4


@pytest.mark.parametrize(("weights", "field", "hint"), [
    ([{"source": "hf://org/m", "mount_location": "models/m"}],
     "weights[0].mount_location", "absolute path"),
    ([{"source": "bt://training/job", "mount_location": "/m"}], "weights[0].source",
     "mirror the checkpoint"),
    ([{"source": "s3://b/p", "mount_location": "/m",
       "auth": {"auth_method": "PASSWORD", "auth_secret_name": "x"}}],
     "weights[0].auth.auth_method", "CUSTOM_SECRET"),
    ([{"source": "hf://org/m"}], "weights[0].mount_location", "mount_location: /models/m"),
    ("not a list", "weights", "list"),
    ([], "weights", "at least one entry"),
])
async def test_bad_weights_answer_400_with_one_line_naming_field_and_fix(
    harness: Harness, weights: object, field: str, hint: str
) -> None:
    code, body, _ = await harness.call("POST", "/v1/mirrors", {"weights": weights})
    assert code == 400
    assert body["error"].startswith(f"{field}: ") and hint in body["error"], body
    assert "\n" not in body["error"]


async def test_bad_bodies_answer_400(harness: Harness) -> None:
    code, body, _ = await harness.call("POST", "/v1/mirrors", "{not json")
    assert code == 400 and "not valid JSON" in body["error"]
    code, body, _ = await harness.call("POST", "/v1/mirrors", {"weight": []})
    assert code == 400 and "did you mean 'weights'" in body["error"]


async def test_a_source_outside_the_allowlist_is_403_and_never_reaches_a_job(
    harness: Harness, tmp_path: Path
) -> None:
    harness.gate.set()
    outside = tmp_path.parent / "elsewhere"
    for source in (f"file://{outside}", "hf://org/model", "s3://bucket/models"):
        code, body, _ = await harness.call("POST", "/v1/mirrors", {"weights": [
            {"source": f"file://{tmp_path}/ok", "mount_location": "/m/ok"},
            {"source": source, "mount_location": "/m/x"}]})
        assert code == 403, body
        assert body["error"].startswith(f"weights[1].source: {source!r} is not allowed")
        assert "--allow-source" in body["error"] and "\n" not in body["error"]
    assert harness.service.jobs is not None and harness.service.jobs.counts()["queued"] == 0
    assert not list((tmp_path / "state" / "jobs").glob("mj-*.json"))


@pytest.mark.parametrize("body", [
    # Endpoint overrides are the server's settings only; a body naming one is refused
    # (400, unknown key), not ignored, so the client learns it had no effect.
    {"weights": [], "endpoint_url": "http://169.254.169.254"},
    {"weights": [{"source": "s3://b/p", "mount_location": "/m",
                  "endpoint_url": "http://attacker.example"}]},
    {"weights": [{"source": "hf://org/m", "mount_location": "/m",
                  "hf_endpoint": "http://attacker.example"}]},
    {"weights": [{"source": "gs://b/p", "mount_location": "/m",
                  "auth": {"auth_method": "CUSTOM_SECRET", "auth_secret_name": "g",
                           "gcs_emulator_host": "attacker.example:80"}}]},
    {"weights": [{"source": "r2://a.b/p", "mount_location": "/m",
                  "auth": {"auth_method": "CUSTOM_SECRET", "auth_secret_name": "r",
                           "r2_endpoint_url": "http://attacker.example"}}]},
], ids=["top-level", "entry-s3", "entry-hf", "auth-gcs", "auth-r2"])
async def test_a_body_cannot_set_an_upstream_endpoint(harness: Harness, body: object) -> None:
    code, answer, _ = await harness.call("POST", "/v1/mirrors", body)
    assert code == 400 and "unknown key" in answer["error"], answer
    assert harness.service.jobs is not None and not any(harness.service.jobs.counts().values())


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token"},
                                     {"Authorization": f"Basic {TOKEN}"},
                                     {"Authorization": TOKEN}])
async def test_requests_without_the_token_get_401_and_nothing_else(
    harness: Harness, tmp_path: Path, headers: dict[str, str]
) -> None:
    src, _ = model(tmp_path / "a", 1)
    harness.gate.set()
    code, job, _ = await harness.call(
        "POST", "/v1/mirrors", {"weights": [{"source": f"file://{src}",
                                             "mount_location": "/m"}]})
    assert code == 202
    for method, path in [("GET", f"/v1/mirrors/{job['id']}"), ("GET", "/metrics"),
                         ("POST", "/v1/mirrors"), ("GET", "/v1/nowhere"),
                         ("DELETE", "/v1/mirrors")]:
        code, body, got = await harness.call(method, path, {"weights": []}, headers=headers)
        assert code == 401, (method, path, body)
        assert set(body) == {"error"} and job["id"] not in body["error"]
        assert got["WWW-Authenticate"].startswith("Bearer")
    code, health, _ = await harness.call("GET", "/healthz", headers={})
    assert code == 200 and health["status"] == "ok"


async def test_unknown_job_is_404_and_unknown_path_is_json(harness: Harness) -> None:
    code, body, _ = await harness.call("GET", "/v1/mirrors/mj-0000")
    assert code == 404 and "mj-0000" in body["error"] and "--job-retention" in body["error"]
    code, body, _ = await harness.call("GET", "/v1/other")
    assert code == 404 and set(body) == {"error"}


async def test_metrics_parse_and_count_jobs_bytes_and_coalesced(
    harness: Harness, tmp_path: Path
) -> None:
    src, size = model(tmp_path / "a", 3)
    weights = {"weights": [{"source": f"file://{src}", "mount_location": "/m"}]}
    answers = await asyncio.gather(*(harness.call("POST", "/v1/mirrors", weights)
                                     for _ in range(5)))
    assert {a[1]["id"] for a in answers} == {answers[0][1]["id"]}
    harness.gate.set()
    await harness.wait_done(answers[0][1]["id"])
    code, text, headers = await harness.call("GET", "/metrics")
    assert code == 200 and headers["Content-Type"].startswith("text/plain")
    samples = parse_metrics(text)
    assert samples['bdn_mirror_jobs{state="succeeded"}'] == 1
    assert samples['bdn_mirror_jobs{state="running"}'] == 0
    assert samples['bdn_mirror_submissions_total{outcome="coalesced"}'] == 4
    assert samples['bdn_mirror_runs_total{outcome="succeeded"}'] == 1
    assert samples['bdn_mirror_bytes_total{kind="read"}'] == size
    assert samples['bdn_mirror_job_duration_seconds_count{outcome="succeeded"}'] == 1
    assert samples["bdn_mirror_bytes_in_flight"] == 0


async def test_logs_are_json_with_request_and_job_ids(harness: Harness, tmp_path: Path) -> None:
    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("bdn")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        src, _ = model(tmp_path / "a", 4)
        harness.gate.set()
        code, job, headers = await harness.call(
            "POST", "/v1/mirrors", {"weights": [{"source": f"file://{src}",
                                                 "mount_location": "/m"}]},
            headers={**AUTH, "X-Request-Id": "req-from-client.1"})
        assert code == 202 and headers["X-Request-Id"] == "req-from-client.1"
        await harness.wait_done(job["id"])
        _, _, generated = await harness.call("GET", "/v1/mirrors/x",
                                             headers={**AUTH, "X-Request-Id": "bad id / spaces"})
        assert len(generated["X-Request-Id"]) == 16  # A new one: the client's is not sane.
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    lines = [json.loads(line) for line in sink.getvalue().splitlines()]
    submitted = [x for x in lines if x["msg"] == "submission new"]
    assert submitted and submitted[0]["request_id"] == "req-from-client.1"
    assert submitted[0]["job_id"] == job["id"]
    ran = [x for x in lines if x.get("job_id") == job["id"] and x["msg"] == "job succeeded"]
    assert ran and "request_id" not in ran[0]  # A job's lines are its own, not a request's.
    assert any(x["msg"].startswith("POST /v1/mirrors 202") and x["request_id"] ==
               "req-from-client.1" for x in lines)


# -- the entry point's configuration ------------------------------------------------------


def _args(argv: list[str], environ: dict[str, str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["mirror-server", *argv])
    args.environ = environ or {}
    return args


def test_config_needs_a_token_unless_loopback_and_insecure_flag(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    conf = server_config(_args(["--listen", "0.0.0.0:7080", "--token-file", str(token)]))
    assert conf.token == TOKEN and conf.listen == ("0.0.0.0", 7080)
    with pytest.raises(ConfigError, match="--token-file"):
        server_config(_args(["--listen", "127.0.0.1:7080"]))
    with pytest.raises(ConfigError, match="only allowed on loopback"):
        server_config(_args(["--listen", "0.0.0.0:7080", "--insecure-no-token"]))
    conf = server_config(_args(["--listen", "127.0.0.1:7080", "--insecure-no-token"]))
    assert conf.token is None
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        server_config(_args(["--token-file", str(empty)]))


def test_config_reads_env_twins_and_flags_win(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    env = {"BDN_TOKEN_FILE": str(token), "BDN_MIRROR_LISTEN": "127.0.0.1:9000",
           "BDN_MIRROR_STATE_DIR": str(tmp_path / "st"), "BDN_MIRROR_MAX_JOBS": "5",
           "BDN_MIRROR_MAX_BYTES_IN_FLIGHT": "1GiB", "BDN_MIRROR_DRAIN_TIMEOUT": "7",
           "BDN_STORE": f"file://{tmp_path}/store"}
    conf = server_config(_args([], env))
    assert conf.listen == ("127.0.0.1", 9000) and conf.state_dir == tmp_path / "st"
    assert conf.limits == JobLimits(max_jobs=5, max_bytes_in_flight=2**30)
    assert conf.drain_timeout == 7 and conf.settings.store_uri == f"file://{tmp_path}/store"
    conf = server_config(_args(["--max-jobs", "1", "--listen", "127.0.0.1:9001"], env))
    assert conf.limits.max_jobs == 1 and conf.listen == ("127.0.0.1", 9001)
    with pytest.raises(ConfigError, match="--max-jobs"):
        server_config(_args(["--max-jobs", "0"], env))
