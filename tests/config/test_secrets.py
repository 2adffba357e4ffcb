"""Secret lookup (file, then environment) and Baseten's S3 credential format.

Every failure case also checks that the secret's value is absent from the
message, using a value distinctive enough that it cannot appear by chance.
"""

from __future__ import annotations

import doctest
import json
import os
from pathlib import Path

import pytest

import bdn.config.secrets
from bdn.backends.s3.creds import S3Credentials, load_s3_credentials
from bdn.config.secrets import SecretResolver, is_valid_secret_name, secret_env_name
from bdn.errors import SecretError

FAKE_SECRET = "zzFAKE-s3cr3t-VALUE-9f8e7d6c"  # Distinctive: must never appear in an error.
FAKE_KEY_ID = "AKIAFAKEKEYID0000000"
FAKE_TOKEN = "zzFAKE-session-TOKEN-1a2b3c"


def _resolver(
    tmp_path: Path, files: dict[str, str | bytes], env: dict[str, str] | None = None
) -> SecretResolver:
    for name, value in files.items():
        target = tmp_path / name
        if isinstance(value, bytes):
            target.write_bytes(value)
        else:
            target.write_text(value, encoding="utf-8")
    return SecretResolver(tmp_path, env or {})


def _assert_no_leak(err: BaseException, *values: str) -> None:
    """The message, repr and chained causes never contain a secret value."""
    seen: BaseException | None = err
    while seen is not None:
        for value in values:
            assert value not in str(seen)
            assert value not in repr(seen)
            assert value not in repr(seen.args)
        seen = seen.__cause__ or seen.__context__


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("hf_access_token", "BDN_SECRET_HF_ACCESS_TOKEN"),
        ("my-s3.creds", "BDN_SECRET_MY_S3_CREDS"),
        ("AlreadyUpper9", "BDN_SECRET_ALREADYUPPER9"),
        ("a b/c", "BDN_SECRET_A_B_C"),
        ("é", "BDN_SECRET__"),
    ],
)
def test_secret_env_name(name: str, expected: str) -> None:
    assert secret_env_name(name) == expected


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("hf_abc", "hf_abc"),
        ("hf_abc\n", "hf_abc"),
        ("hf_abc\r\n", "hf_abc"),
        ("hf_abc\n\n", "hf_abc\n"),  # Only one trailing newline is removed.
        (" spaced ", " spaced "),
    ],
)
def test_get_reads_file_and_strips_one_newline(tmp_path: Path, content: str, expected: str) -> None:
    resolver = _resolver(tmp_path, {"tok": content})
    assert resolver.get("tok") == expected


def test_file_wins_over_environment(tmp_path: Path) -> None:
    resolver = _resolver(tmp_path, {"tok": "from-file"}, {"BDN_SECRET_TOK": "from-env"})
    assert resolver.get("tok") == "from-file"


@pytest.mark.parametrize("secrets_dir", [None, "missing-dir", "empty-dir"])
def test_environment_is_the_fallback(tmp_path: Path, secrets_dir: str | None) -> None:
    directory = None if secrets_dir is None else tmp_path / secrets_dir
    if secrets_dir == "empty-dir":
        (tmp_path / secrets_dir).mkdir()
    resolver = SecretResolver(directory, {"BDN_SECRET_HF_ACCESS_TOKEN": "from-env"})
    assert resolver.get("hf_access_token") == "from-env"


def test_resolver_follows_kubernetes_symlinked_layout(tmp_path: Path) -> None:
    # Kubernetes mounts each key as a symlink into a timestamped "..data" directory.
    data = tmp_path / "..2024_01_01" / "tok"
    data.parent.mkdir()
    data.write_text("linked\n")
    (tmp_path / "..data").symlink_to(data.parent.name)
    (tmp_path / "tok").symlink_to("..data/tok")
    assert SecretResolver(tmp_path, {}).get("tok") == "linked"


def test_missing_secret_names_secret_directory_and_variable(tmp_path: Path) -> None:
    resolver = SecretResolver(tmp_path, {"BDN_SECRET_HF_ACCESS_TOKEN": ""})
    with pytest.raises(SecretError) as info:
        resolver.get("hf_access_token")
    message = str(info.value)
    assert "'hf_access_token'" in message
    assert str(tmp_path / "hf_access_token") in message
    assert "BDN_SECRET_HF_ACCESS_TOKEN" in message
    assert info.value.secret_name == "hf_access_token"
    assert "\n" not in message


