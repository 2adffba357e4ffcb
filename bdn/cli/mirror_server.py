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
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from bdn.cli.common import add_store_flags, settings
from bdn.config.units import parse_size
from bdn.errors import ConfigError

if TYPE_CHECKING:
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


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    p.add_argument("--listen", metavar="HOST:PORT",
                   help="address to serve on; port 0 picks a free one (env BDN_MIRROR_LISTEN; "
                   "default 127.0.0.1:7080)")
    p.add_argument("--token-file", metavar="FILE",
                   help="file holding the bearer token clients must send (env BDN_TOKEN_FILE); "
                   "required unless --insecure-no-token on a loopback address")
    p.add_argument("--insecure-no-token", action="store_true",
                   help="serve without a token; refused unless --listen is a loopback address")
    p.add_argument("--state-dir", metavar="DIR",
                   help="where job records live (env BDN_MIRROR_STATE_DIR; default "
                   f"{DEFAULT_STATE_DIR})")
    p.add_argument("--max-jobs", metavar="N",
                   help="jobs running at once (env BDN_MIRROR_MAX_JOBS; default 2)")
    p.add_argument("--max-bytes-in-flight", metavar="SIZE",
                   help="planned transfer bytes of running jobs; a job waits while it would "
                   "exceed this (env BDN_MIRROR_MAX_BYTES_IN_FLIGHT; default 64GiB)")
    p.add_argument("--drain-timeout", metavar="SECONDS",
                   help="on SIGTERM, wait this long for running jobs; those still running "
                   "resume at the next start (env BDN_MIRROR_DRAIN_TIMEOUT; default 30)")
    p.set_defaults(func=cmd_mirror_server)


def cmd_mirror_server(args: argparse.Namespace) -> int:
    from bdn.daemon.jsonlog import setup_json_logging
    from bdn.mirror.service import run

    config = server_config(args)
    setup_json_logging(verbose=bool(getattr(args, "verbose", False)))
    return run(config)


def server_config(args: argparse.Namespace) -> MirrorServiceConfig:
    """The service's configuration from flags, then ``args.environ``, then defaults.

    Raises:
        ConfigError: a malformed value, an unreadable token file, or no token
            without both a loopback ``--listen`` and ``--insecure-no-token``.
    """
    from bdn.agent.config import is_loopback, parse_hostport
    from bdn.daemon.tokens import read_token_file
    from bdn.mirror.jobs import DEFAULT_JOB_LIMITS, JobLimits
    from bdn.mirror.service import DEFAULT_MIRROR_LISTEN, MirrorServiceConfig

    env: Mapping[str, str] = args.environ

    def pick(dest: str) -> str | None:
        value = getattr(args, dest, None)
        if value is not None:
            return str(value)
        return env.get(ENV_TWINS[dest]) or None

    listen_text = (pick("listen") or DEFAULT_MIRROR_LISTEN).strip()
    if listen_text.endswith(":0"):
        # Port 0: a free port, named in the "started" log line (tests, benches). The
        # agent's parser refuses it, so the host is parsed with a stand-in port.
        listen = (parse_hostport(listen_text[:-1] + "1", field="--listen")[0], 0)
    else:
        listen = parse_hostport(listen_text, field="--listen")
    token_file = pick("token_file")
    insecure = bool(getattr(args, "insecure_no_token", False))
    token = None
    if token_file:
        if insecure:
            raise ConfigError("give --token-file or --insecure-no-token, not both",
                              field="--insecure-no-token")
        token = read_token_file(Path(token_file).expanduser(), field="--token-file",
                                purpose="the mirror service's bearer token")
    elif not insecure:
        raise ConfigError("no token file; pass --token-file FILE (env BDN_TOKEN_FILE) so "
                          "clients must authenticate, or --insecure-no-token on a loopback "
                          "--listen for local use", field="--token-file")
    elif not is_loopback(listen[0]):
        raise ConfigError(f"{listen[0]} is not a loopback address; --insecure-no-token is "
                          "only allowed on loopback, pass --token-file FILE instead",
                          field="--insecure-no-token")
    state_dir = Path(pick("state_dir") or DEFAULT_STATE_DIR).expanduser().absolute()
    max_bytes = pick("max_bytes_in_flight")
    limits = JobLimits(
        max_jobs=(_int(pick("max_jobs"), "--max-jobs") if pick("max_jobs")
                  else DEFAULT_JOB_LIMITS.max_jobs),
        max_bytes_in_flight=(parse_size(max_bytes, field="--max-bytes-in-flight")
                             if max_bytes else DEFAULT_JOB_LIMITS.max_bytes_in_flight),
    )
    drain = pick("drain_timeout")
    return MirrorServiceConfig(
        settings=settings(args),
        listen=listen,
        state_dir=state_dir,
        token=token,
        limits=limits,
        drain_timeout=_float(drain, "--drain-timeout") if drain else 30.0,
    )


def _int(text: str | None, field: str) -> int:
    try:
        return int(text or "")
    except ValueError:
        raise ConfigError(f"{text!r} is not a whole number", field=field) from None


def _float(text: str, field: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{text!r} is not a number of seconds", field=field) from None
