"""Truss ``weights:`` entries: parsing, source URIs, config hashes and error messages.

Error tests assert on message content, because the message is the product:
each must be one line, start with the field path and name the fix.
"""

from __future__ import annotations

import doctest
import hashlib
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

import bdn.config.auth
import bdn.config.uri
import bdn.config.validate
import bdn.config.weights
from bdn.config.weights import (
    AuthConfig,
    ParsedSource,
    WeightsEntry,
    load_config,
    parse_entry,
    parse_source,
    parse_weights,
    source_from_cli,
)
from bdn.errors import ConfigError

ARN = "arn:aws:iam::123456789012:role/bdn-reader"
SA = "reader@my-project.iam.gserviceaccount.com"
WIF = "projects/123456789/locations/global/workloadIdentityPools/pool/providers/prov"


_DROP = object()  # Passed as a value to _entry: leave that key out.


def _entry(**overrides: Any) -> dict[str, Any]:
    """A valid entry mapping with ``overrides`` applied."""
    entry: dict[str, Any] = {"source": "hf://Qwen/Qwen3-8B@main", "mount_location": "/models/qwen"}
    entry.update(overrides)
    return {k: v for k, v in entry.items() if v is not _DROP}


def _error(data: object) -> str:
    """Parse ``data`` as a weights list and return the one-line error message."""
    with pytest.raises(ConfigError) as info:
        parse_weights(data)
    message = str(info.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------- happy path


def test_parse_full_truss_entry() -> None:
    (entry,) = parse_weights(
        [
            {
                "source": "hf://Qwen/Qwen3-8B@main",
                "mount_location": "/models/qwen",
                "auth": {"auth_method": "CUSTOM_SECRET", "auth_secret_name": "hf_access_token"},
                "allow_patterns": ["*.safetensors", "config.json"],
                "ignore_patterns": ["*.md"],
            }
        ]
    )
    assert entry == WeightsEntry(
        source="hf://Qwen/Qwen3-8B@main",
        mount_location="/models/qwen",
        auth=AuthConfig(auth_method="CUSTOM_SECRET", auth_secret_name="hf_access_token"),
        allow_patterns=("*.safetensors", "config.json"),
        ignore_patterns=("*.md",),
    )
    assert entry.kind == "hf"


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ("hf://Qwen/Qwen3-8B", "hf"),
        ("s3://bucket/prefix", "s3"),
        ("gs://bucket/prefix", "gcs"),
        ("r2://abc123.bucket/prefix", "r2"),
        ("file:///data/models/qwen", "local"),
    ],
)
def test_entry_kind(source: str, kind: str) -> None:
    assert WeightsEntry(source=source).kind == kind


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        (
            {"auth_method": "AWS_OIDC", "aws_oidc_role_arn": ARN, "aws_oidc_region": "us-east-1"},
            AuthConfig("AWS_OIDC", aws_oidc_role_arn=ARN, aws_oidc_region="us-east-1"),
        ),
        (
            {
                "auth_method": "GCP_OIDC",
                "gcp_oidc_service_account": SA,
                "gcp_oidc_workload_id_provider": WIF,
            },
            AuthConfig("GCP_OIDC", gcp_oidc_service_account=SA, gcp_oidc_workload_id_provider=WIF),
        ),
        (
            # A serializer may write every field, unset ones as null.
            {
                "auth_method": "CUSTOM_SECRET",
                "auth_secret_name": "creds",
                "aws_oidc_role_arn": None,
                "gcp_oidc_service_account": None,
            },
            AuthConfig("CUSTOM_SECRET", auth_secret_name="creds"),
        ),
    ],
)
def test_parse_auth_methods(auth: dict[str, Any], expected: AuthConfig) -> None:
    source = {"AWS_OIDC": "s3://b/p", "GCP_OIDC": "gs://bucket/p"}.get(
        auth["auth_method"], "s3://b/p"
    )
    (entry,) = parse_weights([_entry(source=source, auth=auth)])
    assert entry.auth == expected


