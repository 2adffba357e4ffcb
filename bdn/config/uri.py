"""Source URIs of a weights entry: ``hf://``, ``s3://``, ``gs://``, ``r2://``, ``azure://``,
``cw://``, ``https://`` and ``file://``.

:func:`parse_source` validates a URI and splits it into a :class:`ParsedSource`;
:func:`source_from_cli` turns a CLI ``SOURCE`` argument (a path or a URI) into
a URI. Errors are one-line :class:`~bdn.errors.ConfigError` values that name
the accepted form. ``bdn.config.weights`` re-exports the public names; import them
from there.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bdn.config.validate import type_name
from bdn.errors import ConfigError

__all__ = [
    "DEFAULT_HF_REVISION",
    "SCHEME_KINDS",
    "SUPPORTED_SCHEMES",
    "ParsedSource",
    "SourceKind",
    "normalize_abs",
    "parse_source",
    "source_from_cli",
]

SourceKind = Literal["hf", "s3", "gcs", "r2", "azure", "cw", "https", "local"]

# What an "@" after ``scheme://`` means for a scheme (see _Scheme.at_sign).
AtSign = Literal["revision", "refused", "literal"]

# Schemes people reach for by habit (or that Truss takes and BDN does not read
# yet), and what to write here instead.
_SCHEME_HINTS: Mapping[str, str] = {
    "gcs": "for Google Cloud Storage write gs://bucket/prefix",
    "http": "plain http:// is not accepted (Truss takes https:// only); serve the file over "
    "https://, or for Hugging Face write hf://owner/repo",
    "s3a": "write s3://bucket/prefix",
    "huggingface": "write hf://owner/repo",
}

# Schemes that name an upstream BDN cannot reach, and what to do instead.
_REFUSED_SCHEMES: Mapping[str, str] = {
    "bt": "Baseten Training sources are not available outside Baseten; "
    "mirror the checkpoint to s3://, gs:// or hf:// and use that URI",
}

DEFAULT_HF_REVISION = "main"

_URI_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", re.DOTALL)
_HF_NAME = r"[A-Za-z0-9_][A-Za-z0-9._-]*"
_HF_REPO_RE = re.compile(rf"{_HF_NAME}/{_HF_NAME}")
_HF_REVISION_RE = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._/-]*")
# Lenient enough for legacy and S3-compatible bucket names; it exists to catch
# typos (spaces, empty names, a stray "/"), not to replay AWS's naming rules.
# Length limits are left to the server, so short test buckets ("b") still parse.
_S3_BUCKET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
_GCS_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,221}")
_R2_ACCOUNT_RE = re.compile(r"[A-Za-z0-9]+")
_R2_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
# Azure storage account names: 3-24 lower-case letters and digits; container
# names: 3-63 of lower-case letters, digits and single hyphens. The lower
# bounds are left to the service, as for S3, so short test names still parse.
_AZURE_ACCOUNT_RE = re.compile(r"[a-z0-9]{1,24}")
_AZURE_CONTAINER_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# host[:port], no user info: credentials belong in a secret, never in the config.
_HTTPS_HOST_RE = re.compile(r"[A-Za-z0-9.-]+(?::[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?")


@dataclass(frozen=True, slots=True)
class ParsedSource:
    """A validated source URI, split into the parts a source module needs.

    Attributes:
        scheme: the URI scheme as written, lower-cased (``hf``, ``s3``, ``gs``,
            ``r2``, ``azure``, ``cw``, ``https``, ``file``).
        kind: the source kind (``hf``, ``s3``, ``gcs``, ``r2``, ``azure``, ``cw``,
            ``https``, ``local``).
        repo_id: ``owner/repo`` for Hugging Face, else None.
        revision: branch, tag or commit for Hugging Face (default ``main``), else None.
        bucket: bucket name for s3, gcs, r2 and cw, the container for azure, else None.
        account_id: Cloudflare account id for r2, storage account for azure, else None.
        prefix: key prefix inside the bucket with no leading or trailing ``/``;
            ``""`` means the whole bucket (empty for hf, https and local).
        path: absolute, normalized directory for local sources, else None.
        url: the URL of an ``https://`` source (one file, or a folder ending in
            ``/`` whose files ``allow_patterns`` name), else None.
    """

    scheme: str
    kind: SourceKind
    repo_id: str | None = None
    revision: str | None = None
    bucket: str | None = None
    account_id: str | None = None
    prefix: str = ""
    path: str | None = None
    url: str | None = None

    @property
    def uri(self) -> str:
        """The canonical URI: explicit HF revision, no trailing ``/``.

        >>> parse_source("hf://Qwen/Qwen3-8B").uri
        'hf://Qwen/Qwen3-8B@main'
        """
        if self.kind == "hf":
            return f"hf://{self.repo_id}@{self.revision}"
        if self.kind == "local":
            return f"file://{self.path}"
        if self.kind == "https":
            return f"{self.url}"
        host = f"{self.bucket}"
        if self.kind == "r2":
            host = f"{self.account_id}.{self.bucket}"
        elif self.kind == "azure":
            host = f"{self.account_id}/{self.bucket}"
        return f"{self.scheme}://{host}" + (f"/{self.prefix}" if self.prefix else "")


# Splits what follows ``scheme://``; None when it does not fit the scheme's form.
_SourceParser = Callable[[str], ParsedSource | None]


def parse_source(text: str, *, field: str | None = None) -> ParsedSource:
    """Validate a source URI and split it into its parts.

    Accepted forms: ``hf://owner/repo[@revision]`` (revision defaults to
    ``main``), ``s3://bucket[/prefix]``, ``gs://bucket[/prefix]``,
    ``r2://account_id.bucket[/prefix]``, ``azure://account/container[/prefix]``,
    ``cw://bucket[/prefix]``, ``https://host/path`` and ``file:///absolute/dir``.

    Args:
        text: the URI as written.
        field: the field path to start error messages with, e.g. ``weights[0].source``.

    Returns:
        The parsed source.

    Raises:
        ConfigError: the scheme is missing, unknown or ``bt://`` (Baseten
            Training, which only exists inside Baseten); a bucket URI carries an
            ``@`` (``@revision`` is for ``hf://`` only, as in Truss); or the rest
            of the URI does not fit the scheme's form.

    >>> src = parse_source("r2://acct.my-bucket/a/b/")
    >>> src.kind, src.account_id, src.bucket, src.prefix
    ('r2', 'acct', 'my-bucket', 'a/b')
    """
    if not isinstance(text, str):
        raise ConfigError(
            f"must be a string URI, got {type_name(text)}; use e.g. hf://owner/repo",
            field=field,
        )
    scheme, rest = _split_scheme(text, field)
    row = _scheme_row(scheme, text, field)
    if row.at_sign == "refused" and "@" in rest:
        raise ConfigError(_no_revision_message(scheme, text, rest), field=field)
    if scheme == "file" and rest and not rest.startswith("/"):
        raise ConfigError(
            f"{text!r} has a relative path; use an absolute path with three slashes, "
            "e.g. file:///data/models/qwen",
            field=field,
        )
    parsed = row.parse(rest)
    if parsed is None:
        raise ConfigError(f"malformed {scheme}:// source {text!r}; use {row.form}", field=field)
    return parsed


def _split_scheme(text: str, field: str | None) -> tuple[str, str]:
    """``scheme://rest`` -> (lower-cased scheme, rest); a bare path or repo gets a hint."""
    match = _URI_RE.fullmatch(text)
    if match is not None:
        return match.group(1).lower(), match.group(2)
    hint = ""
    if _HF_REPO_RE.fullmatch(text):
        hint = f" (did you mean hf://{text}?)"
    elif text.startswith("/"):
        hint = f" (did you mean file://{text}?)"
    raise ConfigError(f"{text!r} has no scheme{hint}; use one of {_scheme_list()}", field=field)


def _scheme_row(scheme: str, text: str, field: str | None) -> _Scheme:
    """The row of a supported scheme; a refused or unknown one says what to write instead."""
    refusal = _REFUSED_SCHEMES.get(scheme)
    if refusal is not None:
        raise ConfigError(f"{text!r}: {refusal}", field=field)
    row = _SCHEMES.get(scheme)
    if row is None:
        advice = _SCHEME_HINTS.get(scheme)
        raise ConfigError(
            f"unknown scheme {scheme + '://'!r} in {text!r}"
            + (f"; {advice}" if advice else "")
            + f"; supported schemes: {_scheme_list()}",
            field=field,
        )
    return row


def _no_revision_message(scheme: str, text: str, rest: str) -> str:
    """Why a bucket URI may not carry ``@`` (Truss reads it as a revision, for hf:// only)."""
    suffix = "@" + rest.partition("@")[2]
    return (
        f"{text!r} has an @revision suffix ({suffix!r}), which only hf:// sources take; "
        f"{scheme}:// objects have no revisions, so remove it (to pin a version, put it in "
        "the prefix, e.g. .../v1)"
    )


def _scheme_list() -> str:
    return ", ".join(f"{s}://" for s in SUPPORTED_SCHEMES)


def _parse_hf(rest: str) -> ParsedSource | None:
    repo_id, at, revision = rest.partition("@")
    if not at:
        revision = DEFAULT_HF_REVISION
    if not _HF_REPO_RE.fullmatch(repo_id) or ".." in repo_id:
        return None
    if not _HF_REVISION_RE.fullmatch(revision) or ".." in revision:
        return None
    return ParsedSource(scheme="hf", kind="hf", repo_id=repo_id, revision=revision)


def _split_bucket(rest: str) -> tuple[str, str]:
    bucket, _, prefix = rest.partition("/")
    return bucket, prefix.strip("/")


def _parse_s3(rest: str) -> ParsedSource | None:
    bucket, prefix = _split_bucket(rest)
    if not _S3_BUCKET_RE.fullmatch(bucket):
        return None
    return ParsedSource(scheme="s3", kind="s3", bucket=bucket, prefix=prefix)


def _parse_gs(rest: str) -> ParsedSource | None:
    bucket, prefix = _split_bucket(rest)
    if not _GCS_BUCKET_RE.fullmatch(bucket):
        return None
    return ParsedSource(scheme="gs", kind="gcs", bucket=bucket, prefix=prefix)


def _parse_r2(rest: str) -> ParsedSource | None:
    host, prefix = _split_bucket(rest)
    account_id, dot, bucket = host.partition(".")
    if not dot or not _R2_ACCOUNT_RE.fullmatch(account_id) or not _R2_BUCKET_RE.fullmatch(bucket):
        return None
    return ParsedSource(scheme="r2", kind="r2", bucket=bucket, account_id=account_id, prefix=prefix)


def _parse_azure(rest: str) -> ParsedSource | None:
    account, _, path = rest.partition("/")
    container, prefix = _split_bucket(path)
    if not _AZURE_ACCOUNT_RE.fullmatch(account) or not _AZURE_CONTAINER_RE.fullmatch(container):
        return None
    if "--" in container:
        return None
    return ParsedSource(scheme="azure", kind="azure", account_id=account, bucket=container,
                        prefix=prefix)


def _parse_cw(rest: str) -> ParsedSource | None:
    bucket, prefix = _split_bucket(rest)
    if not _S3_BUCKET_RE.fullmatch(bucket):
        return None
    return ParsedSource(scheme="cw", kind="cw", bucket=bucket, prefix=prefix)


def _parse_https(rest: str) -> ParsedSource | None:
    host, slash, path = rest.partition("/")
    if not slash or not path or not _HTTPS_HOST_RE.fullmatch(host):
        return None
    if any(c in path for c in "?#") or any(c.isspace() for c in path):
        return None
    segments = path.split("/")
    if any(s in ("", ".", "..") for s in segments[:-1]) or segments[-1] in (".", ".."):
        return None
    return ParsedSource(scheme="https", kind="https", url=f"https://{host.lower()}/{path}")


def _parse_file(rest: str) -> ParsedSource | None:
    if not rest.startswith("/"):
        return None
    return ParsedSource(scheme="file", kind="local", path=normalize_abs(rest))


@dataclass(frozen=True, slots=True)
class _Scheme:
    """One supported URI scheme: a row of :data:`_SCHEMES`.

    Attributes:
        kind: the source kind, which names the ``bdn.backends`` module that reads it.
        parse: splits what follows ``scheme://``; None when it does not fit ``form``.
        form: the accepted form with an example, quoted by error messages.
        at_sign: what an ``@`` after ``scheme://`` means: ``revision`` (it starts an
            ``@revision`` suffix, Hugging Face only), ``refused`` (Truss allows
            ``@revision`` only for ``hf://``, so a bucket URI with ``@`` is refused
            rather than read as a key ending in ``@v1``), or ``literal`` (a plain
            character of a local path; ``file://`` is BDN's own scheme).
    """

    kind: SourceKind
    parse: _SourceParser
    form: str
    at_sign: AtSign


# Every supported scheme, in the order messages list them. A new scheme is one
# row here (and its parser); nothing else in this module names schemes.
_SCHEMES: Mapping[str, _Scheme] = {
    "hf": _Scheme(
        "hf",
        _parse_hf,
        "hf://owner/repo[@revision], e.g. hf://Qwen/Qwen3-8B@main "
        "(pick files or subfolders with allow_patterns)",
        "revision",
    ),
    "s3": _Scheme(
        "s3", _parse_s3, "s3://bucket[/prefix], e.g. s3://my-bucket/models/qwen", "refused"
    ),
    "gs": _Scheme(
        "gcs", _parse_gs, "gs://bucket[/prefix], e.g. gs://my-bucket/models/qwen", "refused"
    ),
    "r2": _Scheme(
        "r2",
        _parse_r2,
        "r2://account_id.bucket[/prefix], e.g. r2://0123abcd.my-bucket/models/qwen",
        "refused",
    ),
    "azure": _Scheme(
        "azure",
        _parse_azure,
        "azure://account/container[/prefix], e.g. azure://myaccount/weights/models/qwen",
        "refused",
    ),
    "cw": _Scheme(
        "cw", _parse_cw, "cw://bucket[/prefix], e.g. cw://my-bucket/models/qwen", "refused"
    ),
    "https": _Scheme(
        "https",
        _parse_https,
        "https://host[:port]/path/file (one file) or https://host/dir/ with allow_patterns "
        "naming its files, e.g. https://example.com/models/model.safetensors; no query "
        "string or user info (put a token in an auth secret)",
        "literal",
    ),
    "file": _Scheme(
        "local", _parse_file, "file:///absolute/dir, e.g. file:///data/models/qwen", "literal"
    ),
}

#: URI scheme -> source kind. The scheme is what users write; the kind names
#: the ``bdn.backends`` module that reads it.
SCHEME_KINDS: Mapping[str, SourceKind] = {name: row.kind for name, row in _SCHEMES.items()}
SUPPORTED_SCHEMES: tuple[str, ...] = tuple(_SCHEMES)


def normalize_abs(path: str) -> str:
    """Normalize an absolute POSIX path: no trailing ``/``, no ``.``/``..``, one leading ``/``."""
    # normpath keeps a leading "//" (POSIX leaves it implementation-defined); we do not.
    return "/" + posixpath.normpath(path).lstrip("/")


def source_from_cli(text: str, cwd: Path) -> str:
    """Turn a CLI ``SOURCE`` argument into a source URI.

    A plain path (``./my-model``, ``/data/m``) becomes ``file:///abs/path``,
    resolved against ``cwd`` and normalized but not following symlinks; a
    URI (anything with ``scheme://``) is returned unchanged, to be checked by
    :func:`parse_source`. The path is not percent-encoded: ``file://`` URIs in
    BDN carry the path literally.

    Args:
        text: the argument as typed.
        cwd: the directory relative paths are relative to (the caller's
            working directory, resolved once at the entry point).

    Raises:
        ConfigError: ``text`` is empty, or the path stays relative because
            ``cwd`` is relative.

    >>> source_from_cli("./my-model", Path("/home/me"))
    'file:///home/me/my-model'
    >>> source_from_cli("hf://Qwen/Qwen3-8B", Path("/home/me"))
    'hf://Qwen/Qwen3-8B'
    """
    if not text:
        raise ConfigError(
            "is empty; pass a directory or a URI such as hf://owner/repo", field="source"
        )
    if _URI_RE.fullmatch(text):
        return text
    path = cwd / text
    if not path.is_absolute():
        raise ConfigError(
            f"{text!r} is relative to {str(cwd)!r}, which is not absolute; "
            "pass an absolute path or an absolute working directory",
            field="source",
        )
    return "file://" + normalize_abs(path.as_posix())
