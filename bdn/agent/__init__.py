"""The BDN node agent: thin wiring of the ``bdn`` library into a daemon.

- :mod:`bdn.agent.protocol` - the pod API and peer wire: paths, bodies, error names, chunk refs.
- :mod:`bdn.agent.client` - the pod API's client (``bdn pull --agent``, ``BDN_AGENT``).
- :mod:`bdn.agent.config` - :class:`~bdn.agent.config.AgentConfig`, composed from bdn's configs.
- :mod:`bdn.agent.server` - the pod-facing (unix socket) and peer-facing (TCP) HTTP apps.
- :mod:`bdn.agent.pulls` - pulls for pods: coalescing, progress, drain.
- :mod:`bdn.agent.chunks` - the owner side of the peer tier: verified chunks, single-flight.
- :mod:`bdn.agent.membership` - ring membership: static or DNS peers, health probes.
- :mod:`bdn.agent.metrics` - Prometheus collectors in a dedicated registry.
- :mod:`bdn.agent.main` - start, drain on SIGTERM/SIGINT, stop.

Run it with ``bdn agent`` (see ``bdn agent --help``). The library (``bdn.api``,
``bdn.peer``) imports :mod:`~bdn.agent.protocol` and :mod:`~bdn.agent.client` only,
so this package stays import-free.
"""