@pytest.mark.parametrize(
    ("mount", "normalized"),
    [("/models/x", "/models/x"), ("/models/x/", "/models/x"), ("//models//x/./", "/models/x")],
)
def test_mount_location_is_normalized(mount: str, normalized: str) -> None:
    (entry,) = parse_weights([_entry(mount_location=mount)])
    assert entry.mount_location == normalized


def test_null_optional_keys_count_as_absent() -> None:
    (entry,) = parse_weights([_entry(auth=None, allow_patterns=None, ignore_patterns=None)])
    assert entry.auth is None
    assert entry.allow_patterns is None
    assert entry.ignore_patterns is None


def test_empty_ignore_patterns_is_stored_as_none() -> None:
    (entry,) = parse_weights([_entry(ignore_patterns=[])])
    assert entry.ignore_patterns is None


def test_parse_entry_accepts_an_auth_config() -> None:
    auth = AuthConfig("CUSTOM_SECRET", auth_secret_name="creds")
    entry = parse_entry({"source": "s3://b/p", "auth": auth}, require_mount_location=False)
    assert entry.auth == auth
    with pytest.raises(ConfigError, match=r"^entry\.auth\.auth_secret_name: "):
        parse_entry(
            {"source": "s3://b/p", "mount_location": "/m", "auth": AuthConfig("CUSTOM_SECRET")}
        )


def test_parse_entry_without_mount_for_cli() -> None:
    entry = parse_entry({"source": "s3://b/p"}, where="cli", require_mount_location=False)
    assert entry.mount_location is None


# --------------------------------------------------------------------------- sources


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "hf://Qwen/Qwen3-8B",
            ParsedSource(scheme="hf", kind="hf", repo_id="Qwen/Qwen3-8B", revision="main"),
        ),
        (
            "hf://meta-llama/Llama-3.1-8B@a1b2c3d",
            ParsedSource(
                scheme="hf", kind="hf", repo_id="meta-llama/Llama-3.1-8B", revision="a1b2c3d"
            ),
        ),
        (
            "hf://org/repo@refs/pr/1",
            ParsedSource(scheme="hf", kind="hf", repo_id="org/repo", revision="refs/pr/1"),
        ),
        ("s3://my-bucket", ParsedSource(scheme="s3", kind="s3", bucket="my-bucket")),
        (
            "s3://my-bucket/models/qwen/",
            ParsedSource(scheme="s3", kind="s3", bucket="my-bucket", prefix="models/qwen"),
        ),
        (
            "gs://my_bucket.x/p",
            ParsedSource(scheme="gs", kind="gcs", bucket="my_bucket.x", prefix="p"),
        ),
        (
            "r2://0123abcd.weights/m",
            ParsedSource(
                scheme="r2", kind="r2", account_id="0123abcd", bucket="weights", prefix="m"
            ),
        ),
        (
            "file:///data/models/qwen/",
            ParsedSource(scheme="file", kind="local", path="/data/models/qwen"),
        ),
        ("S3://my-bucket", ParsedSource(scheme="s3", kind="s3", bucket="my-bucket")),
    ],
)
def test_parse_source(text: str, expected: ParsedSource) -> None:
    assert parse_source(text) == expected


@pytest.mark.parametrize(
    ("text", "uri"),
    [
        ("hf://a/b", "hf://a/b@main"),
        ("s3://b/p/", "s3://b/p"),
        ("gs://bucket", "gs://bucket"),
        ("r2://acct.bucket/x", "r2://acct.bucket/x"),
        ("file:///x/y/", "file:///x/y"),
    ],
)
def test_parsed_source_canonical_uri(text: str, uri: str) -> None:
    assert parse_source(text).uri == uri


