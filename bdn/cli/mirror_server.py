"""``bdn mirror-server``: run the mirror service (flags and ``BDN_*`` twins, read once here).

Every flag but ``--insecure-no-token`` has an environment twin, for
Deployments: a flag wins over its variable, which wins over the default.
``--allow-source`` is repeatable; its twin holds the rules separated by commas
or whitespace, and ``--allow-sources-file`` adds one rule per line (``#``
comments), e.g. from a ConfigMap. With no rule at all, every submission is
refused: the service reads with its own files and credentials, so what it may
read is the operator's decision (:mod:`bdn.mirror.service.sources`).
``--insecure-no-token`` has no twin on purpose: serving without a token must
be asked for on the command line, and only on loopback. The service itself
lives in :mod:`bdn.mirror.service` (imported only when the command runs, so
``bdn --help`` stays fast).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING

from bdn.cli.common import (
    DaemonCommand,
    Flag,
    FlagOrEnv,
    add_flags,
    add_store_flags,
    read_token,
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
    "allow_source": "BDN_MIRROR_ALLOW_SOURCES",
    "allow_sources_file": "BDN_MIRROR_ALLOW_SOURCES_FILE",
    "job_retention": "BDN_MIRROR_JOB_RETENTION",
}

DEFAULT_JOB_RETENTION = "7d"

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_UNIT_SECONDS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


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
    ("--allow-source", {"metavar": "PREFIX", "action": "append",
                        "help": "a source prefix submissions may read: hf://ORG/, "
                        "hf://ORG/REPO, s3://BUCKET/PREFIX/, gs://..., r2://ACCOUNT.BUCKET/..., "
                        "file:///DIR; repeatable (env BDN_MIRROR_ALLOW_SOURCES, comma-"
                        "separated). Without any, every submission is refused"}),
    ("--allow-sources-file", {"metavar": "FILE",
                              "help": "more --allow-source rules, one per line, # comments "
                              "(env BDN_MIRROR_ALLOW_SOURCES_FILE)"}),
    ("--job-retention", {"metavar": "DURATION",
                         "help": "forget finished jobs this long after they end, e.g. 7d, "
                         "12h, 3600 (env BDN_MIRROR_JOB_RETENTION; default 7d)"}),
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
    p.set_defaults(func=DaemonCommand("bdn.mirror.service", server_config))


def server_config(args: argparse.Namespace) -> MirrorServiceConfig:
    """The service's configuration from flags, then ``args.environ``, then defaults.

    Raises:
        ConfigError: a malformed value, an unreadable token file, or no token
            without both a loopback ``--listen`` and ``--insecure-no-token``.
    """
    from bdn.mirror.service import (
        DEFAULT_JOB_LIMITS,
        JobLimits,
        MirrorServiceConfig,
        SourcePolicy,
    )

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
        sources=SourcePolicy.parse(_allow_rules(args, flags)),
        job_retention=parse_duration(flags.text("job_retention") or DEFAULT_JOB_RETENTION,
                                     "--job-retention"),
    )


def _allow_rules(args: argparse.Namespace, flags: FlagOrEnv) -> list[str]:
    """The ``--allow-source`` rules (else their twin's), plus ``--allow-sources-file``'s."""
    given = getattr(args, "allow_source", None)
    rules = list(given) if given else (args.environ.get(ENV_TWINS["allow_source"]) or
                                       "").replace(",", " ").split()
    path = flags.text("allow_sources_file")
    if path:
        try:
            text = Path(path).expanduser().read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}; "
                              "pass a readable file of rules, one per line",
                              field="--allow-sources-file") from err
        rules += [line.split("#", 1)[0].strip() for line in text.splitlines()]
    return rules


def parse_duration(text: str, field: str) -> float:
    """``7d``, ``12h``, ``30m``, ``45s`` or plain seconds, as seconds (positive)."""
    m = _DURATION.fullmatch(text.strip().lower())
    seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)] if m else 0.0
    if seconds <= 0:
        raise ConfigError(f"{text!r} is not a positive duration; write e.g. 7d, 12h, 30m or "
                          "a number of seconds", field=field)
    return seconds


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
