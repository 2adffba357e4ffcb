"""Where things are: the ``BDN_*`` environment, read once at an entry point.

The CLI and the Python API each build one :class:`Settings` from the
environment when they start and pass it down; nothing below reads
``os.environ`` (docs/DESIGN.md, "Conventions"). The store they name is opened by
:func:`bdn.backends.store_for`, and mirror options come from
:meth:`bdn.mirror.MirrorOptions.from_settings`. Flags override fields with
:func:`dataclasses.replace`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bdn.config.secrets import SecretResolver
from bdn.config.units import parse_size

DEFAULT_STORE_DIR = "~/.cache/bdn/store"
DEFAULT_CACHE_DIR = "~/.cache/bdn/node"


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
        oidc_token_file: projected token for OIDC auth (``BDN_OIDC_TOKEN_FILE``).
        environ: the environment snapshot, for secrets given as ``BDN_SECRET_*``.
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
    oidc_token_file: Path | None = None
    environ: Mapping[str, str] | None = None

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
            oidc_token_file=Path(token) if (token := environ.get("BDN_OIDC_TOKEN_FILE")) else None,
            environ=dict(environ),
        )

    def secrets(self) -> SecretResolver:
        """The resolver for named secrets (directory first, then ``BDN_SECRET_*``)."""
        return SecretResolver(self.secrets_dir, self.environ or {})
