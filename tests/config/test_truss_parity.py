"""A Truss ``weights:`` config is accepted or refused here exactly as Truss decides.

Each row is the YAML a Truss user would write, whether Truss accepts it, whether
BDN does (the same unless the row is a deliberate difference) and, for a
refusal, a fragment of our one-line message. ``docs/truss-parity.md`` lists every
row as a rule; :func:`test_parity_table_lists_every_row` keeps the two in step.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from bdn.config.weights import load_config
from bdn.errors import ConfigError

OK, NO = True, False
ARN = "arn:aws:iam::123456789012:role/bdn-reader"
SA = "reader@my-project.iam.gserviceaccount.com"
WIF = "projects/123456789/locations/global/workloadIdentityPools/pool/providers/prov"
M = "mount_location: /models/m"
DOC = Path(__file__).resolve().parents[2] / "docs" / "truss-parity.md"


def one(*lines: str) -> str:
    """A config whose ``weights:`` list holds one entry made of ``lines``."""
    return "weights:\n  - " + "\n    ".join(lines) + "\n"


def two(first: str, second: str) -> str:
    """A config with two hf:// entries mounted at ``first`` and ``second``."""
    return one("source: hf://a/b", f"mount_location: {first}") + (
        f"  - source: hf://c/d\n    mount_location: {second}\n"
    )


def auth(*lines: str) -> tuple[str, ...]:
    """The lines of an ``auth:`` block (to splice into :func:`one`)."""
    return ("auth:", *(f"  {line}" for line in lines))


CUSTOM = auth("auth_method: CUSTOM_SECRET", "auth_secret_name: hf_access_token")
AWS = ("auth_method: AWS_OIDC", f"aws_oidc_role_arn: {ARN}", "aws_oidc_region: us-east-1")
GCP = (
    "auth_method: GCP_OIDC",
    f"gcp_oidc_service_account: {SA}",
    f"gcp_oidc_workload_id_provider: {WIF}",
)
S3, GS, HF = "source: s3://bucket/models", "source: gs://bucket/models", "source: hf://a/b"
# One entry of the older API, valid in Truss (``use_volume`` is required there).
OLD_CACHE = "  - repo_id: a/b\n    use_volume: false\n"


def row(
    row_id: str, text: str, truss: bool, fragment: str = "", *, ours: bool | None = None
) -> Any:
    """One table row; ``ours`` is given only where BDN deliberately differs from Truss."""
    return pytest.param(text, truss, truss if ours is None else ours, fragment, id=row_id)


