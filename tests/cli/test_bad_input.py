"""Bad input the CLI used to accept or hang on, through real ``python -m bdn`` processes.

Nested mount locations and an empty ``weights:`` list in ``bdn mirror --config``,
a ``--chunk-size`` outside the user bounds, and ``bdn store check`` on a store
that does not exist: each ends in one ``bdn: error:`` line and exit status 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bdn.cli.mirror import CHUNK_SIZE_HELP
from bdn.config.units import format_bytes
from bdn.digest import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE
from tests.cli import assert_one_line_error
from tests.conftest import MotoS3
from tests.fixtures import make_model, run_bdn


def _mirror_config(tmp_path: Path, weights: str) -> Path:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("model_name: demo\nweights:" + weights)
    return cfg


def test_mirror_config_with_nested_mount_locations_is_refused(tmp_path: Path) -> None:
    a = make_model(tmp_path / "a", {"w.bin": b"A"})
    b = make_model(tmp_path / "b", {"w.bin": b"B"})
    cfg = _mirror_config(tmp_path, f"\n  - {{source: 'file://{a}', mount_location: /m/a}}"
                                   f"\n  - {{source: 'file://{b}', mount_location: /m/a/b}}\n")
    store = tmp_path / "store"
    res = run_bdn("mirror", "--config", str(cfg), "--store", f"file://{store}", home=tmp_path)
    assert_one_line_error(res, "weights[1].mount_location: '/m/a/b' is inside '/m/a'",
                          "give each entry its own directory")
    assert not store.exists()  # Refused before anything was mirrored.


@pytest.mark.parametrize("weights", [" []\n", "\n"])
def test_mirror_config_with_an_empty_weights_list_is_refused(
    tmp_path: Path, weights: str
) -> None:
    cfg = _mirror_config(tmp_path, weights)
    res = run_bdn("mirror", "--config", str(cfg), home=tmp_path)
    if weights.strip():
        assert_one_line_error(res, "weights: is an empty list", "add at least one entry")
    else:  # `weights:` with nothing under it is null in YAML.
        assert_one_line_error(res, "weights: must be a list of entries, got null")


@pytest.mark.parametrize("size", ["1", "4KiB", "1000000", "512MiB"])
def test_mirror_chunk_size_outside_the_bounds_is_refused(tmp_path: Path, size: str) -> None:
    src = make_model(tmp_path / "m", {"w.bin": b"x" * 4096})
    store = tmp_path / "store"
    res = run_bdn("mirror", str(src), "--store", f"file://{store}", "--chunk-size", size,
                  home=tmp_path)
    assert_one_line_error(res, f"--chunk-size: {size!r} is ",
                          "use a chunk size from 1.00 MiB to 256.00 MiB")
    assert not store.exists()


def test_mirror_chunk_size_at_the_floor_works(tmp_path: Path) -> None:
    src = make_model(tmp_path / "m", {"w.bin": b"x" * 4096})
    res = run_bdn("mirror", str(src), "--chunk-size", "1MiB", "--json", home=tmp_path)
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)["files"] == 1


def test_mirror_help_names_the_chunk_size_bounds() -> None:
    bounds = f"{format_bytes(MIN_CHUNK_SIZE)} to {format_bytes(MAX_CHUNK_SIZE)}"
    assert CHUNK_SIZE_HELP.endswith(f"{bounds} (default {format_bytes(DEFAULT_CHUNK_SIZE)})")


def test_store_check_of_a_store_that_does_not_exist_fails(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-store"
    res = run_bdn("store", "check", "--store", f"file://{missing}", home=tmp_path)
    assert_one_line_error(res, f"store file://{missing} does not exist",
                          "check the store URI (--store or BDN_STORE)",
                          f"bdn mirror SOURCE --store file://{missing}")
    assert res.stdout == ""
    assert not missing.exists()  # Checking did not create it.
    res = run_bdn("store", "check", "--json", home=tmp_path)  # The default store, never made.
    assert_one_line_error(res, "does not exist")


def test_store_check_of_an_existing_empty_store_says_it_is_empty(tmp_path: Path) -> None:
    empty = tmp_path / "empty-store"
    empty.mkdir()
    res = run_bdn("store", "check", "--store", f"file://{empty}", home=tmp_path)
    assert res.code == 0, res.stderr
    assert res.stdout.strip() == (f"ok: store file://{empty} is empty: nothing mirrored into "
                                  "it yet, 0 manifests")
    res = run_bdn("store", "check", "--store", f"file://{empty}", "--json", home=tmp_path)
    assert res.code == 0, res.stderr
    body = json.loads(res.stdout)
    assert body["ok"] is True and body["empty"] is True and body["manifests"] == 0


def test_store_check_of_an_empty_s3_prefix_cannot_tell_empty_from_missing(
    tmp_path: Path, moto_s3: MotoS3
) -> None:
    bucket = moto_s3.make_bucket("check-empty")
    moto_s3.client().put_object(Bucket=bucket, Key="elsewhere/x", Body=b"x")
    res = run_bdn("store", "check", "--store", f"s3://{bucket}/bdn", home=tmp_path,
                  env=moto_s3.env())
    assert_one_line_error(res, f"store s3://{bucket}/bdn does not exist (or is empty)")
    # Objects but no manifest (an interrupted first mirror): it exists, and is consistent.
    moto_s3.client().put_object(Bucket=bucket, Key="bdn/refs/abc", Body=b"x")
    res = run_bdn("store", "check", "--store", f"s3://{bucket}/bdn", home=tmp_path,
                  env=moto_s3.env())
    assert res.code == 0, res.stderr
    assert res.stdout.startswith("ok: 0 manifests")
