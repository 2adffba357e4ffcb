"""``bdn agent``: run the node agent (flags and ``BDN_*`` twins, read once here).

Every flag has an environment twin, for DaemonSets: a flag wins over its
variable, which wins over the default. The agent itself lives in the
``agent`` package (imported only when the command runs, so ``bdn --help``
stays fast).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from bdn.cli.common import add_cache_flags, add_store_flags, settings
from bdn.config.units import parse_size
from bdn.daemon.tokens import read_token_file
from bdn.errors import ConfigError

if TYPE_CHECKING:
    from bdn.agent.config import AgentConfig

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
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="peer-facing address (env BDN_AGENT_LISTEN; default 127.0.0.1:7070); "
        "a non-loopback address needs --token-file",
    )
    p.add_argument(
        "--advertise",
        metavar="HOST:PORT",
        help="address peers reach this agent at, its name on the ring "
        "(env BDN_AGENT_ADVERTISE; default: --listen)",
    )
    p.add_argument(
        "--socket",
        metavar="PATH",
        help="pod-facing unix socket (env BDN_AGENT_SOCKET; default <cache>/agent.sock)",
    )
    peers = p.add_mutually_exclusive_group()
    peers.add_argument(
        "--peers",
        metavar="HOST:PORT,...",
        help="every agent of the ring, this one included or not (env BDN_PEERS)",
    )
    peers.add_argument(
        "--peers-dns",
        metavar="NAME",
        help="headless Service whose addresses are the agents, re-resolved "
        "periodically (env BDN_PEERS_DNS)",
    )
    p.add_argument(
        "--peer-port",
        metavar="PORT",
        type=int,
        help="port of agents found by --peers-dns (env BDN_PEER_PORT; default: the --listen port)",
    )
    p.add_argument(
        "--token-file",
        metavar="FILE",
        help="file holding the peer bearer token, shared by all agents (env BDN_TOKEN_FILE)",
    )
    p.add_argument(
        "--ring-replicas",
        metavar="N",
        type=int,
        help="owners per chunk (env BDN_RING_REPLICAS; default 1)",
    )
    p.add_argument(
        "--chunk-cache-bytes",
        metavar="SIZE",
        help="budget of the owner-side chunk cache (env BDN_CHUNK_CACHE_BYTES; default 8GiB)",
    )
    p.add_argument(
        "--background-fill-rate",
        metavar="SIZE",
        help="bytes per second a background pull may take (requests with "
        '"background": true, e.g. warming a node), so fills do not starve '
        "inference I/O; e.g. 200MB (env BDN_BACKGROUND_FILL_RATE; default: no cap)",
    )
    p.add_argument(
        "--peer-timeout",
        metavar="SECONDS",
        type=float,
        default=2.0,
        help="wait this long for an owner peer before reading origin (default 2)",
    )
    p.add_argument(
        "--probe-interval",
        metavar="SECONDS",
        type=float,
        default=2.0,
        help="seconds between health probes of peers (default 2)",
    )
    p.add_argument(
        "--dns-interval",
        metavar="SECONDS",
        type=float,
        default=10.0,
        help="seconds between resolutions of --peers-dns (default 10)",
    )
    p.add_argument(
        "--drain-timeout",
        metavar="SECONDS",
        type=float,
        default=30.0,
        help="on SIGTERM, wait this long for running pulls (default 30)",
    )
    p.set_defaults(func=cmd_agent)


def cmd_agent(args: argparse.Namespace) -> int:
    from bdn.agent.main import run, setup_json_logging

    config = agent_config(args)
    setup_json_logging(verbose=bool(getattr(args, "verbose", False)))
    return run(config)


def agent_config(args: argparse.Namespace) -> AgentConfig:
    """The agent's configuration from flags, then ``args.environ``, then defaults.

    Raises:
        ConfigError: a malformed value, an unreadable token file, or a
            non-loopback ``--listen`` without a token.
    """
    from bdn.agent.config import (
        DEFAULT_CHUNK_CACHE_BYTES,
        DEFAULT_LISTEN,
        DEFAULT_SOCKET_NAME,
        AgentConfig,
        MembershipConfig,
        format_hostport,
        parse_hostport,
        parse_peer_list,
    )
    from bdn.ring import RingConfig

    env: Mapping[str, str] = args.environ
    conf = settings(args)

    def pick(dest: str) -> str | None:
        value = getattr(args, dest, None)
        if value is not None:
            return str(value)
        return env.get(ENV_TWINS[dest]) or None

    listen = parse_hostport(pick("listen") or DEFAULT_LISTEN, field="--listen")
    advertise_text = pick("advertise") or format_hostport(*listen)
    advertise = format_hostport(*parse_hostport(advertise_text, field="--advertise"))
    if args.peers is not None or args.peers_dns is not None:
        peers_text, dns = args.peers, args.peers_dns  # A flag overrides both variables.
    else:
        peers_text, dns = env.get("BDN_PEERS") or None, env.get("BDN_PEERS_DNS") or None
        if peers_text and dns:
            raise ConfigError("set BDN_PEERS or BDN_PEERS_DNS, not both", field="BDN_PEERS")
    peer_port = _int(pick("peer_port"), "--peer-port") if pick("peer_port") else listen[1]
    replicas = _int(pick("ring_replicas"), "--ring-replicas") if pick("ring_replicas") else 1
    if replicas < 1:
        raise ConfigError("must be at least 1", field="--ring-replicas")
    chunk_budget = pick("chunk_cache_bytes")
    fill_rate = pick("background_fill_rate")
    token_file = pick("token_file")
    socket_text = pick("socket")
    for name in ("peer_timeout", "probe_interval", "dns_interval", "drain_timeout"):
        if getattr(args, name) <= 0:
            raise ConfigError(
                "must be a positive number of seconds", field="--" + name.replace("_", "-")
            )
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
            read_token_file(
                Path(token_file).expanduser(),
                field="--token-file",
                purpose="the peer token shared by every agent",
            )
            if token_file
            else None
        ),
        membership=MembershipConfig(
            static_peers=parse_peer_list(peers_text, field="--peers") if peers_text else (),
            dns_name=dns,
            peer_port=peer_port,
            dns_interval=args.dns_interval,
            probe_interval=args.probe_interval,
            probe_timeout=max(args.probe_interval, 2.0),
        ),
        ring=RingConfig(replicas=replicas),
        peer_timeout=args.peer_timeout,
        drain_timeout=args.drain_timeout,
        chunk_cache_bytes=(
            parse_size(chunk_budget, field="--chunk-cache-bytes")
            if chunk_budget
            else DEFAULT_CHUNK_CACHE_BYTES
        ),
        background_fill_rate=(
            parse_size(fill_rate, field="--background-fill-rate") if fill_rate else None
        ),
    )


def _int(text: str | None, field: str) -> int:
    try:
        return int(text or "")
    except ValueError:
        raise ConfigError(f"{text!r} is not a whole number", field=field) from None
