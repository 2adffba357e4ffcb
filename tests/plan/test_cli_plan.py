"""``bdn plan`` as a user runs it: real ``python -m bdn`` processes."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from tests.cli import assert_one_line_error
from tests.fixtures import run_bdn
from tests.plan.synth import fake_mirror


def test_minilm_json_and_table(minilm_dir: Path, tmp_path: Path) -> None:
    res = run_bdn("plan", str(minilm_dir), "--json", "--bandwidth", "origin=500M", home=tmp_path)
    assert res.code == 0, res.stderr
    p = json.loads(res.stdout)
    assert p["schema"] == "bdn.plan/v1" and p["weights"]["parameters"] == 22_713_728
    assert p["fit"]["instance"]["name"] == "T4x4x16"
    origin = next(r for r in p["cold_start"] if r["tier"] == "origin")
    assert origin["bandwidth"] == "given" and origin["bytes_per_s"] == 5e8
    table = run_bdn("plan", str(minilm_dir), home=tmp_path)
    assert table.code == 0, table.stderr
    assert "22,713,728" in table.stdout and 'instance_type: "T4:4x16"' in table.stdout


def test_mirrored_70b_by_manifest_id(sparse_models: dict[str, Path], tmp_path: Path) -> None:
    store = tmp_path / "store"
    manifest_id = fake_mirror(sparse_models["70b"], store)
    res = run_bdn("plan", manifest_id, "--store", f"file://{store}", "--context", "8192",
                  home=tmp_path)
    assert res.code == 0, res.stderr
    assert "A100:2x24x288" in res.stdout and "accelerator: A100:2" in res.stdout
    assert "70,553,706,496" in res.stdout


def test_405b_says_it_fits_nothing(sparse_models: dict[str, Path], tmp_path: Path) -> None:
    res = run_bdn("plan", str(sparse_models["405b"]), home=tmp_path)
    assert res.code == 0, res.stderr
    assert "fits no baseten instance" in res.stdout and "A100:8x96x1152" in res.stdout
    assert "misses by" in res.stdout


def test_mirrored_model_plans_by_source(minilm_dir: Path, tmp_path: Path) -> None:
    mirrored = run_bdn("mirror", str(minilm_dir), home=tmp_path)
    assert mirrored.code == 0, mirrored.stderr
    res = run_bdn("plan", str(minilm_dir), "--json", home=tmp_path)
    assert json.loads(res.stdout)["model"]["manifest_id"] == mirrored.stdout.strip()


def test_errors_are_one_line(sparse_models: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "cat.json").write_text('{"schema": "bdn.plan.catalog/v1"}')
    bad_catalog = run_bdn("plan", str(sparse_models["8b"]), "--catalog",
                          str(tmp_path / "cat.json"), home=tmp_path)
    assert_one_line_error(bad_catalog, "does not match the catalog schema")
    assert_one_line_error(run_bdn("plan", str(sparse_models["8b"]), "--provider", "nope",
                                  home=tmp_path), "'nope' is not in the catalog")
    assert_one_line_error(run_bdn("plan", str(sparse_models["8b"]), "--bandwidth", "x",
                                  home=tmp_path), "TIER=RATE")
    assert_one_line_error(run_bdn("plan", "sha256:abc", home=tmp_path), "not a manifest id")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(struct.pack("<Q", 1000) + b"{}")
    res = run_bdn("plan", str(broken), home=tmp_path)
    assert res.code == 1 and res.stderr.count("\n") == 1, res.stderr
    assert "model.safetensors: header says 1000 bytes" in res.stderr