@pytest.mark.parametrize(
    ("source", "fragments"),
    [
        ("bt://job/checkpoint", ["Baseten Training sources are not available outside Baseten"]),
        ("ftp://host/x", ["unknown scheme 'ftp://'",
                          "hf://, s3://, gs://, r2://, azure://, cw://, https://, file://"]),
        ("gcs://bucket/x", ["unknown scheme 'gcs://'", "gs://bucket/prefix"]),
        ("http://huggingface.co/a/b", ["unknown scheme 'http://'", "https://", "hf://owner/repo"]),
        ("azure://acct", ["malformed azure:// source", "azure://account/container[/prefix]"]),
        ("azure://Acct/c/x", ["malformed azure:// source"]),
        ("azure://acct/c@v1", ["@revision suffix"]),
        ("cw://", ["malformed cw:// source", "cw://bucket[/prefix]"]),
        ("https://example.com", ["malformed https:// source", "https://host[:port]/path"]),
        ("https://user:pw@example.com/m.bin", ["malformed https:// source", "auth secret"]),
        ("https://example.com/a/../m.bin", ["malformed https:// source"]),
        ("Qwen/Qwen3-8B", ["has no scheme", "did you mean hf://Qwen/Qwen3-8B?"]),
        ("/data/m", ["has no scheme", "did you mean file:///data/m?"]),
        ("hf://Qwen", ["malformed hf:// source", "hf://owner/repo[@revision]"]),
        ("hf://a/b/c", ["malformed hf:// source", "allow_patterns"]),
        ("hf://a/b@", ["malformed hf:// source"]),
        ("hf://a b/c", ["malformed hf:// source"]),
        ("hf://a/b@../x", ["malformed hf:// source"]),
        ("s3://", ["malformed s3:// source", "s3://bucket[/prefix]"]),
        ("s3:///prefix", ["malformed s3:// source"]),
        ("s3://bad bucket/x", ["malformed s3:// source"]),
        ("gs://UPPER/x", ["malformed gs:// source", "gs://bucket[/prefix]"]),
        ("r2://bucket/x", ["malformed r2:// source", "r2://account_id.bucket[/prefix]"]),
        ("r2://.bucket/x", ["malformed r2:// source"]),
        ("r2://acct./x", ["malformed r2:// source"]),
        ("file://models/x", ["relative path", "use an absolute path", "file:///"]),
        ("file://", ["malformed file:// source"]),
    ],
)
def test_bad_source_messages(source: str, fragments: list[str]) -> None:
    message = _error([_entry(source=source)])
    assert message.startswith("weights[0].source: ")
    for fragment in fragments:
        assert fragment in message


def test_file_source_with_relative_path_says_use_absolute_path() -> None:
    message = _error([_entry(source="file://./models/x")])
    assert "use an absolute path" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("./my-model", "file:///home/me/my-model"),
        ("my-model/", "file:///home/me/my-model"),
        ("../other/m", "file:///home/other/m"),
        ("/data/m", "file:///data/m"),
        ("/data//m/", "file:///data/m"),
        ("with space", "file:///home/me/with space"),
        ("hf://Qwen/Qwen3-8B", "hf://Qwen/Qwen3-8B"),
        ("s3://b/p", "s3://b/p"),
        ("bt://x", "bt://x"),
    ],
)
def test_source_from_cli(text: str, expected: str) -> None:
    assert source_from_cli(text, Path("/home/me")) == expected


@pytest.mark.parametrize(("text", "cwd"), [("", Path("/home/me")), ("m", Path("rel"))])
def test_source_from_cli_errors(text: str, cwd: Path) -> None:
    with pytest.raises(ConfigError, match=r"^source: "):
        source_from_cli(text, cwd)


# ---------------------------------------------------------------------- mount errors


def test_relative_mount_location_message() -> None:
    assert _error([_entry(mount_location="models/x")]) == (
        "weights[0].mount_location: 'models/x' is relative; use an absolute path such as /models/x"
    )


