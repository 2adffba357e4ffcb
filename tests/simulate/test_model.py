"""Whole bursts: closed forms, the policies' invariants, determinism."""

from __future__ import annotations

import dataclasses

import pytest

from bdn.errors import ConfigError
from bdn.simulate import POLICY_NAMES, Scenario, parse_rate, simulate
from bdn.simulate.model import ring_owners

GB = 10**9
MiB = 1024**2


@pytest.mark.parametrize("policy", POLICY_NAMES)
@pytest.mark.parametrize(
    ("links", "bottleneck"),
    [
        ({}, 3 * GB),  # The 3 GB/s disk, below the 25 Gbit/s NIC.
        ({"nic": 1 * GB}, 1 * GB),
        ({"origin_per_node": 0.5 * GB}, 0.5 * GB),
        ({"origin_total": 0.25 * GB}, 0.25 * GB),
        ({"cpu_per_gb": 2.0}, 0.5 * GB),  # 2 CPU-s per GB: 0.5 GB/s.
    ],
)
def test_one_node_takes_size_over_its_narrowest_link(
    policy: str, links: dict[str, float], bottleneck: float
) -> None:
    r = simulate(Scenario(nodes=1, model_bytes=3 * GB, policy=policy, **links))  # type: ignore[arg-type]
    assert r.p50_s == pytest.approx(3 * GB / bottleneck, rel=1e-3)
    assert r.max_s == pytest.approx(r.p50_s, rel=1e-3)
    assert r.origin_bytes == 3 * GB
    assert r.peak_egress_bytes_per_node == 0


def test_naive_nodes_on_a_shared_origin_take_n_times_size_over_origin() -> None:
    n, size, origin = 40, 2 * GB, 10 * GB
    r = simulate(Scenario(nodes=n, model_bytes=size, policy="naive", start_spread_s=0.0))
    assert r.max_s == pytest.approx(n * size / origin, rel=1e-3)
    assert r.p50_s == pytest.approx(n * size / origin, rel=1e-3)
    assert r.origin_bytes == n * size


def test_naive_with_spread_starts_still_ends_when_origin_has_sent_everything() -> None:
    n, size, origin = 40, 2 * GB, 10 * GB
    s = Scenario(nodes=n, model_bytes=size, policy="naive")
    r = simulate(s)
    # Origin is busy from the first start to the last landing; a node's time
    # runs from its own start, so it is short of N·size/origin by its offset.
    assert n * size / origin - s.start_spread_s <= r.max_s <= n * size / origin * 1.001


def test_ring_of_two_reads_origin_once_and_is_bound_by_the_bigger_owner() -> None:
    # As `bdn bench herd --netns`: each node's own 100 MB/s origin link and a
    # 1000 MB/s peer link, origin traffic not crossing the peer link.
    s = Scenario(nodes=2, model_bytes=1 * GB, chunk_bytes=16 * MiB, policy="ring",
                 origin_per_node=100e6, nic=1000e6, origin_via_nic=False, start_spread_s=0.0)
    r = simulate(s)
    owned = [sum(s.chunk_size(c) for c, o in enumerate(ring_owners(s)) if o == node)
             for node in (0, 1)]
    assert r.origin_bytes == s.model_bytes
    # Each node sends exactly what it owns to the other.
    assert r.peak_egress_bytes_per_node == max(owned)
    assert r.mean_egress_bytes_per_node == pytest.approx(s.model_bytes / 2)
    # The bigger owner's origin link is the bottleneck; its last chunk still has to
    # cross the peer link (one chunk at 1000 MB/s, shared with the rest in flight).
    floor = max(owned) / 100e6
    assert floor <= r.max_s <= floor + s.parallel * s.chunk_bytes / 1000e6


@pytest.mark.parametrize("policy", ["ring", "fanout"])
def test_the_owners_read_origin_exactly_once_per_chunk(policy: str) -> None:
    r = simulate(Scenario(nodes=60, model_bytes=3 * GB, policy=policy))  # type: ignore[arg-type]
    assert r.origin_bytes == 3 * GB


def test_a_full_owner_gate_sends_the_overflow_to_origin() -> None:
    # One chunk, 39 requesters at once, room for 10 to wait at the owner: the
    # other 29 are refused (the agent's 503) and read origin themselves.
    s = Scenario(nodes=40, model_bytes=64 * MiB, policy="ring", owner_queue=10,
                 start_spread_s=0.0)
    r = simulate(s)
    assert r.refused == 29
    assert r.origin_bytes == (1 + 29) * 64 * MiB
    assert r.peak_egress_bytes_per_node == 10 * 64 * MiB


def test_today_ring_falls_back_to_origin_beyond_its_gate() -> None:
    # 300 nodes, 45 chunks: ~299 requests per owner per chunk, over the 256
    # that may wait, so origin serves far more than the model.
    r = simulate(Scenario(nodes=300, model_bytes=3 * GB, policy="ring"))
    assert r.refused > 0 and r.origin_bytes > 1.05 * 3 * GB


