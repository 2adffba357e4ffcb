"""``bdn agent``: run the node agent (flags and ``BDN_*`` twins, read once here).

Every flag has an environment twin, for DaemonSets: a flag wins over its
variable, which wins over the default. The agent itself lives in the
``agent`` package (imported only when the command runs, so ``bdn --help``
stays fast).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bdn.cli.common import (
    DaemonCommand,
    Flag,
    FlagOrEnv,
    add_cache_flags,
    add_flags,
    add_store_flags,
    read_token,
    settings,
)
from bdn.cli.serve import add_upstream_flags, upstream_config
from bdn.errors import ConfigError

if TYPE_CHECKING:
    from bdn.agent.config import AgentConfig
    from bdn.cli.common import Subparsers

# flag dest -> environment twin (the cache and store flags use Settings' own).
ENV_TWINS = {
    "listen": "BDN_AGENT_LISTEN",
    "advertise": "BDN_AGENT_ADVERTISE",
    "socket": "BDN_AGENT_SOCKET",
    "peers": "BDN_PEERS",
    "peers_dns": "BDN_PEERS_DNS",
    "peer_port": "BDN_PEER_PORT",
    "token_file": "BDN_TOKEN_FILE",
    "ring_replicas": "BDN_RING_REPLICAS",
    "chunk_cache_bytes": "BDN_CHUNK_CACHE_BYTES",
    "background_fill_rate": "BDN_BACKGROUND_FILL_RATE",
    "trees_root": "BDN_AGENT_TREES_ROOT",
    "hf_listen": "BDN_AGENT_HF_LISTEN",
}

_PEER_FLAGS: tuple[Flag, ...] = (
    ("--peers", {"metavar": "HOST:PORT,...",
                 "help": "every agent of the ring, this one included or not (env BDN_PEERS)"}),
    ("--peers-dns", {"metavar": "NAME",
                     "help": "headless Service whose addresses are the agents, re-resolved "
                     "periodically (env BDN_PEERS_DNS)"}),
)
"""Mutually exclusive: a static list or a DNS name."""

_FLAGS_BEFORE_PEERS: tuple[Flag, ...] = (
    ("--listen", {"metavar": "HOST:PORT",
                  "help": "peer-facing address (env BDN_AGENT_LISTEN; default 127.0.0.1:7070); "
                  "a non-loopback address needs --token-file"}),
    ("--advertise", {"metavar": "HOST:PORT",
                     "help": "address peers reach this agent at, its name on the ring "
                     "(env BDN_AGENT_ADVERTISE; default: --listen)"}),
    ("--socket", {"metavar": "PATH",
                  "help": "pod-facing unix socket (env BDN_AGENT_SOCKET; default "
                  "<cache>/agent.sock)"}),
    ("--trees-root", {"metavar": "DIR", "action": "append",
                      "help": "directory pods may have trees materialized under; repeat for "
                      "several (env BDN_AGENT_TREES_ROOT, ':'-separated; default "
                      "<cache>/trees). Other mount locations, symlinked ones and ones on "
                      "the cache are refused"}),
    ("--hf-listen", {"metavar": "HOST:PORT",
                     "help": "also serve the Hugging Face Hub download API here, for pods "
                     "with HF_ENDPOINT=http://HOST:PORT/hf (env BDN_AGENT_HF_LISTEN; "
                     "default: off)"}),
)

_FLAGS_AFTER_PEERS: tuple[Flag, ...] = (
    ("--peer-port", {"metavar": "PORT", "type": int,
                     "help": "port of agents found by --peers-dns (env BDN_PEER_PORT; default: "
                     "the --listen port)"}),
    ("--token-file", {"metavar": "FILE",
                      "help": "file holding the peer bearer token, shared by all agents "
                      "(env BDN_TOKEN_FILE)"}),
    ("--ring-replicas", {"metavar": "N", "type": int,
                         "help": "owners per chunk (env BDN_RING_REPLICAS; default 1)"}),
    ("--chunk-cache-bytes", {"metavar": "SIZE",
                             "help": "budget of the owner-side chunk cache "
                             "(env BDN_CHUNK_CACHE_BYTES; default 8GiB)"}),
    ("--background-fill-rate", {"metavar": "SIZE",
                                "help": "bytes per second a background pull may take (requests "
                                'with "background": true, e.g. warming a node), so fills do '
                                "not starve inference I/O; e.g. 200MB (env "
                                "BDN_BACKGROUND_FILL_RATE; default: no cap)"}),
    ("--peer-timeout", {"metavar": "SECONDS", "type": float, "default": 2.0,
                        "help": "wait this long for an owner peer before reading origin "
                        "(default 2)"}),
    ("--hedge-after", {"metavar": "SECONDS|off",
                       "help": "hedge a chunk read from a silent or slow owner (to a replica, "
                       "the chunk's next owner, or origin) after at least this long; the "
                       "deadline is learned from recent reads; off: never (default: "
                       "--peer-timeout)"}),
    ("--fanout", {"metavar": "K", "type": int,
                  "help": "an owner sends each chunk itself to K requesters, then redirects "
                  "later ones to nodes it already sent it to, which pass it on (a K-ary "
                  "tree; origin still serves it once); 0: off (default 4)"}),
    ("--probe-interval", {"metavar": "SECONDS", "type": float, "default": 2.0,
                          "help": "seconds between health probes of peers (default 2)"}),
    ("--dns-interval", {"metavar": "SECONDS", "type": float, "default": 10.0,
                        "help": "seconds between resolutions of --peers-dns (default 10)"}),
    ("--settle-timeout", {"metavar": "SECONDS", "type": float, "default": 10.0,
                          "help": "at start-up, wait up to this long for every known peer to "
                          "answer before opening the pod socket, so agents started together "
                          "agree on chunk owners (0: do not wait; default 10)"}),
    ("--drain-timeout", {"metavar": "SECONDS", "type": float, "default": 30.0,
                         "help": "on SIGTERM, wait this long for running pulls (default 30)"}),
    ("--workers", {"metavar": "N|auto",
                   "help": "data-plane processes of the agent's pulls (env BDN_WORKERS; "
                   "default auto: the CPUs this process may use, cgroup limit included; "
                   "1: the agent's own process). Chunks read through the peer tier, as "
                   "every chunk of an agent pull is today, stay in the agent's process"}),
)

_POSITIVE_SECONDS = ("peer_timeout", "probe_interval", "dns_interval", "drain_timeout")


def register(sub: Subparsers) -> None:
    """Add ``agent`` to the ``bdn`` parser."""
    p = sub.add_parser(
        "agent",
        help="run the node agent: pod-facing pulls, peer chunk cache, metrics",
        description="Run the node agent. Pods ask it for trees over a unix socket; agents "
        "on other nodes read ring-owned chunks from it, so origin serves each chunk "
        "about once however many nodes start a model. SIGTERM drains and exits 0.",
    )
    add_store_flags(p)
    add_cache_flags(p)
    add_flags(p, _FLAGS_BEFORE_PEERS)
    add_flags(p.add_mutually_exclusive_group(), _PEER_FLAGS)
    add_flags(p, _FLAGS_AFTER_PEERS)
    add_upstream_flags(p)  # --hf-upstream: pull-through for the --hf-listen endpoint.
    p.set_defaults(func=DaemonCommand("bdn.agent.main", agent_config))


def _non_negative_seconds(value: float, flag: str) -> float:
    """``value``, or a ``ConfigError`` naming ``flag`` when it is negative."""
    if value < 0:
        raise ConfigError("must be 0 or more seconds", field=flag)
    return value


def agent_config(args: argparse.Namespace) -> AgentConfig:
    """The agent's configuration from flags, then ``args.environ``, then defaults.

    Raises:
        ConfigError: a malformed value, an unreadable token file, or a
            non-loopback ``--listen`` without a token.
    """
    from bdn.agent.config import (
        DEFAULT_CHUNK_CACHE_BYTES,
        DEFAULT_SOCKET_NAME,
        AgentConfig,
        MembershipConfig,
        parse_peer_list,
    )
    from bdn.config.settings import parse_workers
    from bdn.ring import RingConfig

    flags = FlagOrEnv(args, ENV_TWINS)
    conf = settings(args)
    if args.workers is not None:  # Else BDN_WORKERS, read into the settings.
        conf = dataclasses.replace(conf, workers=parse_workers(args.workers, field="--workers"))
    listen, advertise = _addresses(flags)
    peers_text, dns = _peer_sources(args)
    peer_port = flags.integer("peer_port", listen[1])
    replicas = flags.integer("ring_replicas", 1)
    if replicas < 1:
        raise ConfigError("must be at least 1", field="--ring-replicas")
    for name in _POSITIVE_SECONDS:
        if getattr(args, name) <= 0:
            raise ConfigError(
                "must be a positive number of seconds", field="--" + name.replace("_", "-")
            )
    socket_text, token_file = flags.text("socket"), flags.text("token_file")
    return AgentConfig(
        settings=conf,
        listen=listen,
        advertise=advertise,
        socket_path=(
            Path(socket_text).expanduser().absolute()
            if socket_text
            else conf.cache_dir / DEFAULT_SOCKET_NAME
        ),
        token=(
            read_token(token_file, "the peer token shared by every agent") if token_file else None
        ),
        membership=MembershipConfig(
            static_peers=parse_peer_list(peers_text, field="--peers") if peers_text else (),
            dns_name=dns,
            peer_port=peer_port,
            dns_interval=args.dns_interval,
            probe_interval=args.probe_interval,
            probe_timeout=max(args.probe_interval, 2.0),
            settle_timeout=_non_negative_seconds(args.settle_timeout, "--settle-timeout"),
        ),
        ring=RingConfig(replicas=replicas),
        peer_timeout=args.peer_timeout,
        **_hedge_options(args.hedge_after),
        drain_timeout=args.drain_timeout,
        chunk_cache_bytes=flags.size("chunk_cache_bytes", DEFAULT_CHUNK_CACHE_BYTES),
        background_fill_rate=flags.size("background_fill_rate", None),
        trees_roots=_trees_roots(flags),
        hf_listen=_hf_listen(flags),
        hf_upstream=upstream_config(args),
        **_fanout_option(args.fanout),
    )


def _fanout_option(k: int | None) -> dict[str, Any]:
    """``--fanout K``: 0 (off) or more; absent: the agent's default."""
    if k is None:
        return {}
    if k < 0:
        raise ConfigError(f"--fanout {k}: give 0 (off) or a positive number of requesters",
                          field="--fanout")
    return {"fanout": k}


