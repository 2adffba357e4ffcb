"""Pieces every ``bdn`` sub-command shares: store flags, settings, running async work."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from bdn.backends.base import BlobStore
from bdn.config.settings import Settings

T = TypeVar("T")


def add_store_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        metavar="URI",
        help="blob store: file:///dir, s3://bucket/prefix or http(s)://host/prefix "
        "(env BDN_STORE; default file://~/.cache/bdn/store)",
    )
    p.add_argument(
        "--endpoint-url",
        metavar="URL",
        help="S3-compatible endpoint for s3:// stores and sources (env AWS_ENDPOINT_URL)",
    )


def add_cache_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache",
        metavar="DIR",
        help="node cache directory (env BDN_CACHE_DIR; default ~/.cache/bdn/node)",
    )
    p.add_argument(
        "--max-cache-bytes",
        metavar="SIZE",
        help="node cache byte budget, e.g. 500G (env BDN_CACHE_MAX_BYTES)",
    )


def settings(args: argparse.Namespace) -> Settings:
    """The environment snapshot of ``main`` with this command's flags applied."""
    from bdn.config.units import parse_size

    base = Settings.from_env(args.environ)
    changes: dict[str, object] = {}
    if getattr(args, "store", None):
        changes["store_uri"] = args.store
    if getattr(args, "endpoint_url", None):
        changes["endpoint_url"] = args.endpoint_url
    if getattr(args, "cache", None):
        changes["cache_dir"] = Path(args.cache).expanduser()
    if getattr(args, "max_cache_bytes", None):
        changes["cache_max_bytes"] = parse_size(args.max_cache_bytes, field="--max-cache-bytes")
    if getattr(args, "agent", None):
        changes["agent"] = args.agent
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def with_store(args: argparse.Namespace, use: Callable[[BlobStore], Awaitable[T]]) -> T:
    """Open the store the flags and environment name, run ``use`` on it, close it."""
    conf = settings(args)

    async def go() -> T:
        store = conf.open_store()
        try:
            return await use(store)
        finally:
            await store.close()

    return asyncio.run(go())
