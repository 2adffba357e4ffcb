"""Bad input that used to be accepted: each is refused with a one-line, typed error.

Nested mount locations, an empty ``weights:`` list, a non-mapping ``auth`` and
chunk sizes outside the user bounds, through the config parser and the
Python API (``bdn.ensure_weights*``) a model calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import bdn
from bdn.config.units import parse_chunk_size
from bdn.config.weights import load_config, parse_weights
from bdn.digest import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE
from bdn.errors import ConfigError


def _weights(*mounts: str) -> list[dict[str, Any]]:
    return [{"source": f"file:///src/{i}", "mount_location": m} for i, m in enumerate(mounts)]


def _one_line(err: pytest.ExceptionInfo[ConfigError]) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------ nested mount locations


@pytest.mark.parametrize(
    ("mounts", "needle"),
    [
        (("/m/a", "/m/a/b"), "'/m/a/b' is inside '/m/a', the mount location of weights[0]"),
        (("/m/a/b/", "/m/a"), "'/m/a' contains '/m/a/b', the mount location of weights[0]"),
        (("/x", "/m/a", "/m/a/deep/er"), "weights[2].mount_location: '/m/a/deep/er' is inside"),
        (("/m/a", "/m/a/"), "'/m/a' is also the mount location of weights[0]"),
    ],
)
def test_nested_mount_locations_are_refused(mounts: tuple[str, ...], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_weights(_weights(*mounts))
    message = _one_line(err)
    assert needle in message
    assert "give each entry its own directory" in message


def test_sibling_mounts_that_share_a_prefix_are_fine() -> None:
    entries = parse_weights(_weights("/m/a", "/m/ab", "/m/a-b"))
    assert [e.mount_location for e in entries] == ["/m/a", "/m/ab", "/m/a-b"]


def test_ensure_weights_from_config_refuses_nested_mounts(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("weights:\n"
                   "  - {source: file:///src/a, mount_location: /m/a}\n"
                   "  - {source: file:///src/b, mount_location: /m/a/b}\n")
    with pytest.raises(ConfigError, match=r"weights\[1\]\.mount_location: '/m/a/b' is inside"):
        bdn.ensure_weights_from_config(cfg)
    with pytest.raises(ConfigError, match="is inside"):
        bdn.ensure_weights_from_config({"weights": _weights("/m/a", "/m/a/b")})


# ------------------------------------------------------------------------ empty weights list


def test_an_empty_weights_list_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse_weights([])
    assert _one_line(err) == (
        "weights: is an empty list, so there is nothing to mirror or pull; "
        "add at least one entry with source and mount_location"
    )
    cfg = tmp_path / "config.yaml"
    cfg.write_text("model_name: x\nweights: []\n")
    with pytest.raises(ConfigError, match=r"^weights: is an empty list"):
        load_config(cfg)
    with pytest.raises(ConfigError, match=r"^weights: is an empty list"):
        bdn.ensure_weights_from_config({"weights": []})


# ------------------------------------------------------------------------- auth not a mapping


@pytest.mark.parametrize(
    ("auth", "needles"),
    [
        ("name", ['"auth_secret_name": "name"', "got the string 'name'",
                  "put the secret's name in auth_secret_name"]),
        ("AWS_OIDC", ['"auth_method": "AWS_OIDC"', "name the secret in auth_secret_name"]),
        (["CUSTOM_SECRET", "x"], ["got a list", "write auth as such a mapping"]),
        (7, ["got a number"]),
    ],
)
def test_ensure_weights_with_a_non_mapping_auth_is_a_config_error(
    tmp_path: Path, auth: Any, needles: list[str]
) -> None:
    with pytest.raises(ConfigError) as err:
        bdn.ensure_weights(str(tmp_path), str(tmp_path / "out"), auth=auth)
    message = _one_line(err)
    assert message.startswith("ensure_weights.auth: must be a mapping like {\"auth_method\": ")
    for needle in needles:
        assert needle in message
    with pytest.raises(ConfigError, match=r"^ensure_weights\.auth: must be a mapping"):
        bdn.prefetch_weights(str(tmp_path), auth=auth)


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"mount_location": 5}, "mount_location: must be a string, got a number"),
    ({"allow_patterns": 5}, "allow_patterns: must be a list of strings, got a number"),
])
def test_ensure_weights_with_other_wrong_types_is_a_config_error(
    tmp_path: Path, kwargs: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ConfigError, match=needle):
        bdn.ensure_weights(str(tmp_path), **kwargs)


# ---------------------------------------------------------------------------- chunk sizes


@pytest.mark.parametrize("text", ["1", "1023KiB", "1MB", "0", "257MiB", "1TiB"])
def test_chunk_sizes_outside_the_user_bounds_are_refused(text: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_chunk_size(text, field="--chunk-size")
    message = _one_line(err)
    assert message.startswith(f"--chunk-size: {text!r} is ")
    assert "use a chunk size from 1.00 MiB to 256.00 MiB" in message


@pytest.mark.parametrize("text", ["1MiB", "64MiB", "256MiB", "2M"])
def test_chunk_sizes_inside_the_bounds_are_taken(text: str) -> None:
    assert MIN_CHUNK_SIZE <= parse_chunk_size(text) <= MAX_CHUNK_SIZE


def test_the_default_chunk_size_is_inside_the_bounds() -> None:
    assert MIN_CHUNK_SIZE <= DEFAULT_CHUNK_SIZE <= MAX_CHUNK_SIZE
