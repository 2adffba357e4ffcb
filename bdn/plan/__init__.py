"""``bdn plan``: which instance a model needs, and what its cold start costs.

Reads only safetensors headers (and ``config.json``) of a mirrored manifest or
a local directory, then fits the model to an instance catalog shipped as data
(``catalog.json``, schema ``catalog.schema.json``). :func:`bdn.api.plan_model`
runs it; :mod:`bdn.plan.run` is the flow, :mod:`~bdn.plan.header` the header
reader, :mod:`~bdn.plan.model` the memory math, :mod:`~bdn.plan.catalog` and
:mod:`~bdn.plan.fit` the choice. Importing this package loads only the request
type, so the API can name it without loading the rest.
"""

from bdn.plan.request import PlanRequest, parse_bandwidth, parse_cpu, parse_memory

__all__ = ["PlanRequest", "parse_bandwidth", "parse_cpu", "parse_memory"]
