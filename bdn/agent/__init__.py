"""The BDN node agent: thin wiring of the ``bdn`` library into a daemon.

- :mod:`bdn.agent.config` - :class:`~bdn.agent.config.AgentConfig`, composed from bdn's configs.
- :mod:`bdn.agent.server` - the pod-facing (unix socket) and peer-facing (TCP) HTTP apps.
- :mod:`bdn.agent.pulls` - pull requests: validation, coalescing, progress.
- :mod:`bdn.agent.membership` - ring membership: static or DNS peers, health probes.
- :mod:`bdn.agent.metrics` - Prometheus collectors in a dedicated registry.
- :mod:`bdn.agent.main` - start, drain on SIGTERM/SIGINT, stop.

Run it with ``bdn agent`` (see ``bdn agent --help``).
"""
