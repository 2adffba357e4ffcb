"""``bdn serve``: the Hugging Face Hub-compatible read endpoint on one machine, no agent.

Model code pulls mirrored weights through it unmodified, with
``HF_ENDPOINT=http://HOST:PORT/hf``. The endpoint lives in :mod:`bdn.hub`
(imported only when the command runs, so ``bdn --help`` stays fast).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from bdn.cli.common import (
    DaemonCommand,
    FlagOrEnv,
    add_cache_flags,
    add_store_flags,
    settings,
)

if TYPE_CHECKING:
    from bdn.cli.common import Subparsers
    from bdn.hub.serve import ServeConfig, UpstreamConfig

UPSTREAM_ENV_TWINS = {"hf_upstream": "BDN_HF_UPSTREAM",
                      "hf_upstream_token_secret": "BDN_HF_UPSTREAM_TOKEN_SECRET"}
"""Environment twins of the pull-through flags (``bdn serve`` and ``bdn agent``)."""
ENV_TWINS = {"listen": "BDN_SERVE_LISTEN", **UPSTREAM_ENV_TWINS}


def register(sub: Subparsers) -> None:
    """Add ``serve`` to the ``bdn`` parser."""
    p = sub.add_parser(
        "serve",
        help="serve mirrored hf:// models over the Hub's download API (HF_ENDPOINT=.../hf)",
        description="Answer the part of the Hugging Face Hub API that from_pretrained, "
        "snapshot_download and hf_hub_download use, from the store's mirrors, through an "
        "in-process node cache. Point clients at it with HF_ENDPOINT=http://HOST:PORT/hf. "
        "Reads only: models must be mirrored first (bdn mirror hf://ORG/REPO@REV).",
    )
    add_store_flags(p)
    add_cache_flags(p)
    p.add_argument("--listen", metavar="HOST:PORT",
                   help="address to serve on (env BDN_SERVE_LISTEN; default 127.0.0.1:8080)")
    add_upstream_flags(p)
    p.set_defaults(func=DaemonCommand("bdn.hub.serve", serve_config))


def add_upstream_flags(p: argparse.ArgumentParser) -> None:
    """``--hf-upstream [URL]`` and ``--hf-upstream-token-secret NAME`` (serve and agent)."""
    p.add_argument("--hf-upstream", nargs="?", const="https://huggingface.co", metavar="URL",
                   help="pull-through: a request for a public repo or revision not mirrored "
                   "yet mirrors it from this Hub (default https://huggingface.co) into the "
                   "store, once across every endpoint on the store, then serves it; the "
                   "store must be writable (env BDN_HF_UPSTREAM; default: off)")
    p.add_argument("--hf-upstream-token-secret", metavar="NAME",
                   help="with --hf-upstream: secret holding a Hub token; only callers that "
                   "send this token may pull private or gated repos through, and only they "
                   "are served them (env BDN_HF_UPSTREAM_TOKEN_SECRET)")


def upstream_config(args: argparse.Namespace) -> UpstreamConfig | None:
    """Pull-through settings from ``--hf-upstream`` and its token secret; None when off.

    Raises:
        ConfigError: a malformed URL, or a token secret without ``--hf-upstream``.
    """
    from bdn.errors import ConfigError
    from bdn.hub.serve import UpstreamConfig

    flags = FlagOrEnv(args, UPSTREAM_ENV_TWINS)
    url, secret = flags.text("hf_upstream"), flags.text("hf_upstream_token_secret")
    if not url:
        if secret:
            raise ConfigError("--hf-upstream-token-secret: is set but --hf-upstream is not; "
                              "add --hf-upstream [URL] or drop the secret")
        return None
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--hf-upstream: {url!r} is not an http(s) URL; use e.g. "
                          "https://huggingface.co")
    return UpstreamConfig(endpoint=url.rstrip("/"), token_secret=secret or None)


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """The endpoint's configuration from flags, then ``args.environ``, then defaults.

    Raises:
        ConfigError: a malformed ``--listen``.
    """
    from bdn.daemon.address import parse_hostport
    from bdn.hub.serve import DEFAULT_SERVE_LISTEN, ServeConfig

    flags = FlagOrEnv(args, ENV_TWINS)
    listen = parse_hostport(flags.text("listen") or DEFAULT_SERVE_LISTEN, field="--listen")
    return ServeConfig(settings=settings(args), listen=listen,
                       upstream=upstream_config(args))
