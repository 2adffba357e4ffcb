"""Where things are: the ``BDN_*`` environment, read once at an entry point.

The CLI and the Python API each build one :class:`Settings` from the
environment when they start and pass it down; nothing below reads
``os.environ`` (docs/DESIGN.md, "Conventions"). The store they name is opened by
:func:`bdn.backends.store_for`, and mirror options come from
:meth:`bdn.mirror.MirrorOptions.from_settings`. Flags override fields with
:func:`dataclasses.replace`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bdn.config.secrets import SecretResolver
from bdn.config.units import parse_size
from bdn.errors import ConfigError

DEFAULT_STORE_DIR = "~/.cache/bdn/store"
DEFAULT_CACHE_DIR = "~/.cache/bdn/node"


MAX_WORKERS = 256
"""Upper bound of an explicit data-plane worker count; more is a typo, not a machine."""


def parse_workers(text: str, *, field: str) -> int | None:
    """``"auto"`` (``None``) or a worker count from 1 to :data:`MAX_WORKERS`.

    >>> parse_workers("auto", field="--workers") is None
    True
    >>> parse_workers("4", field="--workers")
    4

    Raises:
        ConfigError: anything else, in one line naming ``field`` and the fix.
    """
    value = text.strip().lower()
    if value == "auto":
        return None
    try:
        count = int(value)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_WORKERS:
        raise ConfigError(
            f"{text!r} is not a worker count; use a whole number from 1 to {MAX_WORKERS} "
            "(1: the pull's own process only) or 'auto' (the CPUs this process may use)",
            field=field,
        )
    return count


@dataclass(frozen=True, slots=True)
class Settings:
    """Places and budgets shared by mirror and pull.

    Attributes:
        store_uri: the blob store (``BDN_STORE``; default ``file://~/.cache/bdn/store``).
        cache_dir: the node cache (``BDN_CACHE_DIR``; default ``~/.cache/bdn/node``).
        cache_max_bytes: the node cache's byte budget (``BDN_CACHE_MAX_BYTES``;
            ``None``: bounded by the disk only).
        secrets_dir: directory of secret files (``BDN_SECRETS_DIR``).
        agent: the node agent to use (``BDN_AGENT``, ``unix:///path.sock`` or
            ``http://host:port``); ``None`` means work in-process.
        endpoint_url: S3-compatible endpoint (``AWS_ENDPOINT_URL``).
        hf_endpoint: the Hugging Face Hub (``HF_ENDPOINT``; default https://huggingface.co).
        gcs_emulator_host: a GCS emulator (``STORAGE_EMULATOR_HOST``).
        r2_endpoint_url: R2 endpoint override (``BDN_R2_ENDPOINT_URL``).
        cw_endpoint_url: CoreWeave endpoint override (``BDN_CW_ENDPOINT_URL``).
        azure_endpoint_url: Azure Blob emulator base URL (``BDN_AZURE_ENDPOINT_URL``).
        azure_store_secret: the secret holding the account key of an
            ``azure://`` store (``BDN_AZURE_STORE_SECRET``).
        oidc_token_file: projected token for OIDC auth (``BDN_OIDC_TOKEN_FILE``).
        environ: the environment snapshot, for secrets given as ``BDN_SECRET_*``.
        trusted_stores: identities (:func:`store_identity`) of the stores whose
            manifests this node takes at their word for blobs it caches
            (``BDN_TRUSTED_STORES``, comma-separated URIs; unset: the store
            ``BDN_STORE`` names). A pull from any other store (``--store``)
            proves every blob it caches (SHA-256). ``None``: the store of
            ``store_uri`` (for settings built without :meth:`from_env`).
        workers: processes of a pull's data plane (``BDN_WORKERS``: a count, or
            ``auto``); ``None``: automatic, the CPUs the process may use
            (``bdn.transfer.cores``). ``bdn pull --workers`` overrides it.
    """

    store_uri: str
    cache_dir: Path
    cache_max_bytes: int | None = None
    secrets_dir: Path | None = None
    agent: str | None = None
    endpoint_url: str | None = None
    hf_endpoint: str | None = None
    gcs_emulator_host: str | None = None
    r2_endpoint_url: str | None = None
    cw_endpoint_url: str | None = None
    azure_endpoint_url: str | None = None
    azure_store_secret: str | None = None
    oidc_token_file: Path | None = None
    environ: Mapping[str, str] | None = None
    trusted_stores: frozenset[str] | None = None
    workers: int | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read the ``BDN_*`` variables (and ``AWS_ENDPOINT_URL``) once."""
        store = environ.get("BDN_STORE") or "file://" + str(Path(DEFAULT_STORE_DIR).expanduser())
        cache = Path(environ.get("BDN_CACHE_DIR") or DEFAULT_CACHE_DIR).expanduser()
        budget = environ.get("BDN_CACHE_MAX_BYTES")
        secrets = environ.get("BDN_SECRETS_DIR")
        return cls(
            store_uri=store,
            cache_dir=cache,
            cache_max_bytes=parse_size(budget, field="BDN_CACHE_MAX_BYTES") if budget else None,
            secrets_dir=Path(secrets).expanduser() if secrets else None,
            agent=environ.get("BDN_AGENT") or None,
            endpoint_url=environ.get("AWS_ENDPOINT_URL") or None,
            hf_endpoint=environ.get("HF_ENDPOINT") or None,
            gcs_emulator_host=environ.get("STORAGE_EMULATOR_HOST") or None,
            r2_endpoint_url=environ.get("BDN_R2_ENDPOINT_URL") or None,
            cw_endpoint_url=environ.get("BDN_CW_ENDPOINT_URL") or None,
            azure_endpoint_url=environ.get("BDN_AZURE_ENDPOINT_URL") or None,
            azure_store_secret=environ.get("BDN_AZURE_STORE_SECRET") or None,
            oidc_token_file=Path(token) if (token := environ.get("BDN_OIDC_TOKEN_FILE")) else None,
            environ=dict(environ),
            trusted_stores=_trusted_stores(environ.get("BDN_TRUSTED_STORES"), store),
            workers=parse_workers(environ.get("BDN_WORKERS") or "auto", field="BDN_WORKERS"),
        )

    def secrets(self) -> SecretResolver:
        """The resolver for named secrets (directory first, then ``BDN_SECRET_*``)."""
        return SecretResolver(self.secrets_dir, self.environ or {})


def store_identity(uri: str) -> str:
    """The name a store is trusted by: its URI in one spelling.

    A plain path and ``file://`` become ``file://<normalized absolute path>``;
    other schemes keep host and prefix, lower-case scheme and host, no user
    info, query or trailing ``/``. So ``BDN_TRUSTED_STORES`` entries match
    the URI a store reports however either was written.
    """
    uri = uri.strip()
    if "://" not in uri or uri.startswith("file://"):
        path = uri.removeprefix("file://")
        return "file://" + os.path.normpath(os.path.abspath(os.path.expanduser(path)))
    parts = urlsplit(uri)
    host = parts.netloc.rpartition("@")[2].lower()
    return f"{parts.scheme.lower()}://{host}{parts.path.rstrip('/')}"


def _trusted_stores(listed: str | None, store: str) -> frozenset[str]:
    """``BDN_TRUSTED_STORES`` parsed, or the store ``BDN_STORE`` names when it is unset."""
    uris = [u.strip() for u in (listed or "").split(",") if u.strip()]
    for uri in uris:
        if "://" not in uri and not os.path.isabs(os.path.expanduser(uri)):
            raise ConfigError(
                f"entry {uri!r} is a relative path; write store URIs "
                "(file:///abs/path, s3://bucket/prefix, ...) separated by commas",
                field="BDN_TRUSTED_STORES",
            )
    return frozenset(store_identity(u) for u in (uris or [store]))