ROWS = [
    # ------------------------------------------------------------------ source schemes
    row("source-hf", one("source: hf://Qwen/Qwen3-8B", M), OK),
    row("source-s3", one("source: s3://my-bucket/models/qwen", M), OK),
    row("source-s3-bucket-only", one("source: s3://my-bucket", M), OK),
    row("source-gs", one("source: gs://my-bucket/models/qwen", M), OK),
    row("source-r2", one("source: r2://0123abcd.my-bucket/models", M), OK),
    row("source-missing", one(M), NO, "source: is missing"),
    row("source-empty", one('source: ""', M), NO, "has no scheme"),
    row("source-not-string", one("source: 42", M), NO, "must be a string"),
    row("source-no-scheme", one("source: Qwen/Qwen3-8B", M), NO, "did you mean hf://Qwen/Qwen3-8B?"),
    row("source-unknown-scheme", one("source: ftp://host/x", M), NO, "unknown scheme 'ftp://'"),
    row("source-bt", one("source: bt://job/checkpoint", M), NO, "Baseten Training"),
    row("source-azure", one("source: azure://acct/container/m", M), OK),
    row("source-cw", one("source: cw://bucket/m", M), OK),
    row("source-https", one("source: https://example.com/m.bin", M), OK),
    row("azure-without-container", one("source: azure://acct", M), OK,
        "azure://account/container", ours=NO),
    row("https-query-string", one("source: https://example.com/m.bin?sig=abc", M), OK,
        "no query string", ours=NO),
    row("source-file", one("source: file:///data/models/qwen", M), NO, ours=OK),
    row("source-scheme-upper-case", one("source: S3://my-bucket", M), NO, ours=OK),
    row("source-cloud-empty-path", one("source: s3://", M), NO, "malformed s3:// source"),
    row("source-cloud-leading-slash", one("source: gs:///models", M), NO, "malformed gs://"),
    row("source-s3-at-revision", one("source: s3://bucket/prefix@v1", M), NO, "only hf:// sources"),
    row("source-gs-at-sign", one("source: gs://bucket/a@b/c", M), NO, "only hf:// sources"),
    row("source-r2-at-revision", one("source: r2://acct.bucket/m@v2", M), NO, "only hf:// sources"),
    # ---------------------------------------------------------------- hf:// revisions
    row("hf-revision-branch", one("source: hf://Qwen/Qwen3-8B@main", M), OK),
    row("hf-revision-commit", one(f"source: hf://a/b@{'5206a32e' * 5}", M), OK),
    row("hf-revision-pr-ref", one("source: hf://a/b@refs/pr/1", M), OK),
    row("hf-empty-repo", one("source: hf://", M), NO, "malformed hf:// source"),
    row("hf-leading-slash", one("source: hf:///Qwen/Qwen3-8B", M), NO, "malformed hf:// source"),
    row("hf-single-name", one("source: hf://gpt2", M), OK, "hf://owner/repo", ours=NO),
    row("hf-subfolder", one("source: hf://a/b/sub", M), OK, "allow_patterns", ours=NO),
    row("hf-empty-revision", one("source: hf://a/b@", M), OK, "malformed hf://", ours=NO),
    row("bucket-name-invalid", one("source: gs://UPPER/x", M), OK, "gs://bucket", ours=NO),
    row("r2-without-account", one("source: r2://bucket/m", M), OK, "account_id.bucket", ours=NO),
    # ------------------------------------------------------------------ mount_location
    row("mount-missing", one(HF), NO, "mount_location: is missing"),
    row("mount-empty", one(HF, 'mount_location: ""'), NO, "is empty"),
    row("mount-relative", one(HF, "mount_location: models/m"), NO, "is relative"),
    row("mount-not-string", one(HF, "mount_location: 5"), NO, "must be a string"),
    row("mount-absolute", one(HF, "mount_location: /models/m/"), OK),
    row("mount-duplicate", two("/models/m", "/models/m"), NO, "is also the mount location"),
    row("mount-duplicate-after-normalizing", two("/models/m", "/models/m/"), OK, "is also",
        ours=NO),
    row("mount-nested", two("/models/m", "/models/m/tok"), OK, "is inside", ours=NO),
    row("mount-root", one(HF, "mount_location: /"), OK, "filesystem root", ours=NO),
    row("mount-dot-dot", one(HF, "mount_location: /models/../etc"), OK, "'..'", ours=NO),
    # -------------------------------------------------------------------- auth methods
    row("auth-custom-secret", one(HF, M, *CUSTOM), OK),
    row("auth-method-lower-case",
        one(HF, M, *auth("auth_method: custom_secret", "auth_secret_name: tok")), OK),
    row("auth-method-mixed-case", one(S3, M, *auth("auth_method: Aws_Oidc", *AWS[1:])), OK),
    row("auth-method-missing", one(HF, M, *auth("auth_secret_name: tok")), NO,
        "auth_method is missing"),
    row("auth-method-unknown", one(HF, M, *auth("auth_method: TOKEN")), NO,
        "unknown auth_method 'TOKEN'"),
    row("auth-method-not-string", one(HF, M, *auth("auth_method: 1")), NO, "unknown auth_method"),
    row("auth-not-mapping", one(HF, M, "auth: hf_access_token"), NO, "must be a mapping"),
    row("auth-null", one(HF, M, "auth: null"), OK),
    row("auth-unknown-key", one(HF, M, *CUSTOM, "  secret_name: x"), NO, "unknown key"),
    # CUSTOM_SECRET: needs auth_secret_name, no OIDC field.
    row("custom-secret-needs-name", one(HF, M, *auth("auth_method: CUSTOM_SECRET")), NO,
        "is required when auth_method is CUSTOM_SECRET"),
    row("custom-secret-empty-name", one(HF, M, *auth("auth_method: CUSTOM_SECRET",
        'auth_secret_name: ""')), NO, "is required"),
    row("custom-secret-name-not-string", one(HF, M, *auth("auth_method: CUSTOM_SECRET",
        "auth_secret_name: 5")), NO, "does not look like a secret name"),
    row("custom-secret-forbids-aws-fields", one(S3, M, *CUSTOM, "  aws_oidc_region: us-east-1"),
        NO, "is not used by auth_method CUSTOM_SECRET"),
    row("custom-secret-forbids-gcp-fields",
        one(GS, M, *CUSTOM, f"  gcp_oidc_service_account: {SA}"), NO,
        "is not used by auth_method CUSTOM_SECRET"),
    row("custom-secret-empty-oidc-field", one(S3, M, *CUSTOM, '  aws_oidc_region: ""'), OK),
    # AWS_OIDC: needs role ARN and region, no secret or GCP field.
    row("aws-oidc", one(S3, M, *auth(*AWS)), OK),
    row("aws-oidc-needs-role-arn", one(S3, M, *auth(AWS[0], AWS[2])), NO,
        "aws_oidc_role_arn: is required when auth_method is AWS_OIDC"),
    row("aws-oidc-needs-region", one(S3, M, *auth(*AWS[:2])), NO,
        "aws_oidc_region: is required when auth_method is AWS_OIDC"),
    row("aws-oidc-forbids-secret", one(S3, M, *auth(*AWS, "auth_secret_name: tok")), NO,
        "is not used by auth_method AWS_OIDC"),
    row("aws-oidc-forbids-gcp-fields",
        one(S3, M, *auth(*AWS, f"gcp_oidc_workload_id_provider: {WIF}")), NO,
        "is not used by auth_method AWS_OIDC"),
    row("aws-role-arn-shape", one(S3, M, *auth(AWS[0], "aws_oidc_role_arn: arn:aws:iam::1:role/x",
        AWS[2])), OK, "does not look like arn:aws:iam", ours=NO),
    row("aws-region-shape", one(S3, M, *auth(*AWS[:2], "aws_oidc_region: Virginia")), OK,
        "does not look like an AWS region", ours=NO),
    # GCP_OIDC: needs service account and provider, no secret or AWS field.
    row("gcp-oidc", one(GS, M, *auth(*GCP)), OK),
    row("gcp-oidc-needs-service-account", one(GS, M, *auth(GCP[0], GCP[2])), NO,
        "gcp_oidc_service_account: is required when auth_method is GCP_OIDC"),
    row("gcp-oidc-needs-provider", one(GS, M, *auth(*GCP[:2])), NO,
        "gcp_oidc_workload_id_provider: is required when auth_method is GCP_OIDC"),
    row("gcp-oidc-forbids-secret", one(GS, M, *auth(*GCP, "auth_secret_name: tok")), NO,
        "is not used by auth_method GCP_OIDC"),
    row("gcp-oidc-forbids-aws-fields", one(GS, M, *auth(*GCP, f"aws_oidc_role_arn: {ARN}")), NO,
        "is not used by auth_method GCP_OIDC"),
    row("gcp-service-account-shape", one(GS, M, *auth(GCP[0], "gcp_oidc_service_account: reader",
        GCP[2])), OK, "does not look like a service account email", ours=NO),
    row("gcp-provider-shape", one(GS, M, *auth(*GCP[:2], "gcp_oidc_workload_id_provider: "
        f"//iam.googleapis.com/{WIF}")), OK, "drop the //iam.googleapis.com/ prefix", ours=NO),
    # Rules BDN adds on top of the per-method fields.
    row("secret-name-shape", one(HF, M, *auth("auth_method: CUSTOM_SECRET",
        "auth_secret_name: ../x")), OK, "does not look like a secret name", ours=NO),
    row("auth-method-fits-source", one(HF, M, *auth(*AWS)), OK,
        "AWS_OIDC cannot authenticate a hf:// source", ours=NO),
    # --------------------------------------------------- the older top-level secret name
    row("legacy-secret-name", one(HF, M, "auth_secret_name: hf_access_token"), OK),
    row("legacy-secret-name-and-auth-secret", one(HF, M, "auth_secret_name: a", *CUSTOM), NO,
        "keep only auth.auth_secret_name"),
    row("legacy-secret-name-empty-beside-auth", one(HF, M, 'auth_secret_name: ""', *CUSTOM), OK),
    row("legacy-secret-name-beside-unnamed-custom", one(HF, M, "auth_secret_name: a",
        *auth("auth_method: CUSTOM_SECRET")), NO, "is required when auth_method is CUSTOM_SECRET"),
    row("legacy-secret-name-beside-oidc", one(S3, M, "auth_secret_name: a", *auth(*AWS)), OK,
        "reads none", ours=NO),
    row("legacy-secret-name-not-string", one(HF, M, "auth_secret_name: [a]"), NO,
        "weights[0].auth_secret_name: a list does not look like a secret name"),
    # ---------------------------------------------------------------------- patterns
    row("patterns-lists", one(HF, M, "allow_patterns: ['*.safetensors', config.json]",
        "ignore_patterns: ['*.md']"), OK),
    row("patterns-null", one(HF, M, "allow_patterns: null", "ignore_patterns: null"), OK),
    row("allow-patterns-string", one(HF, M, "allow_patterns: '*.safetensors'"), NO,
        "must be a list of strings"),
    row("ignore-patterns-string", one(HF, M, "ignore_patterns: '*.md'"), NO,
        "must be a list of strings"),
    row("pattern-not-string", one(HF, M, "allow_patterns: [1]"), NO, "must be a string"),
    row("ignore-patterns-empty", one(HF, M, "ignore_patterns: []"), OK),
    row("allow-patterns-empty", one(HF, M, "allow_patterns: []"), OK, "select no files", ours=NO),
    row("pattern-empty-string", one(HF, M, "allow_patterns: ['']"), OK, "non-empty", ours=NO),
    row("pattern-absolute", one(HF, M, "allow_patterns: ['/m.bin']"), OK, "leading '/'", ours=NO),
    row("pattern-empty-segment", one(HF, M, "allow_patterns: ['a//b']"), OK, "empty segment",
        ours=NO),
    row("pattern-unclosed-class", one(HF, M, "allow_patterns: ['[ab']"), OK, "no matching ']'",
        ours=NO),
    # ------------------------------------------------------------ entries and the file
    row("entry-unknown-key", one(HF, M, "revision: main"), NO, "unknown key 'revision'"),
    row("entry-not-mapping", "weights:\n  - hf://a/b\n", NO, "must be a mapping"),
    row("weights-not-list", "weights: hf://a/b\n", NO, "must be a list of entries"),
    row("weights-missing", "model_name: m\n", OK, "has no 'weights' key", ours=NO),
    row("weights-empty", "weights: []\n", OK, "is an empty list", ours=NO),
    row("model-cache-and-weights", "model_cache:\n" + OLD_CACHE + one(HF, M), NO, "truss migrate"),
    row("hf-cache-and-weights", "hf_cache:\n" + OLD_CACHE + one(HF, M), NO, "truss migrate"),
    row("empty-model-cache-beside-weights", "model_cache: []\n" + one(HF, M), OK),
    row("model-cache-alone", "model_cache:\n" + OLD_CACHE, OK, "truss migrate", ours=NO),
    row("other-top-level-keys", "model_name: m\nresources: {cpu: '1'}\n" + one(HF, M), OK),
    row("duplicate-yaml-key", one(HF, M, "mount_location: /models/n"), OK),
]