@pytest.mark.parametrize(
    ("mount", "fragments"),
    [
        (_DROP, ["weights[0].mount_location: is missing", "required", "/models/qwen3-8b"]),
        (None, ["weights[0].mount_location: is missing"]),
        ("", ["weights[0].mount_location: is empty", "absolute path"]),
        (42, ["weights[0].mount_location: must be a string, got a number"]),
        ("./models/x", ["is relative", "such as /models/x"]),
        ("/models/../etc", ["contains '..'"]),
        ("/", ["filesystem root"]),
    ],
)
def test_bad_mount_location(mount: object, fragments: list[str]) -> None:
    message = _error([_entry(mount_location=mount)])
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    ("first", "second"),
    [("/models/x", "/models/x"), ("/models/x", "/models/x/"), ("/models/x//", "/models/x")],
)
def test_duplicate_mount_locations_name_both_indices(first: str, second: str) -> None:
    message = _error(
        [
            _entry(mount_location="/models/other", source="s3://b/o"),
            _entry(mount_location=first),
            _entry(mount_location=second, source="s3://b/p"),
        ]
    )
    assert message.startswith("weights[2].mount_location: ")
    assert "weights[1]" in message
    assert "own directory" in message


# ------------------------------------------------------------------- pattern errors


@pytest.mark.parametrize("key", ["allow_patterns", "ignore_patterns"])
@pytest.mark.parametrize(
    ("value", "fragments"),
    [
        ("*.safetensors", ["got the string '*.safetensors'", "use a list, e.g. ['*.safetensors']"]),
        ({"a": 1}, ["must be a list of strings, got a mapping"]),
        (7, ["must be a list of strings, got a number"]),
    ],
)
def test_patterns_must_be_a_list_of_strings(key: str, value: object, fragments: list[str]) -> None:
    message = _error([_entry(**{key: value})])
    assert message.startswith(f"weights[0].{key}: ")
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize("key", ["allow_patterns", "ignore_patterns"])
@pytest.mark.parametrize(
    ("items", "fragments"),
    [
        (["ok", 3], ["[1]: must be a string, got a number"]),
        (["ok", None], ["[1]: must be a string, got null"]),
        (["/abs"], ["[0]: invalid pattern '/abs'", "leading '/'"]),
        (["model-[12.bin"], ["[0]: invalid pattern 'model-[12.bin'", "']'"]),
        ([""], ["[0]: invalid pattern ''"]),
    ],
)
def test_bad_pattern_items(key: str, items: list[object], fragments: list[str]) -> None:
    message = _error([_entry(**{key: items})])
    assert message.startswith(f"weights[0].{key}")
    for fragment in fragments:
        assert fragment in message


def test_empty_allow_patterns_is_refused() -> None:
    message = _error([_entry(allow_patterns=[])])
    assert message.startswith("weights[0].allow_patterns: is an empty list")
    assert "remove allow_patterns" in message


# ---------------------------------------------------------------------- auth errors


