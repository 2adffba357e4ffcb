"""Volume attributes read as a weights entry: what is accepted, and the one-line refusals."""

from __future__ import annotations

import pytest

from bdn.config.weights import WeightsEntry
from bdn.csi.attributes import check_volume_id, parse_volume, split_patterns
from bdn.errors import ConfigError


def test_a_source_with_patterns_and_a_secret_is_the_entry_a_config_would_write() -> None:
    want = parse_volume({
        "source": "hf://org/repo@main", "allow_patterns": "*.safetensors, config.json",
        "ignore_patterns": '["*.md", "a,b/"]', "auth_secret_name": "hf_access_token",
        "csi.storage.k8s.io/pod.namespace": "ns", "csi.storage.k8s.io/pod.name": "p",
        "csi.storage.k8s.io/ephemeral": "true",
    })
    assert isinstance(want.target, WeightsEntry)
    assert want.target.allow_patterns == ("*.safetensors", "config.json")
    assert want.target.ignore_patterns == ("*.md", "a,b/")
    assert want.target.auth is not None
    assert want.target.auth.auth_secret_name == "hf_access_token"
    assert want.pod == "ns/p"
    # Same config hash as the mirror's entry, so the pull finds its ref.
    same = WeightsEntry(source="hf://org/repo@main", allow_patterns=("config.json",
                        "*.safetensors"), ignore_patterns=("a,b/", "*.md"),
                        auth=want.target.auth)
    assert want.target.config_hash() == same.config_hash()


def test_a_manifest_id_is_trimmed() -> None:
    assert parse_volume({"manifest_id": " sha256:" + "a" * 64 + " "}).target == (
        "sha256:" + "a" * 64)


@pytest.mark.parametrize(("value", "expected"), [
    ("a", ("a",)), ("a, b ,", ("a", "b")), ('["x,y"]', ("x,y",)), ("", ()),
])
def test_pattern_lists(value: str, expected: tuple[str, ...]) -> None:
    assert split_patterns(value, "allow_patterns") == expected


@pytest.mark.parametrize(("attributes", "field"), [
    ({"source": "hf://o/r", "allow_patterns": '[1]'}, "volumeAttributes.allow_patterns"),
    ({"source": "hf://o/r", "allow_patterns": "[,"}, "volumeAttributes.allow_patterns"),
    ({"source": "hf://o/r", "auth_secret_name": "../x"}, "volumeAttributes"),
    ({"mount_location": "/x", "source": "hf://o/r"}, "volumeAttributes"),
])
def test_refusals_name_the_attribute(attributes: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_volume(attributes)
    assert str(err.value).startswith(field), str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("volume_id", ["", "../x", "a/b", ".hidden", "x" * 129])
def test_volume_ids_that_cannot_name_a_directory_are_refused(volume_id: str) -> None:
    with pytest.raises(ConfigError, match="volume_id"):
        check_volume_id(volume_id)
    assert check_volume_id("csi-0123abcd") == "csi-0123abcd"
