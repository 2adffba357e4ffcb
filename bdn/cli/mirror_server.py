"""``bdn mirror-server``: run the mirror service (flags and ``BDN_*`` twins, read once here).

Every flag but ``--insecure-no-token`` has an environment twin, for
Deployments: a flag wins over its variable, which wins over the default.
``--insecure-no-token`` has no twin on purpose: serving without a token must
be asked for on the command line, and only on loopback. The service itself
lives in :mod:`bdn.mirror.service` (imported only when the command runs, so
``bdn --help`` stays fast).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from bdn.cli.common import (
    Flag,
    FlagOrEnv,
    add_flags,
    add_store_flags,
    read_token,
    run_daemon,
    settings,
)
from bdn.errors import ConfigError

if TYPE_CHECKING:
    from bdn.cli.common import Subparsers
    from bdn.mirror.service import MirrorServiceConfig

DEFAULT_STATE_DIR = "~/.cache/bdn/mirror-server"

# flag dest -> environment twin (the store flags use Settings' own).
ENV_TWINS = {
    "listen": "BDN_MIRROR_LISTEN",
    "token_file": "BDN_TOKEN_FILE",
    "state_dir": "BDN_MIRROR_STATE_DIR",
    "max_jobs": "BDN_MIRROR_MAX_JOBS",
    "max_bytes_in_flight": "BDN_MIRROR_MAX_BYTES_IN_FLIGHT",
    "drain_timeout": "BDN_MIRROR_DRAIN_TIMEOUT",
}


_FLAGS: tuple[Flag, ...] = (
    ("--listen", {"metavar": "HOST:PORT",
                  "help": "address to serve on; port 0 picks a free one (env BDN_MIRROR_LISTEN; "
                  "default 127.0.0.1:7080)"}),
    ("--token-file", {"metavar": "FILE",
                      "help": "file holding the bearer token clients must send (env "
                      "BDN_TOKEN_FILE); required unless --insecure-no-token on a loopback "
                      "address"}),
    ("--insecure-no-token", {"action": "store_true",
                             "help": "serve without a token; refused unless --listen is a "
                             "loopback address"}),
    ("--state-dir", {"metavar": "DIR",
                     "help": "where job records live (env BDN_MIRROR_STATE_DIR; default "
                     f"{DEFAULT_STATE_DIR})"}),
    ("--max-jobs", {"metavar": "N",
                    "help": "jobs running at once (env BDN_MIRROR_MAX_JOBS; default 2)"}),
    ("--max-bytes-in-flight", {"metavar": "SIZE",
                               "help": "planned transfer bytes of running jobs; a job waits "
                               "while it would exceed this (env BDN_MIRROR_MAX_BYTES_IN_FLIGHT; "
                               "default 64GiB)"}),
    ("--drain-timeout", {"metavar": "SECONDS",
                         "help": "on SIGTERM, wait this long for running jobs; those still "
                         "running resume at the next start (env BDN_MIRROR_DRAIN_TIMEOUT; "
                         "default 30)"}),
)


def register(sub: Subparsers) -> None:
    """Add ``mirror-server`` to the ``bdn`` parser."""
    p = sub.add_parser(
        "mirror-server",
        help="run the mirror service: weights lists submitted over HTTP, mirrored in the "
        "background",
        description="Run the mirror service. POST /v1/mirrors takes a Truss weights: list "
        "and answers at once; the mirror runs as a background job, one per config, "
        "persisted in --state-dir and resumed after a restart. SIGTERM drains and exits 0.",
    )
    add_store_flags(p)
    add_flags(p, _FLAGS)
    p.set_defaults(func=cmd_mirror_server)


def cmd_mirror_server(args: argparse.Namespace) -> int:
    """Run the mirror service until SIGTERM; 0 after a clean drain."""
    from bdn.mirror.service import run

    return run_daemon(args, server_config(args), run)


def server_config(args: argparse.Namespace) -> MirrorServiceConfig:
    """The service's configuration from flags, then ``args.environ``, then defaults.

    Raises:
        ConfigError: a malformed value, an unreadable token file, or no token
            without both a loopback ``--listen`` and ``--insecure-no-token``.
    """
    from bdn.mirror.service import DEFAULT_JOB_LIMITS, JobLimits, MirrorServiceConfig

    flags = FlagOrEnv(args, ENV_TWINS)
    listen = _listen(flags)
    token = _token(flags, listen[0], insecure=bool(getattr(args, "insecure_no_token", False)))
    state_dir = Path(flags.text("state_dir") or DEFAULT_STATE_DIR).expanduser().absolute()
    limits = JobLimits(
        max_jobs=flags.integer("max_jobs", DEFAULT_JOB_LIMITS.max_jobs),
        max_bytes_in_flight=flags.size(
            "max_bytes_in_flight", DEFAULT_JOB_LIMITS.max_bytes_in_flight
        ),
    )
    return MirrorServiceConfig(
        settings=settings(args),
        listen=listen,
        state_dir=state_dir,
        token=token,
        limits=limits,
        drain_timeout=flags.seconds("drain_timeout", 30.0),
    )


def _listen(flags: FlagOrEnv) -> tuple[str, int]:
    """``--listen`` parsed; port 0 asks for a free port."""
    from bdn.daemon.address import parse_hostport
    from bdn.mirror.service import DEFAULT_MIRROR_LISTEN

    listen_text = (flags.text("listen") or DEFAULT_MIRROR_LISTEN).strip()
    if listen_text.endswith(":0"):
        # Port 0: a free port, named in the "started" log line (tests, benches). The
        # agent's parser refuses it, so the host is parsed with a stand-in port.
        return (parse_hostport(listen_text[:-1] + "1", field="--listen")[0], 0)
    return parse_hostport(listen_text, field="--listen")


def _token(flags: FlagOrEnv, host: str, *, insecure: bool) -> str | None:
    """The bearer token clients must send; None only with --insecure-no-token on loopback."""
    from bdn.daemon.address import is_loopback

    token_file = flags.text("token_file")
    if token_file:
        if insecure:
            raise ConfigError("give --token-file or --insecure-no-token, not both",
                              field="--insecure-no-token")
        return read_token(token_file, "the mirror service's bearer token")
    if not insecure:
        raise ConfigError("no token file; pass --token-file FILE (env BDN_TOKEN_FILE) so "
                          "clients must authenticate, or --insecure-no-token on a loopback "
                          "--listen for local use", field="--token-file")
    if not is_loopback(host):
        raise ConfigError(f"{host} is not a loopback address; --insecure-no-token is "
                          "only allowed on loopback, pass --token-file FILE instead",
                          field="--insecure-no-token")
    return None
