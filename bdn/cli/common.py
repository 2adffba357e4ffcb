"""Pieces every ``bdn`` sub-command shares: flags, settings, env twins, running async work.

This module is imported while the parser is built, so it imports nothing heavy:
:class:`~bdn.config.settings.Settings` and the size parser are loaded when a
command runs, not when ``bdn --help`` prints.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from bdn.errors import ConfigError

if TYPE_CHECKING:
    from bdn.config.settings import Settings
    from bdn.config.weights import WeightsEntry

    # What ``add_subparsers`` returns; every command group's ``register`` takes one.
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

T = TypeVar("T")
D = TypeVar("D", bound=int | None)

Flag = tuple[str | tuple[str, ...], dict[str, Any]]
"""One row of a flag table: the flag's name (or names) and the keyword arguments
of its ``add_argument``. Commands with many flags keep them as such tables, so
the flags read as a list, next to their environment twins."""


def add_flags(p: argparse._ActionsContainer, flags: Iterable[Flag]) -> None:
    """Add every flag of a table to ``p`` (a parser, or a group of one)."""
    for names, kwargs in flags:
        p.add_argument(*((names,) if isinstance(names, str) else names), **kwargs)


def add_store_flags(p: argparse.ArgumentParser) -> None:
    """``--store`` and ``--endpoint-url``: which blob store a command reads or writes."""
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
    """``--cache`` and ``--max-cache-bytes``: the node cache a command uses."""
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
    import dataclasses

    from bdn.config.settings import Settings
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


def source_entry(args: argparse.Namespace, source: str, *, where: str) -> WeightsEntry:
    """The weights entry of a SOURCE given on the command line with ``--allow``,
    ``--ignore`` and ``--auth-secret`` (``bdn mirror`` and ``bdn pull``)."""
    from bdn import api

    auth = (
        {"auth_method": "CUSTOM_SECRET", "auth_secret_name": args.auth_secret}
        if args.auth_secret
        else None
    )
    return api.weights_entry(
        source,
        allow_patterns=args.allow or None,
        ignore_patterns=args.ignore or None,
        auth=auth,
        where=where,
    )


class FlagOrEnv:
    """Values of a daemon's flags with environment twins, for ``bdn agent`` and
    ``bdn mirror-server``: a flag wins over its variable, which wins over the default.

    ``twins`` maps a flag's dest to its variable; an empty variable counts as unset.
    Malformed values raise :class:`ConfigError` naming the flag. (A plain class:
    the dataclasses module would add ~10 ms to every ``bdn --help``.)
    """

    __slots__ = ("args", "twins")

    def __init__(self, args: argparse.Namespace, twins: Mapping[str, str]) -> None:
        self.args = args
        self.twins = twins

    def text(self, dest: str) -> str | None:
        """The flag's value as text, else its twin's, else None."""
        value = getattr(self.args, dest, None)
        if value is not None:
            return str(value)
        environ: Mapping[str, str] = self.args.environ
        return environ.get(self.twins[dest]) or None

    def integer(self, dest: str, default: int) -> int:
        """A whole number, or ``default`` when neither flag nor twin is set."""
        text = self.text(dest)
        return parse_int(text, _flag(dest)) if text else default

    def seconds(self, dest: str, default: float) -> float:
        """A number of seconds, or ``default`` when neither flag nor twin is set."""
        text = self.text(dest)
        return parse_seconds(text, _flag(dest)) if text else default

    def size(self, dest: str, default: D) -> int | D:
        """A byte size such as ``8GiB``, or ``default`` when neither flag nor twin is set."""
        from bdn.config.units import parse_size

        text = self.text(dest)
        return parse_size(text, field=_flag(dest)) if text else default


class DaemonCommand:
    """The ``func`` of a daemon's sub-command (``bdn agent``, ``csi``, ``serve``,
    ``mirror-server``): build the config from the flags, switch to one-JSON-object-
    per-line logs, then ``run(config)`` of ``module`` until SIGTERM.

    The config is checked before logging changes, so a bad flag reads as a plain
    error. ``module`` is imported only when the command runs, so ``bdn --help``
    loads no aiohttp or gRPC. (A plain class, as :class:`FlagOrEnv`.)
    """

    __slots__ = ("config", "module")

    def __init__(self, module: str, config: Callable[[argparse.Namespace], object]) -> None:
        self.module = module
        self.config = config

    def __call__(self, args: argparse.Namespace) -> int:
        import importlib

        from bdn.daemon.jsonlog import setup_json_logging

        run: Callable[[object], int] = importlib.import_module(self.module).run
        config = self.config(args)
        setup_json_logging(verbose=bool(getattr(args, "verbose", False)))
        return run(config)


def parse_int(text: str, field: str) -> int:
    """``text`` as a whole number; ConfigError naming ``field`` otherwise."""
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{text!r} is not a whole number", field=field) from None


def parse_seconds(text: str, field: str) -> float:
    """``text`` as a number of seconds; ConfigError naming ``field`` otherwise."""
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{text!r} is not a number of seconds", field=field) from None


def read_token(path_text: str, purpose: str) -> str:
    """The bearer token in the file ``--token-file`` (or ``BDN_TOKEN_FILE``) names."""
    from bdn.daemon.tokens import read_token_file

    return read_token_file(Path(path_text).expanduser(), field="--token-file", purpose=purpose)


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")