def test_fanout_caps_what_one_node_sends_and_beats_the_ring_at_scale() -> None:
    base = Scenario(nodes=200, model_bytes=3 * GB, policy="ring")
    ring = simulate(base)
    fan = simulate(dataclasses.replace(base, policy="fanout"))
    # A holder serves each chunk to at most K redirected requesters, the owner
    # to K direct ones: no node sends more than K copies of the model.
    assert fan.peak_egress_bytes_per_node <= base.fanout * base.model_bytes
    assert fan.peak_egress_bytes_per_node < ring.peak_egress_bytes_per_node
    assert fan.p99_s < ring.p99_s
    # Fan-out keeps origin at the model; the ring's busiest owners already
    # refuse some requesters at 200 nodes (two chunks: 398 requests for 256 places).
    assert fan.origin_bytes == base.model_bytes and fan.refused == 0
    assert ring.origin_bytes >= fan.origin_bytes


def test_rotated_chunk_order_spreads_the_trees_interior_nodes() -> None:
    # In order, the first requesters of every chunk are the same nodes, so they
    # are the interior of every chunk's tree and send K copies of the model;
    # rotated, each chunk has its own first requesters.
    base = Scenario(nodes=120, model_bytes=3 * GB, policy="fanout", chunk_order="in-order")
    rotated = simulate(dataclasses.replace(base, chunk_order="rotated"))
    hashed = simulate(dataclasses.replace(base, chunk_order="hashed"))
    in_order = simulate(base)
    assert rotated.peak_egress_bytes_per_node < in_order.peak_egress_bytes_per_node / 2
    # The agents' hashed start (collisions included) spreads almost as well.
    assert hashed.peak_egress_bytes_per_node < in_order.peak_egress_bytes_per_node / 2
    assert rotated.origin_bytes == in_order.origin_bytes == hashed.origin_bytes \
        == base.model_bytes


def test_fanout_of_one_is_a_chain_per_chunk_and_still_completes() -> None:
    r = simulate(Scenario(nodes=12, model_bytes=256 * MiB, chunk_bytes=16 * MiB,
                          policy="fanout", fanout=1))
    assert r.origin_bytes == 256 * MiB
    assert r.peak_egress_bytes_per_node <= 256 * MiB


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_same_seed_same_figures(policy: str) -> None:
    s = Scenario(nodes=80, model_bytes=3 * GB, policy=policy, seed=7)  # type: ignore[arg-type]
    assert simulate(s).to_dict() == simulate(s).to_dict()


def test_another_seed_may_move_owners_and_figures() -> None:
    runs = {simulate(Scenario(nodes=50, model_bytes=3 * GB, policy="ring", seed=seed))
            .peak_egress_bytes_per_node for seed in range(4)}
    assert len(runs) > 1


def test_json_has_the_figures_scripts_rely_on() -> None:
    d = simulate(Scenario(nodes=5, model_bytes=1 * GB, policy="fanout")).to_dict()
    for key in ("p50_s", "p99_s", "max_s", "origin_bytes", "peak_egress_bytes_per_node"):
        assert isinstance(d[key], int | float), key


def test_the_last_chunk_may_be_short() -> None:
    s = Scenario(nodes=3, model_bytes=100 * MiB + 5, chunk_bytes=64 * MiB, policy="ring")
    assert s.chunks == 2 and s.chunk_size(1) == 36 * MiB + 5
    assert simulate(s).origin_bytes == s.model_bytes


@pytest.mark.parametrize(
    ("text", "rate"),
    [("25Gbit/s", 25e9 / 8), ("25Gb/s", 25e9 / 8), ("1Gbps", 1.25e8), ("3GB/s", 3e9),
     ("3G", 3e9), ("100MB/s", 1e8), ("512MiB/s", 512 * MiB), ("800", 800.0)],
)
def test_rates_read_as_written(text: str, rate: float) -> None:
    assert parse_rate(text) == pytest.approx(rate)


@pytest.mark.parametrize("text", ["fast", "25Gbit/h", "0GB/s", "-1GB/s", ""])
def test_a_bad_rate_is_one_line_naming_the_forms(text: str) -> None:
    with pytest.raises(ConfigError, match=r"use e\.g\. 25Gbit/s"):
        parse_rate(text, field="--nic")


@pytest.mark.parametrize(
    ("change", "needle"),
    [({"nodes": 0}, "--nodes"), ({"fanout": 0}, "--fanout"), ({"nic": 0.0}, "--nic"),
     ({"policy": "tree"}, "--policy"), ({"cpu_per_gb": -1.0}, "--cpu-per-gb"),
     ({"chunk_bytes": 1, "model_bytes": 10**6}, "--chunk-size")],
)
def test_a_bad_scenario_names_its_flag(change: dict[str, object], needle: str) -> None:
    s = dataclasses.replace(Scenario(nodes=2, model_bytes=GB, policy="ring"), **change)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=needle):
        simulate(s)