def test_missing_secret_without_directory_says_how_to_configure(tmp_path: Path) -> None:
    with pytest.raises(SecretError) as info:
        SecretResolver(None, {}).get("creds")
    message = str(info.value)
    assert "BDN_SECRETS_DIR" in message
    assert "BDN_SECRET_CREDS" in message


def test_missing_secret_mentions_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="does not exist"):
        SecretResolver(tmp_path / "nope", {}).get("creds")


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", "..", ".", "", "x..y", "nul\x00"])
def test_unsafe_secret_names_are_refused(tmp_path: Path, name: str) -> None:
    assert not is_valid_secret_name(name)
    with pytest.raises(SecretError, match="invalid secret name"):
        SecretResolver(tmp_path, {secret_env_name(name): FAKE_SECRET}).get(name)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of mode")
def test_unreadable_file_is_a_secret_error_without_contents(tmp_path: Path) -> None:
    resolver = _resolver(tmp_path, {"tok": FAKE_SECRET})
    (tmp_path / "tok").chmod(0)
    try:
        with pytest.raises(SecretError) as info:
            resolver.get("tok")
    finally:
        (tmp_path / "tok").chmod(0o600)
    assert "could not be read" in str(info.value)
    _assert_no_leak(info.value, FAKE_SECRET)


@pytest.mark.parametrize(
    ("setup", "fragment"),
    [
        ("directory", "is a directory"),
        ("symlink-loop", "could not be read"),
        ("binary", "not UTF-8"),
        ("empty", "is empty"),
        ("newline-only", "is empty"),
    ],
)
def test_bad_secret_files(tmp_path: Path, setup: str, fragment: str) -> None:
    target = tmp_path / "tok"
    if setup == "directory":
        target.mkdir()
    elif setup == "symlink-loop":
        target.symlink_to("tok")
    elif setup == "binary":
        target.write_bytes(b"\xff\xfe" + FAKE_SECRET.encode())
    elif setup == "empty":
        target.write_text("")
    else:
        target.write_text("\n")
    with pytest.raises(SecretError) as info:
        SecretResolver(tmp_path, {"BDN_SECRET_TOK": FAKE_SECRET}).get("tok")
    assert fragment in str(info.value)
    _assert_no_leak(info.value, FAKE_SECRET)


@pytest.mark.parametrize(
    ("environ", "expected_dir"),
    [({}, None), ({"BDN_SECRETS_DIR": ""}, None), ({"BDN_SECRETS_DIR": "/run/s"}, Path("/run/s"))],
)
def test_from_env(environ: dict[str, str], expected_dir: Path | None) -> None:
    assert SecretResolver.from_env(environ).secrets_dir == expected_dir


def test_from_env_uses_the_given_mapping_not_os_environ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BDN_SECRET_TOK", "from-process")
    resolver = SecretResolver.from_env({"BDN_SECRETS_DIR": str(tmp_path)})
    with pytest.raises(SecretError):
        resolver.get("tok")


def test_resolver_repr_hides_environment() -> None:
    resolver = SecretResolver(None, {"BDN_SECRET_TOK": FAKE_SECRET})
    assert FAKE_SECRET not in repr(resolver)


# ---------------------------------------------------------------------- S3 credentials


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (
            {"aws_access_key_id": FAKE_KEY_ID, "aws_secret_access_key": FAKE_SECRET},
            S3Credentials(FAKE_KEY_ID, FAKE_SECRET),
        ),
        (
            {
                "aws_access_key_id": FAKE_KEY_ID,
                "aws_secret_access_key": FAKE_SECRET,
                "aws_region": "eu-west-1",
                "aws_session_token": FAKE_TOKEN,
            },
            S3Credentials(FAKE_KEY_ID, FAKE_SECRET, "eu-west-1", FAKE_TOKEN),
        ),
        (
            {
                "aws_access_key_id": f" {FAKE_KEY_ID}\n",
                "aws_secret_access_key": FAKE_SECRET,
                "aws_region": "",
                "aws_session_token": None,
                "comment": "extra keys are ignored",
            },
            S3Credentials(FAKE_KEY_ID, FAKE_SECRET),
        ),
    ],
)
def test_load_s3_credentials(
    tmp_path: Path, payload: dict[str, object], expected: S3Credentials
) -> None:
    resolver = _resolver(tmp_path, {"creds": json.dumps(payload) + "\n"})
    creds = load_s3_credentials(resolver, "creds")
    assert creds == expected
    assert FAKE_SECRET not in repr(creds)
    assert FAKE_TOKEN not in repr(creds)