@pytest.mark.parametrize(
    ("source", "auth", "field", "fragments"),
    [
        ("s3://b/p", "CUSTOM_SECRET", "auth",
         ["must be a mapping like", '"auth_method": "CUSTOM_SECRET"', "got the string"]),
        ("s3://b/p", {}, "auth", ["auth_method is missing", "CUSTOM_SECRET, AWS_OIDC, GCP_OIDC"]),
        (
            "s3://b/p",
            {"auth_method": "TOKEN"},
            "auth.auth_method",
            ["unknown auth_method 'TOKEN'", "CUSTOM_SECRET, AWS_OIDC, GCP_OIDC"],
        ),
        (
            "s3://b/p",
            {"auth_method": "custom-secret", "auth_secret_name": "x"},
            "auth.auth_method",
            ["unknown auth_method 'custom-secret'", "CUSTOM_SECRET, AWS_OIDC, GCP_OIDC"],
        ),
        ("s3://b/p", {"auth_method": ["x"]}, "auth.auth_method", ["unknown auth_method"]),
        (
            "s3://b/p",
            {"auth_method": "CUSTOM_SECRET", "secret_name": "x", "other": 1},
            "auth",
            ["unknown keys 'secret_name', 'other'", "did you mean 'auth_secret_name'?"],
        ),
        (
            "s3://b/p",
            {"auth_method": "CUSTOM_SECRET"},
            "auth.auth_secret_name",
            ["is required when auth_method is CUSTOM_SECRET", "auth_secret_name: hf_access_token"],
        ),
        (
            "s3://b/p",
            {"auth_method": "CUSTOM_SECRET", "auth_secret_name": ""},
            "auth.auth_secret_name",
            ["is required"],
        ),
        (
            "s3://b/p",
            {"auth_method": "CUSTOM_SECRET", "auth_secret_name": "../x"},
            "auth.auth_secret_name",
            ["'../x' does not look like a secret name"],
        ),
        (
            "s3://b/p",
            {"auth_method": "AWS_OIDC", "aws_oidc_region": "us-east-1"},
            "auth.aws_oidc_role_arn",
            ["is required when auth_method is AWS_OIDC", "arn:aws:iam::123456789012:role/"],
        ),
        (
            "s3://b/p",
            {
                "auth_method": "AWS_OIDC",
                "aws_oidc_role_arn": "arn:aws:iam::1234:role/x",
                "aws_oidc_region": "us-east-1",
            },
            "auth.aws_oidc_role_arn",
            ["does not look like arn:aws:iam::<12 digits>:role/<name>"],
        ),
        (
            "s3://b/p",
            {
                "auth_method": "AWS_OIDC",
                "aws_oidc_role_arn": "arn:aws:iam::123456789012:user/x",
                "aws_oidc_region": "us-east-1",
            },
            "auth.aws_oidc_role_arn",
            ["does not look like arn:aws:iam::<12 digits>:role/<name>"],
        ),
        (
            "s3://b/p",
            {"auth_method": "AWS_OIDC", "aws_oidc_role_arn": ARN},
            "auth.aws_oidc_region",
            ["is required when auth_method is AWS_OIDC", "us-east-1"],
        ),
        (
            "s3://b/p",
            {"auth_method": "AWS_OIDC", "aws_oidc_role_arn": ARN, "aws_oidc_region": "Virginia"},
            "auth.aws_oidc_region",
            ["'Virginia' does not look like an AWS region"],
        ),
        (
            "gs://bucket/p",
            {"auth_method": "GCP_OIDC", "gcp_oidc_workload_id_provider": WIF},
            "auth.gcp_oidc_service_account",
            ["is required when auth_method is GCP_OIDC"],
        ),
        (
            "gs://bucket/p",
            {
                "auth_method": "GCP_OIDC",
                "gcp_oidc_service_account": "reader",
                "gcp_oidc_workload_id_provider": WIF,
            },
            "auth.gcp_oidc_service_account",
            ["'reader' does not look like a service account email"],
        ),
        (
            "gs://bucket/p",
            {"auth_method": "GCP_OIDC", "gcp_oidc_service_account": SA},
            "auth.gcp_oidc_workload_id_provider",
            ["is required when auth_method is GCP_OIDC"],
        ),
        (
            "gs://bucket/p",
            {
                "auth_method": "GCP_OIDC",
                "gcp_oidc_service_account": SA,
                "gcp_oidc_workload_id_provider": "//iam.googleapis.com/" + WIF,
            },
            "auth.gcp_oidc_workload_id_provider",
            [
                "does not look like projects/<number>/locations/global/workloadIdentityPools/",
                "drop the //iam.googleapis.com/ prefix",
            ],
        ),
        (
            "s3://b/p",
            {"auth_method": "CUSTOM_SECRET", "auth_secret_name": "x", "aws_oidc_role_arn": ARN},
            "auth.aws_oidc_role_arn",
            ["is not used by auth_method CUSTOM_SECRET", "AWS_OIDC"],
        ),
        (
            "hf://a/b",
            {"auth_method": "AWS_OIDC", "aws_oidc_role_arn": ARN, "aws_oidc_region": "us-east-1"},
            "auth.auth_method",
            ["AWS_OIDC cannot authenticate a hf:// source", "s3://"],
        ),
        (
            "s3://b/p",
            {
                "auth_method": "GCP_OIDC",
                "gcp_oidc_service_account": SA,
                "gcp_oidc_workload_id_provider": WIF,
            },
            "auth.auth_method",
            ["GCP_OIDC cannot authenticate a s3:// source", "gs://"],
        ),
        (
            "file:///data/m",
            {"auth_method": "CUSTOM_SECRET", "auth_secret_name": "x"},
            "auth.auth_method",
            ["CUSTOM_SECRET cannot authenticate a file:// source", "remove auth: local"],
        ),
    ],
)
def test_bad_auth(source: str, auth: object, field: str, fragments: list[str]) -> None:
    message = _error([_entry(source=source, auth=auth)])
    assert message.startswith(f"weights[0].{field}: ")
    for fragment in fragments:
        assert fragment in message


