"""The plan flow against hand-computed expectations: counts, KV cache, instance, misses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bdn import api
from bdn.backends import open_store
from bdn.errors import ConfigError
from bdn.plan import PlanRequest
from bdn.plan.run import plan_target
from tests.plan.synth import fake_mirror

GIB = 2**30


async def plan(ref: str | Path, store: Path, **request: Any) -> dict[str, Any]:
    target = ref if isinstance(ref, str) else api.weights_entry(str(ref))
    backend = open_store(f"file://{store}")
    try:
        return await plan_target(target, backend, PlanRequest.from_flags(**request))
    finally:
        await backend.close()


async def test_8b_fits_one_l4(sparse_models: dict[str, Path], tmp_path: Path) -> None:
    p = await plan(sparse_models["8b"], tmp_path / "store")
    # Llama-3-8B by hand: 32 x 218,112,000 per layer + 2 x 128256 x 4096 + 4096.
    assert p["weights"]["parameters"] == 8_030_261_248
    assert p["weights"]["by_dtype"]["BF16"]["bytes"] == 16_060_522_496
    # 2 (K,V) x 32 layers x 8 KV heads x 128 dims x 2 bytes x 8192 tokens = 1 GiB.
    assert p["memory"]["kv_cache_bytes"] == GIB
    # (14.96 GiB + 1 GiB) x 1.1 + 1 GiB = 18.55 GiB: T4 (16) is too small, L4 (24) fits.
    assert abs(p["fit"]["needed_bytes"] - 19_921_432_576) <= 1
    assert p["fit"]["instance"]["name"] == "L4x4x16" and p["fit"]["tensor_parallel"] == 1
    assert p["fit"]["resources"]["instance_type"][1] == '  instance_type: "L4:4x16"'
    assert p["weights"]["complete"] and p["model"]["manifest_id"] is None


async def test_70b_takes_two_a100s_from_a_mirrored_manifest(
    sparse_models: dict[str, Path], tmp_path: Path
) -> None:
    manifest_id = fake_mirror(sparse_models["70b"], tmp_path / "store")
    p = await plan(manifest_id, tmp_path / "store")
    assert p["model"]["manifest_id"] == manifest_id
    assert p["weights"]["parameters"] == 70_553_706_496
    assert p["weights"]["bytes"] == 141_107_412_992
    assert p["memory"]["kv_cache_bytes"] == 2_684_354_560  # 80 layers: 2.5 GiB
    # (131.42 + 2.5) x 1.1 + 2 x 1 GiB = 149.3 GiB: no single GPU; A100:2 (160 GiB) is cheapest.
    assert p["fit"]["instance"]["name"] == "A100:2x24x288"
    assert p["fit"]["resources"]["accelerator"][1] == "  accelerator: A100:2"
    # 3 GPUs cannot split 64 heads, so A100:3 is left out even though it is cheaper than H100:2.
    assert any(line.startswith("A100:3x36x432") for line in p["fit"]["left_out"])
    dec = p["decode_ceiling"]
    assert dec["bandwidth_bytes_per_s"] == 2 * 1940e9
    assert dec["tokens_per_s_per_sequence"] == pytest.approx(2 * 1940e9 / 143_791_767_552)


async def test_405b_fits_nothing_and_says_by_how_much(
    sparse_models: dict[str, Path], tmp_path: Path
) -> None:
    p = await plan(sparse_models["405b"], tmp_path / "store")
    assert p["weights"]["parameters"] == 405_853_388_800
    assert p["fit"]["fits"] is False and p["fit"]["instance"] is None
    near = p["fit"]["nearest"]
    # Needs (811.7 GB + 4.2 GB KV) x 1.1 + 8 GiB; the biggest is 640 GiB, A100:8 the cheaper.
    assert near["instance"]["name"] == "A100:8x96x1152"
    assert abs(near["short_bytes"] - (906_118_034_228 - 640 * GIB)) <= 1


async def test_cpu_ask_follows_truss_smallest_fit(
    sparse_models: dict[str, Path], tmp_path: Path
) -> None:
    three = await plan(sparse_models["8b"], tmp_path / "s", cpu="3")
    assert three["fit"]["instance"]["name"] == "L4x4x16"  # cpu "3" -> a 4-vCPU instance
    assert '  cpu: "3"' in three["fit"]["resources"]["accelerator"]
    five = await plan(sparse_models["8b"], tmp_path / "s", cpu="5", memory="20Gi")
    # No 8-vCPU L4 exists; T4x8x32 is too small for the model: A10Gx8x32.
    assert five["fit"]["instance"]["name"] == "A10Gx8x32"
    assert "  memory: 20Gi" in five["fit"]["resources"]["accelerator"]
    big = await plan(sparse_models["70b"], tmp_path / "s", cpu="4")
    # H100s publish no vCPU count, so an explicit ask cannot be shown to fit them.
    assert big["fit"]["instance"]["name"] == "A100:2x24x288"
    assert any(line.startswith("H100:2:") for line in big["fit"]["left_out"])


async def test_minilm_and_cpu_only(minilm_dir: Path, tmp_path: Path) -> None:
    p = await plan(minilm_dir, tmp_path / "s")
    assert p["weights"]["parameters"] == 22_713_728
    # 2 x 6 layers x 12 heads x 32 dims x 2 bytes x 8192 tokens.
    assert p["memory"]["kv_cache_bytes"] == 2 * 6 * 12 * 32 * 2 * 8192
    assert p["fit"]["instance"]["name"] == "T4x4x16"  # cheapest GPU instance
    assert p["decode_ceiling"] is None  # the catalog gives no T4 bandwidth
    assert any("max_position_embeddings 512" in n for n in p["notes"])
    cpu = await plan(minilm_dir, tmp_path / "s", cpu_only=True, context=512)
    assert cpu["fit"]["instance"]["name"] == "1x2"
    assert cpu["fit"]["resources"]["accelerator"][1:] == [
        '  cpu: "1"', "  memory: 2Gi", "  use_gpu: false"]


async def test_non_safetensors_model_is_a_partial_answer(tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    with (model / "pytorch_model.bin").open("wb") as f:
        f.truncate(3 * 10**9)
    (model / "config.json").write_text(json.dumps({"num_hidden_layers": 2}))
    p = await plan(model, tmp_path / "s")
    assert p["weights"]["parameters"] is None and p["weights"]["complete"] is False
    assert p["weights"]["bytes"] == 3 * 10**9
    assert p["weights"]["not_counted"] == [{"path": "pytorch_model.bin", "size": 3 * 10**9}]
    assert any("no safetensors" in n for n in p["notes"])
    assert any("KV cache is not counted" in n for n in p["notes"])
    assert p["memory"]["kv_cache_bytes"] == 0 and p["fit"]["fits"]


async def test_no_weights_at_all_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "README.md").write_text("hi")
    with pytest.raises(ConfigError, match="holds no weight files"):
        await plan(tmp_path / "m", tmp_path / "s")


async def test_user_catalog_and_invalid_catalog(
    sparse_models: dict[str, Path], tmp_path: Path
) -> None:
    mine = {
        "schema": "bdn.plan.catalog/v1", "description": "test", "default_provider": "lab",
        "providers": {"lab": {"description": "our rack", "config": "machine_type"}},
        "instances": [{"name": "big", "provider": "lab", "instance_type": "rack-1",
                       "gpu": "X", "gpu_count": 1, "vram_gib": 40, "usd_per_min": None}],
    }
    (tmp_path / "cat.json").write_text(json.dumps(mine))
    p = await plan(sparse_models["8b"], tmp_path / "s", catalog=str(tmp_path / "cat.json"))
    assert p["fit"]["resources"] == {"machine_type": ['machine_type: "rack-1"']}
    assert p["cold_start"][0]["usd"] is None
    del mine["instances"][0]["vram_gib"]  # type: ignore[attr-defined]
    (tmp_path / "bad.json").write_text(json.dumps(mine))
    with pytest.raises(ConfigError, match=r"instances/0: 'vram_gib' is a required property"):
        await plan(sparse_models["8b"], tmp_path / "s", catalog=str(tmp_path / "bad.json"))


def test_flags_parse_or_fail_in_one_line() -> None:
    r = PlanRequest.from_flags(bandwidth="origin=800M/s,disk=3G", cpu="500m", memory="16Gi")
    assert r.bandwidth["origin"] == 8e8 and r.bandwidth["peers"] == 2.5e9
    assert r.bandwidth_given == {"origin", "disk"} and r.cpu == 0.5 and r.memory == 16 * GIB
    for bad in ({"bandwidth": "cdn=1G"}, {"cpu": "lots"}, {"memory": "big"},
                {"context": 0}, {"kv_dtype": "int3"}):
        with pytest.raises(ConfigError) as err:
            PlanRequest.from_flags(**bad)
        assert "\n" not in str(err.value)