@pytest.mark.parametrize(
    "raw",
    [
        f"aws_secret_access_key={FAKE_SECRET}",
        f'{{"aws_access_key_id": "x", "aws_secret_access_key": "{FAKE_SECRET}"',
        f'["{FAKE_SECRET}"]',
        f'"{FAKE_SECRET}"',
        "42",
        "null",
    ],
)
def test_s3_credentials_not_a_json_object(tmp_path: Path, raw: str) -> None:
    resolver = _resolver(tmp_path, {"creds": raw})
    with pytest.raises(SecretError) as info:
        load_s3_credentials(resolver, "creds")
    assert str(info.value) == (
        "secret 'creds' is not valid JSON: S3 credentials must be a JSON object "
        "with aws_access_key_id and aws_secret_access_key"
    )
    assert info.value.secret_name == "creds"
    _assert_no_leak(info.value, FAKE_SECRET)


@pytest.mark.parametrize(
    "payload",
    [
        {"access_key_id": FAKE_KEY_ID, "secret_access_key": FAKE_SECRET},
        {"AWS_ACCESS_KEY_ID": FAKE_KEY_ID, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET},
        {"aws_access_key_id": FAKE_KEY_ID},
        {"aws_secret_access_key": FAKE_SECRET},
        {"aws_access_key_id": "", "aws_secret_access_key": FAKE_SECRET},
        {"aws_access_key_id": FAKE_KEY_ID, "aws_secret_access_key": "  "},
        {"aws_access_key_id": None, "aws_secret_access_key": FAKE_SECRET},
        {},
    ],
)
def test_s3_credentials_missing_keys_use_basetens_message(
    tmp_path: Path, payload: dict[str, object]
) -> None:
    resolver = _resolver(tmp_path, {"creds": json.dumps(payload)})
    with pytest.raises(SecretError) as info:
        load_s3_credentials(resolver, "creds")
    message = str(info.value)
    assert message.startswith(
        "aws_access_key_id and aws_secret_access_key are required in S3 credentials"
    )
    assert "'creds'" in message
    _assert_no_leak(info.value, FAKE_SECRET, FAKE_KEY_ID)


@pytest.mark.parametrize(
    ("payload", "key"),
    [
        ({"aws_access_key_id": 12345, "aws_secret_access_key": FAKE_SECRET}, "aws_access_key_id"),
        (
            {"aws_access_key_id": "k", "aws_secret_access_key": [FAKE_SECRET]},
            "aws_secret_access_key",
        ),
        ({"aws_access_key_id": "k", "aws_secret_access_key": "s", "aws_region": 1}, "aws_region"),
    ],
)
def test_s3_credentials_non_string_values(
    tmp_path: Path, payload: dict[str, object], key: str
) -> None:
    resolver = _resolver(tmp_path, {"creds": json.dumps(payload)})
    with pytest.raises(SecretError) as info:
        load_s3_credentials(resolver, "creds")
    assert key in str(info.value)
    _assert_no_leak(info.value, FAKE_SECRET)


def test_s3_credentials_from_environment() -> None:
    value = json.dumps({"aws_access_key_id": FAKE_KEY_ID, "aws_secret_access_key": FAKE_SECRET})
    resolver = SecretResolver(None, {"BDN_SECRET_MY_CREDS": value})
    assert load_s3_credentials(resolver, "my-creds").secret_access_key == FAKE_SECRET


def test_s3_credentials_missing_secret_propagates_lookup_error(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="not found"):
        load_s3_credentials(SecretResolver(tmp_path, {}), "creds")


def test_doctests() -> None:
    assert doctest.testmod(bdn.config.secrets).failed == 0