@pytest.mark.parametrize(("text", "truss", "ours", "fragment"), ROWS)
def test_truss_parity(
    tmp_path: Path, text: str, truss: bool, ours: bool, fragment: str
) -> None:
    """Our accept/refuse decision for the YAML (``truss`` is kept for the table's sake)."""
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    if ours:
        assert load_config(path)
        return
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert fragment in message, message


# Spellings Truss treats as one config, and the canonical form each must hash like.
SAME_CONFIG = [
    pytest.param(one(HF, M, *auth("auth_method: custom_secret", "auth_secret_name: tok")),
                 one(HF, M, *auth("auth_method: CUSTOM_SECRET", "auth_secret_name: tok")),
                 id="lower-case-method"),
    pytest.param(one(S3, M, *auth("auth_method: aws_oidc", *AWS[1:])), one(S3, M, *auth(*AWS)),
                 id="lower-case-oidc-method"),
    pytest.param(one(HF, M, "auth_secret_name: tok"),
                 one(HF, M, *auth("auth_method: CUSTOM_SECRET", "auth_secret_name: tok")),
                 id="legacy-secret-name"),
    pytest.param(one(HF, M, 'auth_secret_name: ""', *CUSTOM), one(HF, M, *CUSTOM),
                 id="empty-legacy-secret-name"),
]


