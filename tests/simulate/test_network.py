"""The flow network against hand-worked max-min fair shares."""

from __future__ import annotations

import math

import pytest
import simpy

from bdn.simulate.network import FlowNetwork


def _finish_times(capacities: list[float], flows: list[tuple[tuple[int, ...], float]],
                  starts: list[float] | None = None) -> list[float]:
    """Run ``flows`` (resources, bytes) on a fresh network; when each one landed."""
    env = simpy.Environment()
    net = FlowNetwork(env, capacities, resolution=0.0)
    landed = [math.nan] * len(flows)

    def run(i: int, resources: tuple[int, ...], size: float, at: float):  # type: ignore[no-untyped-def]
        yield env.timeout(at)
        yield net.transfer(resources, size)
        landed[i] = float(env.now)

    for i, (resources, size) in enumerate(flows):
        env.process(run(i, resources, size, (starts or [0.0] * len(flows))[i]))
    env.run()
    return landed


def test_one_flow_moves_at_its_narrowest_resource() -> None:
    assert _finish_times([100.0, 40.0], [((1, 2), 400.0)]) == pytest.approx([10.0])


def test_flows_on_one_link_share_it_equally_and_the_survivor_speeds_up() -> None:
    # Both at 50/s until the small one lands at 4 s (200 bytes); then 100/s.
    times = _finish_times([100.0], [((1,), 200.0), ((1,), 600.0)])
    assert times == pytest.approx([4.0, 8.0])


def test_capacity_a_capped_flow_leaves_goes_to_the_others() -> None:
    # An ingress of 1000/s shared by a flow held to 100/s by its origin link (2)
    # and a free one: max-min gives the free one 900/s, not an even 500/s.
    times = _finish_times([1000.0, 100.0], [((1, 2), 100.0), ((1,), 900.0)])
    assert times == pytest.approx([1.0, 1.0])


def test_a_flow_started_later_takes_its_share_from_then_on() -> None:
    # Flow 0 alone for 1 s (100 bytes), then both at 50/s: flow 1 (100 bytes)
    # lands at 3 s, flow 0 (300 bytes: 100 + 100 shared + 100 alone) at 4 s.
    times = _finish_times([100.0], [((1,), 300.0), ((1,), 100.0)], starts=[0.0, 1.0])
    assert times == pytest.approx([4.0, 3.0])


def test_a_flow_with_no_finite_resource_is_refused() -> None:
    env = simpy.Environment()
    net = FlowNetwork(env, [math.inf], resolution=0.0)
    with pytest.raises(ValueError, match="finite capacity"):
        net.transfer((1,), 10.0)