# --------------------------------------------------------------------- shape errors


@pytest.mark.parametrize(
    ("data", "prefix", "fragments"),
    [
        ({"source": "hf://a/b"}, "weights: ", ["must be a list of entries, got a mapping"]),
        ("hf://a/b", "weights: ", ["must be a list of entries, got a string"]),
        (None, "weights: ", ["got null"]),
        (["hf://a/b"], "weights[0]: ", ["must be a mapping", "got a string"]),
        ([_entry(), 3], "weights[1]: ", ["must be a mapping", "got a number"]),
        ([_entry(source=_DROP)], "weights[0].source: ", ["is missing", "hf://owner/repo"]),
        ([_entry(source=None)], "weights[0].source: ", ["is missing"]),
        ([_entry(source=5)], "weights[0].source: ", ["must be a string, got a number"]),
        (
            [_entry(mount_locaton="/m")],
            "weights[0]: ",
            ["unknown key 'mount_locaton'", "did you mean 'mount_location'?", "valid keys are"],
        ),
        (
            [_entry(repo_id="a/b", volume_folder="x")],
            "weights[0]: ",
            ["unknown keys 'repo_id', 'volume_folder'"],
        ),
    ],
)
def test_shape_errors(data: object, prefix: str, fragments: list[str]) -> None:
    message = _error(data)
    assert message.startswith(prefix)
    for fragment in fragments:
        assert fragment in message


def test_errors_are_config_errors_with_field() -> None:
    with pytest.raises(ConfigError) as info:
        parse_weights([_entry(mount_location="rel")])
    assert info.value.field == "weights[0].mount_location"
    assert isinstance(info.value, ValueError)


def test_where_prefixes_field_paths() -> None:
    with pytest.raises(ConfigError, match=r"^model\.weights\[0\]\.mount_location: "):
        parse_weights([_entry(mount_location="rel")], where="model.weights")


# ----------------------------------------------------------------- to_dict and hash


def test_to_dict_round_trips_and_omits_none() -> None:
    raw = _entry(
        auth={"auth_method": "CUSTOM_SECRET", "auth_secret_name": "tok"},
        allow_patterns=["*.safetensors"],
    )
    (entry,) = parse_weights([raw])
    assert entry.to_dict() == raw
    assert parse_weights([entry.to_dict()]) == (entry,)
    assert WeightsEntry(source="s3://b/p").to_dict() == {"source": "s3://b/p"}


def test_config_hash_is_sha256_of_canonical_json_without_mount() -> None:
    (entry,) = parse_weights([_entry(allow_patterns=["é/*.bin"])])
    canonical = '{"allow_patterns":["é/*.bin"],"source":"hf://Qwen/Qwen3-8B@main"}'
    assert entry.config_hash() == hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def test_config_hash_ignores_mount_location() -> None:
    a, b = parse_weights([_entry(mount_location="/models/a"), _entry(mount_location="/models/b")])
    assert a.config_hash() == b.config_hash()
    assert a.config_hash() == WeightsEntry(source=a.source).config_hash()