@pytest.mark.parametrize(("spelling", "canonical"), SAME_CONFIG)
def test_truss_spellings_share_a_config_id(tmp_path: Path, spelling: str, canonical: str) -> None:
    """Another spelling of an accepted config names the same ref (same config hash)."""
    (tmp_path / "a.yaml").write_text(spelling, encoding="utf-8")
    (tmp_path / "b.yaml").write_text(canonical, encoding="utf-8")
    (a,) = load_config(tmp_path / "a.yaml")
    (b,) = load_config(tmp_path / "b.yaml")
    assert a == b
    assert a.config_hash() == b.config_hash()


# Config ids of configs accepted before the parity work; they name existing refs.
PINNED_IDS = [
    (one("source: hf://Qwen/Qwen3-8B", M),
     "489c3e3e7390171cd4e401807f252ac61b5df76c16d2e79e96204e9018fc379d"),
    (one("source: s3://b/p/", M, *auth(*AWS[:1], "aws_oidc_role_arn: "
         "arn:aws:iam::123456789012:role/x", AWS[2])),
     "5cdb284fe943ba04f5a14ea372ac6a19f9dabf3a1035187ce1b2ce8042fdbd7d"),
    (one("source: r2://acct.bucket/x", M, *auth("auth_method: CUSTOM_SECRET",
         "auth_secret_name: r2_credentials")),
     "7c3bb80e5dc93b80e09198a2bf655c94577f88d0cbf8fad1ef7d1611d1e7eabc"),
    (one("source: S3://my-bucket", M),
     "b65757efc830204e11dee04a2a96b82bf4cd4228681ba036727f5a9648ad6b8f"),
    (one("source: file:///data/x@2", M),
     "ff8ef96ad57cc57a7e5006b5ff98a5045efc09cdce516d99ac2a5e9fa652b1f7"),
]


@pytest.mark.parametrize(("text", "config_id"), PINNED_IDS)
def test_config_ids_of_accepted_configs_are_unchanged(
    tmp_path: Path, text: str, config_id: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    (entry,) = load_config(path)
    assert entry.config_hash() == config_id


def test_parity_table_lists_every_row() -> None:
    """docs/truss-parity.md has one line per row, and marks exactly the differing rows."""
    lines = {m.group(1): line for line in DOC.read_text(encoding="utf-8").splitlines()
             if (m := re.search(r"test_truss_parity\[([a-z0-9-]+)\]", line))}
    ids = {param.id: param.values for param in ROWS}
    assert sorted(lines) == sorted(ids)
    for row_id, (_, truss, ours, _) in ids.items():
        assert ("**differs**" in lines[row_id]) == (truss != ours), row_id
