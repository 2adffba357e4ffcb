"""The `bdn` command as a user runs it: real processes, real stores, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli import assert_one_line_error
from tests.conftest import MotoS3
from tests.fixtures import make_model, pattern_bytes, run_bdn

MODEL = {
    "config.json": b'{"a": 1}',
    "model-00001-of-00002.safetensors": pattern_bytes(1, 300_000),
    "model-00002-of-00002.safetensors": pattern_bytes(2, 200_000),
    "tokenizer/tokenizer.json": b"{}",
}


def test_mirror_with_embedded_default_store_then_show_and_check(tmp_path: Path) -> None:
    src = make_model(tmp_path / "my-model", MODEL)
    res = run_bdn("mirror", str(src), home=tmp_path)
    assert res.code == 0, res.stderr
    manifest_id = res.stdout.strip()
    assert manifest_id.startswith("sha256:") and len(manifest_id) == 71
    default_store = tmp_path / ".cache" / "bdn" / "store"
    assert (default_store / "manifests" / f"{manifest_id[7:]}.json").is_file()

    again = run_bdn("mirror", str(src), "--json", home=tmp_path)
    summary = json.loads(again.stdout)
    assert summary["manifest_id"] == manifest_id
    assert summary["files"] == 4
    assert summary["total_bytes"] == sum(len(v) for v in MODEL.values())
    assert summary["bytes_transferred"] == 0
    assert summary["bytes_deduplicated"] == summary["total_bytes"]

    show = run_bdn("manifest", "show", manifest_id, home=tmp_path)
    assert show.code == 0, show.stderr
    assert "tokenizer/tokenizer.json" in show.stdout
    canonical = run_bdn("manifest", "show", manifest_id, "--json", home=tmp_path)
    assert json.loads(canonical.stdout)["schema"] == "bdn.manifest/v1"

    check = run_bdn("store", "check", "--deep", home=tmp_path)
    assert check.code == 0, check.stdout + check.stderr
    assert check.stdout.startswith("ok: 1 manifests")


def test_mirror_config_file_mirrors_every_entry(tmp_path: Path) -> None:
    a = make_model(tmp_path / "a", {"w.bin": b"A" * 1000})
    b = make_model(tmp_path / "b", {"w.bin": b"B" * 1000, "x.md": b"doc"})
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "model_name: demo\n"
        "weights:\n"
        f"  - source: file://{a}\n    mount_location: /models/a\n"
        f"  - source: file://{b}\n    mount_location: /models/b\n"
        "    ignore_patterns: ['*.md']\n"
    )
    res = run_bdn(
        "mirror",
        "--config",
        str(cfg),
        "--store",
        f"file://{tmp_path / 's'}",
        "--json",
        home=tmp_path,
    )
    assert res.code == 0, res.stderr
    out = json.loads(res.stdout)
    assert [o["mount_location"] for o in out] == ["/models/a", "/models/b"]
    assert out[1]["files"] == 1


def test_mirror_s3_source_with_auth_secret_into_s3_store(tmp_path: Path, moto_s3: MotoS3) -> None:
    src, dst = moto_s3.make_bucket("cli-src"), moto_s3.make_bucket("cli-dst")
    client = moto_s3.client()
    for key, data in MODEL.items():
        client.put_object(Bucket=src, Key=f"models/llama/{key}", Body=data)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "aws_credentials").write_text(
        json.dumps(
            {
                "aws_access_key_id": moto_s3.access_key_id,
                "aws_secret_access_key": moto_s3.secret_access_key,
                "aws_region": "us-east-1",
            }
        )
    )
    env = {**moto_s3.env(), "BDN_SECRETS_DIR": str(secrets)}
    argv = ("mirror", f"s3://{src}/models/llama", "--auth-secret", "aws_credentials",
            "--store", f"s3://{dst}/bdn", "--json")
    res = run_bdn(*argv, home=tmp_path, env=env)
    assert res.code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["files"] == 4
    assert summary["bytes_transferred"] == summary["total_bytes"]
    again = run_bdn(*argv, home=tmp_path, env=env)
    assert json.loads(again.stdout)["bytes_transferred"] == 0


CONFIG_ERRORS = [
    ("- source: file:///x\n  mount_location: models/x\n", ["mount_location", "absolute"]),
    (
        "- source: file:///x\n  mount_location: /m\n- source: file:///y\n  mount_location: /m/\n",
        ["also the mount location of weights[0]"],
    ),
    ("- source: ftp://host/x\n  mount_location: /m\n", ["ftp"]),
    (
        "- source: bt://job/x\n  mount_location: /m\n",
        ["Baseten Training sources are not available outside Baseten"],
    ),
    (
        "- source: file:///x\n  mount_location: /m\n  allow_patterns: '*.bin'\n",
        ["allow_patterns", "list"],
    ),
    (
        "- source: file:///x\n  mount_location: /m\n  auth: {auth_method: MAGIC}\n",
        ["auth_method", "MAGIC", "CUSTOM_SECRET"],
    ),
]


@pytest.mark.parametrize(("weights", "needles"), CONFIG_ERRORS)
def test_bad_config_gives_one_line_error(tmp_path: Path, weights: str, needles: list[str]) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("weights:\n" + "\n".join("  " + line for line in weights.splitlines()) + "\n")
    assert_one_line_error(run_bdn("mirror", "--config", str(cfg), home=tmp_path), *needles)


def test_bad_sources_and_secrets_give_one_line_errors(tmp_path: Path, moto_s3: MotoS3) -> None:
    home = tmp_path
    assert_one_line_error(
        run_bdn("mirror", "s3://bucket/models", home=home), "secret_id is required"
    )
    secret_value = "SUPER-SECRET-VALUE-123"
    env = {
        "BDN_SECRET_AWS_CREDENTIALS": json.dumps(
            {"aws_access_key": "AKIA", "aws_secret_access_key": secret_value}
        ),
        **moto_s3.env(),
    }
    res = run_bdn(
        "mirror", "s3://bucket/models", "--auth-secret", "aws_credentials", home=home, env=env
    )
    assert_one_line_error(
        res, "aws_access_key_id and aws_secret_access_key are required in S3 credentials"
    )
    assert secret_value not in res.stderr + res.stdout
    assert_one_line_error(
        run_bdn("mirror", "s3://bucket/models", "--auth-secret", "nope", home=home),
        "nope",
        "BDN_SECRET_NOPE",
    )
    assert_one_line_error(
        run_bdn("mirror", "bt://project/job", home=home),
        "Baseten Training sources are not available outside Baseten",
    )
    assert_one_line_error(
        run_bdn("mirror", "gs://bucket/models", home=home),
        "no credentials configured: need either OIDC config or secret_id",
    )
    assert_one_line_error(
        run_bdn("mirror", "r2://acct.bucket/models", home=home), "secret_id is required"
    )


def test_runtime_errors_are_one_line_too(tmp_path: Path) -> None:
    res = run_bdn("mirror", str(tmp_path / "does-not-exist"), home=tmp_path)
    assert res.code == 1 and "Traceback" not in res.stderr
    assert "does-not-exist" in res.stderr and len(res.stderr.strip().splitlines()) == 1

    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret weights")
    src = make_model(tmp_path / "m", {"a.bin": b"a"})
    os.symlink(outside, src / "link.bin")
    res = run_bdn("mirror", str(src), home=tmp_path)
    assert res.code != 0 and "link.bin" in res.stderr and "Traceback" not in res.stderr

    res = run_bdn("manifest", "show", "sha256:" + "0" * 64, home=tmp_path)
    assert res.code == 1 and "not in store" in res.stderr


def test_pull_and_cache_commands(tmp_path: Path) -> None:
    src = make_model(tmp_path / "my-model", MODEL)
    res = run_bdn("pull", str(src), "--to", str(tmp_path / "out"), "--json", home=tmp_path)
    assert res.code == 0, res.stderr
    first = json.loads(res.stdout)
    assert first["bytes_from_origin"] == sum(len(v) for v in MODEL.values())
    assert set(first) >= {"bytes_from_node_cache", "bytes_from_peers", "bytes_from_origin",
                          "seconds"}
    for rel, data in MODEL.items():
        assert (tmp_path / "out" / rel).read_bytes() == data
    again = run_bdn("pull", first["manifest_id"], "--to", str(tmp_path / "out2"), "--json",
                    home=tmp_path)
    assert json.loads(again.stdout)["bytes_from_origin"] == 0

    ls = run_bdn("cache", "ls", "--json", home=tmp_path)
    blobs = json.loads(ls.stdout)["blobs"]
    assert len(blobs) == len(MODEL) and all(b["referenced"] for b in blobs)
    verify = run_bdn("cache", "verify", home=tmp_path)
    assert verify.code == 0 and "intact" in verify.stdout
    assert run_bdn("cache", "gc", home=tmp_path).code == 0

    bad = run_bdn("pull", "sha256:abc", "--to", str(tmp_path / "x"), home=tmp_path)
    assert_one_line_error(bad, "not a manifest id")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    conflict = run_bdn("pull", str(src), "--to", str(tmp_path / "mine"), home=tmp_path)
    assert_one_line_error(conflict, "did not materialize")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


HEAVY_MODULES = ("boto3", "botocore", "google.cloud", "huggingface_hub", "aiohttp")


@pytest.mark.parametrize("argv", [["--help"], ["pull", "--help"], ["mirror", "--help"]])
def test_help_loads_no_sdk(argv: list[str]) -> None:
    # The parser is built from light modules; each command imports its flow when it runs.
    script = (
        "import sys\nfrom bdn.cli.main import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in sys.modules if m.startswith({HEAVY_MODULES!r})))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_mirror_help_names_the_default_chunk_size() -> None:
    from bdn.cli.mirror import CHUNK_SIZE_HELP
    from bdn.config.units import format_bytes
    from bdn.digest import DEFAULT_CHUNK_SIZE

    assert CHUNK_SIZE_HELP.endswith(f"(default {format_bytes(DEFAULT_CHUNK_SIZE)})")


def test_bench_forwards_every_argument_to_the_checkout(tmp_path: Path) -> None:
    res = run_bdn("bench", "--help", home=tmp_path)
    assert res.code == 0, res.stderr
    assert res.stdout.startswith("usage: bdn bench") and "transfer" in res.stdout
    res = run_bdn("bench", "transfer", "--help", home=tmp_path)
    assert res.code == 0, res.stderr
    assert res.stdout.startswith("usage: bdn bench transfer") and "--shard-size" in res.stdout


def test_bench_without_a_checkout_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import bdn
    from bdn.cli.main import main

    monkeypatch.setattr(bdn, "__file__", str(tmp_path / "site-packages" / "bdn" / "__init__.py"))
    assert main(["bench", "transfer"], environ={}) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bdn: error: ")
    assert "source checkout" in err and "pip install -e" in err and "bdn bench" in err