@pytest.mark.parametrize(
    "change",
    [
        {"source": "hf://Qwen/Qwen3-8B@v2"},
        {"allow_patterns": ["*.safetensors"]},
        {"ignore_patterns": ["*.md"]},
        {"auth": {"auth_method": "CUSTOM_SECRET", "auth_secret_name": "tok"}},
    ],
)
def test_config_hash_changes_with_content_fields(change: dict[str, Any]) -> None:
    (base,) = parse_weights([_entry()])
    (changed,) = parse_weights([_entry(**change)])
    assert base.config_hash() != changed.config_hash()


def test_config_hash_independent_of_yaml_key_order(tmp_path: Path) -> None:
    one = tmp_path / "one.yaml"
    two = tmp_path / "two.yaml"
    one.write_text(
        "weights:\n  - source: s3://b/p\n    mount_location: /m\n"
        "    auth: {auth_method: CUSTOM_SECRET, auth_secret_name: c}\n"
    )
    two.write_text(
        "weights:\n  - auth: {auth_secret_name: c, auth_method: CUSTOM_SECRET}\n"
        "    mount_location: /other\n    source: s3://b/p\n"
    )
    assert load_config(one)[0].config_hash() == load_config(two)[0].config_hash()


# ---------------------------------------------------------------------- load_config


def _documented_weights() -> str:
    """The ``weights:`` example in :mod:`bdn.config.weights`' docstring, so the test
    below also proves that the documented config loads."""
    doc = bdn.config.weights.__doc__ or ""
    example = doc.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    return textwrap.dedent(example) + "\n"


_TRUSS_YAML = (
    "model_name: qwen\nresources:\n  accelerator: H100\nsecrets:\n  hf_access_token: null\n"
    + _documented_weights()
    + "  - source: s3://my-bucket/adapters/\n    mount_location: /models/adapter\n"
)


def test_load_config_from_file_ignores_other_keys(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(_TRUSS_YAML)
    entries = load_config(path)
    assert [e.kind for e in entries] == ["hf", "s3"]
    assert load_config(str(path)) == entries


def test_load_config_from_mapping() -> None:
    entries = load_config({"model_name": "x", "weights": [_entry()]})
    assert entries == parse_weights([_entry()])


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (None, ["config file not found", "config.yaml"]),
        ("weights: [\n", ["is not valid YAML", "line"]),
        ("model_name: x\n", ["has no 'weights' key", "add a top-level 'weights:' list"]),
        ("model_cache:\n  - repo_id: a/b\n", ["has model_cache:", "truss migrate"]),
        ("", ["is empty"]),
        ("- a\n- b\n", ["is a list, not a mapping"]),
        ("weights: hf://a/b\n", ["weights: must be a list of entries"]),
    ],
)
def test_load_config_errors(tmp_path: Path, content: str | None, fragments: list[str]) -> None:
    path = tmp_path / "config.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_load_config_on_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_load_config_mapping_without_weights() -> None:
    with pytest.raises(ConfigError, match=r"^config: has no 'weights' key"):
        load_config({"model_name": "x"})


def test_yaml_error_message_does_not_quote_file_content(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text('weights:\n  - source: "hf://a/b\n    token: zzSECRETzz\n  bad: [\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "zzSECRETzz" not in str(info.value)


def test_entries_are_frozen_and_hashable() -> None:
    (entry,) = parse_weights([_entry(allow_patterns=["*.bin"])])
    with pytest.raises(AttributeError):
        entry.source = "x"  # type: ignore[misc]
    assert len({entry, entry}) == 1
    json.dumps(entry.to_dict())


def test_doctests() -> None:
    for module in (bdn.config.weights, bdn.config.uri, bdn.config.auth, bdn.config.validate):
        assert doctest.testmod(module).failed == 0