def _hf_listen(flags: FlagOrEnv) -> tuple[str, int] | None:
    """``--hf-listen`` parsed; None when the Hub endpoint is off (the default)."""
    from bdn.daemon.address import parse_hostport

    text = flags.text("hf_listen")
    return parse_hostport(text, field="--hf-listen") if text else None


def _trees_roots(flags: FlagOrEnv) -> tuple[Path, ...]:
    """``--trees-root`` (repeated), else ``BDN_AGENT_TREES_ROOT`` split on ``:``; each
    made absolute and normalized (``~`` expanded). Empty: the default, ``<cache>/trees``."""
    given: list[str] | None = flags.args.trees_root
    texts = given if given else (flags.text("trees_root") or "").split(":")
    roots: dict[Path, None] = {}
    for text in texts:
        if text.strip():
            roots[Path(os.path.normpath(os.path.abspath(os.path.expanduser(text.strip()))))] = None
    return tuple(roots)


def _hedge_options(text: str | None) -> dict[str, Any]:
    """``--hedge-after``: ``off``, or positive seconds (the deadline's floor)."""
    if text is None:
        return {}
    if text.strip().lower() == "off":
        return {"hedge": False}
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ConfigError(f"--hedge-after {text!r}: give seconds > 0, or off",
                          field="--hedge-after")
    return {"hedge_after": seconds}


def _addresses(flags: FlagOrEnv) -> tuple[tuple[str, int], str]:
    """``--listen`` parsed, and ``--advertise`` (default: the listen address) normalized."""
    from bdn.agent.config import DEFAULT_LISTEN
    from bdn.daemon.address import format_hostport, parse_hostport

    listen = parse_hostport(flags.text("listen") or DEFAULT_LISTEN, field="--listen")
    advertise_text = flags.text("advertise") or format_hostport(*listen)
    advertise = format_hostport(*parse_hostport(advertise_text, field="--advertise"))
    return listen, advertise


def _peer_sources(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """The static peer list and the DNS name: either flag overrides both variables
    (argparse keeps the flags exclusive); the variables must not both be set."""
    if args.peers is not None or args.peers_dns is not None:
        return args.peers, args.peers_dns
    env = args.environ
    peers_text, dns = env.get("BDN_PEERS") or None, env.get("BDN_PEERS_DNS") or None
    if peers_text and dns:
        raise ConfigError("set BDN_PEERS or BDN_PEERS_DNS, not both", field="BDN_PEERS")
    return peers_text, dns
