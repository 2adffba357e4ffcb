"""Mirror end to end on real servers: moto S3 as source and store, temp dirs as file stores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bdn.backends import open_store
from bdn.config.secrets import SecretResolver
from bdn.config.weights import AuthConfig, WeightsEntry
from bdn.errors import ConfigError
from bdn.mirror import MirrorOptions, MirrorResult, run_mirror
from bdn.store import Store, blob_key
from tests.conftest import MotoS3

CHUNK = 64 * 1024
OPTIONS = MirrorOptions(chunk_size=CHUNK)


def _shard(seed: int, size: int) -> bytes:
    """Deterministic, incompressible-enough bytes that differ per seed."""
    block = seed.to_bytes(4, "big") * 16  # a 64-byte pattern
    return (block * (size // len(block) + 1))[:size]


def _creds(moto: MotoS3) -> SecretResolver:
    secret = json.dumps(
        {"aws_access_key_id": moto.access_key_id, "aws_secret_access_key": moto.secret_access_key}
    )
    return SecretResolver(secrets_dir=None, environ={"BDN_SECRET_AWS_CREDENTIALS": secret})


def _s3_entry(bucket: str, prefix: str) -> WeightsEntry:
    return WeightsEntry(
        source=f"s3://{bucket}/{prefix}",
        auth=AuthConfig(auth_method="CUSTOM_SECRET", auth_secret_name="aws_credentials"),
    )


def _local_entry(src: Path, *, mount: str | None = None,
                 allow: tuple[str, ...] | None = None) -> WeightsEntry:
    """A ``file://`` entry of directory ``src``: no auth, no ignore_patterns."""
    return WeightsEntry(source=f"file://{src}", mount_location=mount, allow_patterns=allow)


def _upload(moto: MotoS3, bucket: str, prefix: str, files: dict[str, bytes]) -> None:
    client = moto.client()
    for path, data in files.items():
        client.put_object(Bucket=bucket, Key=f"{prefix}/{path}", Body=data)


async def _mirror(moto: MotoS3, entry: WeightsEntry, store_uri: str) -> MirrorResult:
    store = open_store(store_uri, endpoint_url=moto.endpoint_url)
    try:
        return await run_mirror(
            entry,
            store=store,
            secrets=_creds(moto),
            options=MirrorOptions(chunk_size=CHUNK, endpoint_url=moto.endpoint_url),
        )
    finally:
        await store.close()


