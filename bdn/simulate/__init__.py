"""``bdn simulate``: a flow-level, discrete-event model of a burst (simpy).

N nodes cold-pull one model at once; the policy says where each chunk comes
from (:mod:`bdn.simulate.policies`), the network shares link capacity among
concurrent chunk flows max-min fairly (:mod:`bdn.simulate.network`), and the
result gives time-to-ready per node, origin bytes and peak egress per node
(:mod:`bdn.simulate.report`). docs/DESIGN.md, "Simulation", states the model
and its assumptions.

Depends on the data model (ring, digest, errors) and unit parsing only.
"""

from bdn.simulate.model import simulate
from bdn.simulate.report import Result
from bdn.simulate.scenario import POLICY_NAMES, Scenario, parse_rate

__all__ = ["POLICY_NAMES", "Result", "Scenario", "parse_rate", "simulate"]
