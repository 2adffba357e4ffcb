"""The mirror service's source allowlist: rules, matching, and the flags that set it."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bdn.cli.mirror_server import parse_duration, register, server_config
from bdn.config.weights import parse_source, parse_weights
from bdn.errors import ConfigError
from bdn.mirror.service.scheduler import DEFAULT_JOB_RETENTION
from bdn.mirror.service.sources import SourceNotAllowed, SourcePolicy

RULES = ["hf://Qwen/", "hf://meta-llama/Llama-3.1-8B", "s3://weights-bucket/models/",
         "gs://g-bucket", "r2://acct.r2-bucket/p", "r2://other"]


@pytest.mark.parametrize(("source", "allowed"), [
    ("hf://Qwen/Qwen3-8B@main", True),
    ("hf://Qwen/Qwen3-8B@0123abcd", True),
    ("hf://QwenX/Qwen3-8B", False),
    ("hf://meta-llama/Llama-3.1-8B", True),
    ("hf://meta-llama/Llama-3.1-70B", False),
    ("s3://weights-bucket/models", True),
    ("s3://weights-bucket/models/qwen/v2", True),
    ("s3://weights-bucket/models-private/x", False),
    ("s3://weights-bucket", False),
    ("s3://weights-bucket/models/../secrets", False),
    ("s3://weights-bucket/models/./x", False),
    ("s3://other-bucket/models", False),
    ("gs://g-bucket", True),
    ("gs://g-bucket/any/thing", True),
    ("gs://weights-bucket/models", False),
    ("r2://acct.r2-bucket/p/q", True),
    ("r2://acct.r2-bucket/q", False),
    ("r2://other.any-bucket/x", True),
    ("r2://acct.other/p", False),
    ("file:///data/models", False),
])
def test_rules_match_whole_segments_of_the_parsed_source(source: str, allowed: bool) -> None:
    assert SourcePolicy.parse(RULES).allows(parse_source(source)) is allowed


def test_no_rule_allows_nothing_and_scheme_rules_allow_the_whole_scheme() -> None:
    assert not SourcePolicy().allows(parse_source("hf://Qwen/Qwen3-8B"))
    assert not SourcePolicy.parse(["", "  "]).allows(parse_source("hf://Qwen/Qwen3-8B"))
    everything_remote = SourcePolicy.parse(["hf://", "s3://", "gs://", "r2://"])
    for src in ("hf://a/b", "s3://b/p", "gs://b", "r2://a.b/p"):
        assert everything_remote.allows(parse_source(src))
    assert not everything_remote.allows(parse_source("file:///etc"))


def test_local_rules_and_sources_compare_after_resolving_symlinks(tmp_path: Path) -> None:
    models, secrets = tmp_path / "models", tmp_path / "secrets"
    (models / "m").mkdir(parents=True)
    secrets.mkdir()
    (models / "escape").symlink_to(secrets)
    (tmp_path / "alias").symlink_to(models)
    policy = SourcePolicy.parse([f"file://{models}"])
    assert policy.allows(parse_source(f"file://{models}/m"))
    assert policy.allows(parse_source(f"file://{models}/not-yet-there"))
    assert policy.allows(parse_source(f"file://{tmp_path}/alias/m"))  # Resolves inside.
    assert not policy.allows(parse_source(f"file://{models}/escape"))
    assert not policy.allows(parse_source(f"file://{models}/../secrets"))
    assert not policy.allows(parse_source(f"file://{tmp_path}/models-2"))
    assert SourcePolicy.parse([str(models)]).allows(parse_source(f"file://{models}/m"))
    assert SourcePolicy.parse(["file://"]).allows(parse_source(f"file://{secrets}"))


@pytest.mark.parametrize(("rule", "hint"), [
    ("ftp://host/x", "is not a source prefix"),
    ("gcs://bucket", "is not a source prefix"),
    ("models/", "is not a source prefix"),
    ("file://relative/dir", "file:///absolute/dir"),
    ("hf://Qwen/Qwen3-8B@main", "cannot be matched"),
    ("hf://Qwen/Qwen3-8B/sub", "org or org/repo"),
    ("s3://bucket/../other", "cannot be matched"),
    ("s3://bucket/models/*", "cannot be matched"),
])
def test_a_malformed_rule_is_refused_in_one_line_naming_the_flag(rule: str, hint: str) -> None:
    with pytest.raises(ConfigError) as err:
        SourcePolicy.parse([rule])
    assert str(err.value).startswith("--allow-source: ") and hint in str(err.value)
    assert "\n" not in str(err.value)


def test_check_names_the_entry_the_source_and_the_flag() -> None:
    entries = parse_weights([
        {"source": "hf://Qwen/Qwen3-8B", "mount_location": "/m/a"},
        {"source": "s3://weights-bucket/private/keys", "mount_location": "/m/b"},
    ])
    policy = SourcePolicy.parse(["hf://Qwen/"])
    policy.check(entries[:1])
    with pytest.raises(SourceNotAllowed) as err:
        policy.check(entries)
    assert str(err.value) == (
        "weights[1].source: 's3://weights-bucket/private/keys' is not allowed on this mirror "
        "server; its operator allows sources with --allow-source PREFIX (env "
        "BDN_MIRROR_ALLOW_SOURCES), e.g. --allow-source s3://BUCKET/PREFIX/")
    assert isinstance(err.value, PermissionError) and err.value.source == entries[1].source


# -- flags and environment --------------------------------------------------------------


def _args(argv: list[str], environ: dict[str, str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["mirror-server", "--insecure-no-token", *argv])
    args.environ = environ or {}
    return args


def test_allow_source_flags_env_twin_and_file(tmp_path: Path) -> None:
    assert server_config(_args([])).sources.rules == ()
    env = {"BDN_MIRROR_ALLOW_SOURCES": "hf://Qwen/, s3://b/models/ gs://g"}
    assert server_config(_args([], env)).sources.rules == ("hf://Qwen/", "s3://b/models/",
                                                           "gs://g")
    flags = ["--allow-source", "hf://meta-llama/", "--allow-source", "r2://acct.b"]
    # The flags win over their variable.
    assert server_config(_args(flags, env)).sources.rules == ("hf://meta-llama/", "r2://acct.b")
    rules = tmp_path / "allow.txt"
    rules.write_text("# models we serve\nhf://Qwen/  # the Qwen org\n\nfile:///data/models\n")
    conf = server_config(_args(["--allow-sources-file", str(rules), *flags]))
    assert conf.sources.rules == ("hf://meta-llama/", "r2://acct.b", "hf://Qwen/",
                                  "file:///data/models")
    conf = server_config(_args([], {"BDN_MIRROR_ALLOW_SOURCES_FILE": str(rules)}))
    assert conf.sources.rules == ("hf://Qwen/", "file:///data/models")
    with pytest.raises(ConfigError, match=r"^--allow-sources-file: cannot read"):
        server_config(_args(["--allow-sources-file", str(tmp_path / "missing")]))
    with pytest.raises(ConfigError, match=r"^--allow-source: 'ftp://x'"):
        server_config(_args(["--allow-source", "ftp://x"]))


def test_job_retention_flag_and_env_twin() -> None:
    assert server_config(_args([])).job_retention == DEFAULT_JOB_RETENTION == 7 * 86400
    assert server_config(_args([], {"BDN_MIRROR_JOB_RETENTION": "12h"})).job_retention == 43200
    conf = server_config(_args(["--job-retention", "90"], {"BDN_MIRROR_JOB_RETENTION": "12h"}))
    assert conf.job_retention == 90
    assert [parse_duration(t, "f") for t in ("2d", "30m", "45s", "1.5h")] == [
        172800, 1800, 45, 5400]
    for bad in ("0", "-1d", "week", "7 days"):
        with pytest.raises(ConfigError, match=r"^--job-retention: .* positive duration"):
            server_config(_args([f"--job-retention={bad}"]))