@pytest.fixture
def s3_env(moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> MotoS3:
    # The S3 *store* authenticates with the platform's ambient credentials.
    for k, v in moto_s3.env().items():
        monkeypatch.setenv(k, v)
    return moto_s3


BASE = {f"model-0000{i}-of-00004.safetensors": _shard(i, 3 * CHUNK + 123) for i in range(1, 5)}
BASE["config.json"] = b'{"hidden_size": 64}'


async def test_s3_to_s3_remirror_moves_nothing_and_change_moves_one_file(s3_env: MotoS3) -> None:
    src = s3_env.make_bucket("src-remirror")
    dst = s3_env.make_bucket("dst-remirror")
    _upload(s3_env, src, "models/base", BASE)
    store_uri = f"s3://{dst}/bdn"

    first = await _mirror(s3_env, _s3_entry(src, "models/base"), store_uri)
    total = sum(len(v) for v in BASE.values())
    assert (first.files, first.total_bytes) == (5, total)
    assert first.bytes_transferred == total and first.bytes_stored == total

    again = await _mirror(s3_env, _s3_entry(src, "models/base"), store_uri)
    assert again.manifest_id == first.manifest_id
    assert (again.bytes_transferred, again.bytes_stored, again.bytes_deduplicated) == (0, 0, total)

    changed = _shard(99, 2 * CHUNK + 7)
    _upload(s3_env, src, "models/base", {"model-00002-of-00004.safetensors": changed})
    third = await _mirror(s3_env, _s3_entry(src, "models/base"), store_uri)
    assert third.manifest_id != first.manifest_id
    assert third.bytes_transferred == len(changed)
    assert third.bytes_stored == len(changed)

    store = Store(open_store(store_uri, endpoint_url=s3_env.endpoint_url))
    manifest = await store.get_manifest(third.manifest_id)
    entry = manifest.file("model-00002-of-00004.safetensors")
    assert entry is not None and entry.size == len(changed)
    assert await store.backend.get_bytes(blob_key(entry.sha256)) == changed
    assert (await store.check(deep=True)).ok
    await store.backend.close()


async def test_fine_tune_sharing_three_shards_moves_only_the_new_one(s3_env: MotoS3) -> None:
    src = s3_env.make_bucket("src-finetune")
    dst = s3_env.make_bucket("dst-finetune")
    _upload(s3_env, src, "base", BASE)
    tuned = dict(BASE)
    tuned["model-00004-of-00004.safetensors"] = _shard(44, 3 * CHUNK + 123)
    _upload(s3_env, src, "tuned", tuned)
    store_uri = f"s3://{dst}/bdn"

    await _mirror(s3_env, _s3_entry(src, "base"), store_uri)
    res = await _mirror(s3_env, _s3_entry(src, "tuned"), store_uri)
    new_shard = len(tuned["model-00004-of-00004.safetensors"])
    assert res.bytes_transferred == new_shard
    assert res.bytes_stored == new_shard
    assert res.bytes_deduplicated == res.total_bytes - new_shard


async def test_identical_content_under_two_paths_and_two_sources_is_stored_once(
    s3_env: MotoS3, tmp_path: Path
) -> None:
    same = _shard(7, CHUNK * 2 + 5)
    a = tmp_path / "a"
    (a / "sub").mkdir(parents=True)
    (a / "one.bin").write_bytes(same)
    (a / "sub" / "two.bin").write_bytes(same)
    store_dir = tmp_path / "store"
    store_uri = f"file://{store_dir}"

    res = await _mirror(s3_env, _local_entry(a), store_uri)
    assert res.bytes_stored == len(same)
    assert res.bytes_deduplicated == len(same)
    blobs = [p for p in (store_dir / "blobs").rglob("*") if p.is_file()]
    assert len(blobs) == 1

    # The same bytes in another source (an S3 bucket) are stored no second time.
    src = s3_env.make_bucket("src-identical")
    _upload(s3_env, src, "m", {"weights.bin": same})
    res2 = await _mirror(s3_env, _s3_entry(src, "m"), store_uri)
    assert res2.bytes_stored == 0
    assert len([p for p in (store_dir / "blobs").rglob("*") if p.is_file()]) == 1
    manifest = await Store(open_store(store_uri)).get_manifest(res.manifest_id)
    assert {f.path for f in manifest.files} == {"one.bin", "sub/two.bin"}
    assert len({f.sha256 for f in manifest.files}) == 1


async def test_local_source_into_s3_store_and_patterns(s3_env: MotoS3, tmp_path: Path) -> None:
    src = tmp_path / "model"
    (src / "tokenizer").mkdir(parents=True)
    (src / "model.safetensors").write_bytes(_shard(1, CHUNK + 1))
    (src / "README.md").write_text("# card")
    (src / "tokenizer" / "vocab.json").write_text("{}")
    (src / "tokenizer" / "extra.safetensors").write_bytes(b"x")
    dst = s3_env.make_bucket("dst-patterns")
    entry = _local_entry(src, allow=("*.safetensors", "tokenizer/*.json"))
    res = await _mirror(s3_env, entry, f"s3://{dst}/store")
    store = Store(open_store(f"s3://{dst}/store", endpoint_url=s3_env.endpoint_url))
    manifest = await store.get_manifest(res.manifest_id)
    # '*.safetensors' is top-level only (Truss semantics).
    assert [f.path for f in manifest.files] == ["model.safetensors", "tokenizer/vocab.json"]
    assert manifest.filters.allow_patterns == ("*.safetensors", "tokenizer/*.json")
    assert await store.get_ref(entry.config_hash()) == res.manifest_id
    await store.backend.close()


async def test_filter_selecting_nothing_is_a_clear_error(tmp_path: Path) -> None:
    src = tmp_path / "m"
    src.mkdir()
    (src / "a.bin").write_bytes(b"1")
    entry = _local_entry(src, allow=("*.safetensors",))
    store = open_store(f"file://{tmp_path / 'store'}")
    with pytest.raises(ConfigError, match=r"select none of the 1 files"):
        await run_mirror(entry, store=store, secrets=SecretResolver(None, {}), options=OPTIONS)
    # Nothing was written: no manifest, no ref.
    assert not (tmp_path / "store" / "manifests").exists()


async def test_config_hash_ignores_mount_location(tmp_path: Path) -> None:
    src = tmp_path / "m"
    src.mkdir()
    (src / "w.bin").write_bytes(b"weights")
    store = open_store(f"file://{tmp_path / 'store'}")
    a, b = [
        await run_mirror(_local_entry(src, mount=mount), store=store,
                         secrets=SecretResolver(None, {}), options=OPTIONS)
        for mount in ("/models/a", "/models/b")
    ]
    assert a.config_hash == b.config_hash and a.manifest_id == b.manifest_id
    assert b.bytes_transferred == 0
